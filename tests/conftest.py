"""Shared fixtures. Integration tests talk to the real broker and PostgreSQL that `make test`
starts (deploy/local/stack.sh); their addresses come from `.run/env` via the environment.

The stack is started once per run; each test isolates itself with its own schema and topics.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.common.db import create_runtime_schema, make_engine, make_sessionmaker
from services.common.kafka import TopicSpec, ensure_topics
from services.common.service import ServiceSettings
from services.common.settings import CommonSettings

ROOT = Path(__file__).resolve().parent.parent
# The run folder of deploy/local/*.sh: pids, logs, env (TONGBAN_RUN_DIR moves a second stack).
RUN_DIR = Path(os.environ.get("TONGBAN_RUN_DIR") or ROOT / ".run")


def _load_run_env() -> None:
    """Let a bare `pytest` find the stack that `make up` started."""
    env_file = RUN_DIR / "env"
    if not env_file.exists():
        return
    for line in env_file.read_text().splitlines():
        line = line.strip().removeprefix("export ").strip()
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            os.environ.setdefault(key, value.strip().strip("'\""))


_load_run_env()


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def settings() -> ServiceSettings:
    return ServiceSettings(
        service="test",
        consumer_retry_backoff_s=0.05,
        consumer_poll_ms=100,
        outbox_poll_s=0.5,
        kafka_partitions=3,
    )


@pytest.fixture(scope="session")
async def engine(settings: CommonSettings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(settings)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


@pytest.fixture
async def schema(engine: AsyncEngine) -> AsyncIterator[str]:
    """A fresh service-like schema with the runtime tables and a `widget` business table."""
    name = unique("t")
    async with engine.begin() as conn:
        await create_runtime_schema(conn, name)
        await conn.execute(
            text(
                f'CREATE TABLE "{name}".widget (id text PRIMARY KEY, case_id text NOT NULL, '
                "seq int NOT NULL DEFAULT 0)"
            )
        )
    yield name
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))


MakeTopic = Callable[..., Awaitable[str]]


@pytest.fixture
def make_topic(settings: CommonSettings) -> MakeTopic:
    async def _make(prefix: str = "test", partitions: int = 3) -> str:
        name = unique(prefix)
        await ensure_topics(settings, [TopicSpec(name, partitions=partitions)])
        return name

    return _make


async def eventually(
    predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll an (async) predicate until it returns a truthy value; fail with `what` on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)
