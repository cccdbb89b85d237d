"""Inbox pruning on the real database: rows past the retention go, in batches; the rest stay."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.common.inbox import CATALOG_FOLLOWER, InboxPruner
from services.common.settings import CommonSettings

pytestmark = pytest.mark.integration


async def add_rows(
    engine: AsyncEngine, schema: str, consumer: str, count: int, age: timedelta
) -> None:
    """Inbox rows processed `age` before the database's now (written with that timestamp:
    no clock is moved)."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f'INSERT INTO "{schema}".inbox (consumer, event_id, topic, processed_at) '
                "SELECT CAST(:consumer AS text), :consumer || '-' || n, 'case.intake.v1', "
                "now() - make_interval(secs => :age_s) FROM generate_series(1, :count) AS n"
            ),
            {"consumer": consumer, "count": count, "age_s": age.total_seconds()},
        )


async def rows_by_consumer(engine: AsyncEngine, schema: str) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(f'SELECT consumer, count(*) FROM "{schema}".inbox GROUP BY consumer')
        )
        return {r[0]: r[1] for r in rows}


def pruned_total(service: str) -> float:
    return REGISTRY.get_sample_value("tongban_inbox_pruned_total", {"service": service}) or 0.0


async def test_rows_past_the_retention_are_pruned_in_batches_and_the_rest_kept(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
) -> None:
    await add_rows(engine, schema, "old", 250, timedelta(days=31))
    await add_rows(engine, schema, "recent", 40, timedelta(days=29))
    await add_rows(engine, schema, "fresh", 10, timedelta(0))
    # The catalog follower's marks: catalog.v1 is compacted, its records never expire.
    await add_rows(engine, schema, CATALOG_FOLLOWER, 5, timedelta(days=400))
    pruner_settings = settings.model_copy(
        update={"inbox_retention_days": 30, "inbox_prune_batch": 100, "inbox_prune_pause_s": 0}
    )
    pruner = InboxPruner(pruner_settings, sessions=sessions, schema=schema)
    before = pruned_total(settings.service)

    # Small batches, oldest first: one short transaction each.
    assert [await pruner.prune_batch() for _ in range(4)] == [100, 100, 50, 0]
    assert await rows_by_consumer(engine, schema) == {
        "recent": 40,
        "fresh": 10,
        CATALOG_FOLLOWER: 5,
    }
    assert pruned_total(settings.service) - before == 250
    assert await pruner.prune() == 0  # nothing left past the retention


async def test_prune_runs_batches_until_nothing_is_past_a_shorter_retention(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
) -> None:
    await add_rows(engine, schema, "eight-days", 30, timedelta(days=8))
    await add_rows(engine, schema, "six-days", 20, timedelta(days=6))
    pruner = InboxPruner(
        settings.model_copy(
            update={"inbox_retention_days": 7, "inbox_prune_batch": 7, "inbox_prune_pause_s": 0}
        ),
        sessions=sessions,
        schema=schema,
    )
    assert await pruner.prune() == 30
    assert await rows_by_consumer(engine, schema) == {"six-days": 20}
