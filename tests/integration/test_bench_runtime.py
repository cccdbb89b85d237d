"""The runtime bench (services/bench/runtime.py) run small on the real broker and database:
every event it counts was applied (an inbox row each) or published (on its topic), its
figures are measured, and it leaves no schema or topic behind."""

from __future__ import annotations

import subprocess
import time

import asyncpg
import psutil
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.events import CaseRouted
from services.bench.runtime import RuntimeConfig, case_id, clean_up, new_run_id, run_runtime
from services.bench.submission import paused
from services.common.db import asyncpg_dsn
from services.common.kafka import client_options
from services.common.settings import CommonSettings
from tests.conftest import eventually
from tests.kafka_helpers import header, read_topic

pytestmark = pytest.mark.integration


async def inbox_rows(database_url: str, schema: str, consumer: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        count: int = await conn.fetchval(
            f'SELECT count(*) FROM "{schema}".inbox WHERE consumer = $1', consumer
        )
        return count
    finally:
        await conn.close()


async def topics_left(settings: CommonSettings, prefix: str) -> list[str]:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        return [t for t in await admin.list_topics() if t.startswith(prefix)]
    finally:
        await admin.close()


async def test_every_event_is_applied_and_published_and_measured(
    settings: CommonSettings, engine: AsyncEngine
) -> None:
    cfg = RuntimeConfig(
        bootstrap=settings.kafka_bootstrap,
        database_url=settings.database_url,
        run_id=new_run_id(),
        events=200,
        paced_events=40,
        paced_rate=40.0,
        outbox_events=200,
        partitions=3,
        timeout=60.0,
    )
    result = await run_runtime(cfg, keep=True)
    try:
        figures = result["figures"]
        # applied: one inbox row per event (the paced group's warm-up event has one too)
        assert await inbox_rows(cfg.database_url, cfg.schema, "bench-runtime-backlog") == 200
        assert await inbox_rows(cfg.database_url, cfg.schema, "bench-runtime-paced") == 41
        assert figures["applied, backlog"]["inbox_rows"] == 200
        assert figures["applied, paced"]["inbox_rows"] == 40
        assert figures["applied, backlog"]["batches"] >= 1
        assert figures["applied, paced"]["idle_cpu_ms_per_s"] > 0

        # published: every written event on the topic, once, and the outbox emptied
        # (one event a transaction, then 100 a transaction, each after its warm-up)
        relay = figures["published: relay"]
        written = 2 * (200 + figures["published: outbox writes"]["warm_up"])
        assert figures["published: outbox writes, batched"]["transactions"] == 2
        assert relay["events"] == relay["on_topic"] == written
        assert relay["rows_left"] == 0
        records = await read_topic(settings, cfg.topic("published"), min_records=written)
        assert sorted(r.key.decode() for r in records if r.key) == [
            case_id(cfg.run_id, "published", i) for i in range(written)
        ]
        assert {header(r, "ce_type") for r in records} == {CaseRouted.TYPE}
        # nothing was refused on the way
        assert await read_topic(settings, cfg.topic("dlq"), idle=0.5) == []

        # each figure measured, beside its budget
        assert [row["figure"] for row in result["budget"]] == [
            "applied, backlog",
            "applied, paced",
            "published: outbox writes",
            "published: outbox writes, batched",
            "published: relay",
            "published: writes + relay",
        ]
        for row in result["budget"]:
            assert row["cpu_ms_per_event"] > 0 and row["ratio"] > 0, row
        assert result["data_bytes"] >= 1024
    finally:
        await clean_up(cfg, engine)

    async with engine.connect() as conn:
        schemas = await conn.execute(
            text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :s"),
            {"s": cfg.schema},
        )
        assert schemas.first() is None
    # A deletion reaches every broker's metadata shortly after the controller answers.
    await eventually(
        lambda: _none_left(settings, f"bench.{cfg.run_id}."), timeout=10, what="topics deleted"
    )


def settles_at(process: psutil.Process, *, stopped: bool) -> bool:
    """Whether the process is (not) stopped within 5 s: a signal is delivered asynchronously."""
    for _ in range(100):
        if (process.status() == psutil.STATUS_STOPPED) is stopped:
            return True
        time.sleep(0.05)
    return False


def test_paused_processes_are_continued_after_the_window() -> None:
    """The HTTP figure pauses routing, approval and delivery: they must run again after it,
    also when the measure fails."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        process = psutil.Process(child.pid)
        with pytest.raises(RuntimeError), paused([child.pid]):
            assert settles_at(process, stopped=True)
            raise RuntimeError("the measure failed")
        assert settles_at(process, stopped=False)
    finally:
        child.kill()
        child.wait()


async def _none_left(settings: CommonSettings, prefix: str) -> bool:
    return await topics_left(settings, prefix) == []
