"""The raw case pipeline of the bench on the real broker and database: every case closes, and
each process leaves exactly the inbox, state and records one case's shape says, times the cases
(services/bench/raw_shape.py: 7 events and 10 applications a case)."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.bench import raw_shape as shape
from services.bench.e2e import Tokens
from services.bench.raw import (
    CaseClock,
    RawPipeline,
    drop,
    pipeline_config,
    prepare,
    submissions,
)
from services.bench.raw_pipeline import PipelineConfig
from services.common.settings import CommonSettings
from services.operators.catalog_file import load_catalog_file
from tests.conftest import ROOT, eventually, unique

pytestmark = pytest.mark.integration

CASES = 50


@pytest.fixture
async def pipeline_cfg() -> AsyncIterator[tuple[PipelineConfig, CommonSettings]]:
    settings = CommonSettings(kafka_partitions=3, consumer_poll_ms=100)
    cfg = pipeline_config(settings, run_id=uuid.uuid4().hex[:8], schema=unique("bench_raw"))
    await prepare(cfg, settings)
    yield cfg, settings
    await drop(cfg)


async def count(conn: asyncpg.Connection, schema: str, table: str) -> int:
    return int(await conn.fetchval(f'SELECT count(*) FROM "{schema}".{table}'))


async def records_per_topic(cfg: PipelineConfig) -> dict[str, int]:
    """How many records each of the pipeline's topics holds (end offsets: nothing deleted)."""
    consumer = AIOKafkaConsumer(**cfg.kafka, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [
            TopicPartition(cfg.topic(role), p)
            for role in shape.TOPIC_ROLES
            for p in range(cfg.partitions)
        ]
        ends = await consumer.end_offsets(parts)
    finally:
        await consumer.stop()
    found = dict.fromkeys(shape.TOPIC_ROLES, 0)
    for tp, end in ends.items():
        found[cfg.role_of(tp.topic)] += end
    return found


async def test_every_case_closes_with_exactly_the_shape_of_a_case(
    pipeline_cfg: tuple[PipelineConfig, CommonSettings],
) -> None:
    cfg, _settings = pipeline_cfg
    catalog = load_catalog_file(ROOT / "deploy" / "demo" / "catalog.yaml")
    offered = submissions(catalog, CASES, random.Random(18), Tokens())
    keys = [f"it-{uuid.uuid4().hex}" for _ in offered]
    clock = CaseClock(cfg)
    async with RawPipeline(cfg) as pipeline, httpx.AsyncClient(timeout=30) as http:
        await clock.start()
        try:
            answers = await asyncio.gather(
                *(
                    http.post(
                        pipeline.url,
                        content=request.body,
                        headers={
                            "Authorization": f"Bearer {request.token}",
                            "Content-Type": "application/json",
                            "Idempotency-Key": key,
                        },
                    )
                    for request, key in zip(offered, keys, strict=True)
                )
            )
            assert [a.status_code for a in answers] == [201] * CASES
            cases = [a.json()["case_id"] for a in answers]
            assert len(set(cases)) == CASES

            # The same key again makes nothing and answers the case it made.
            replay = await http.post(
                pipeline.url,
                content=offered[0].body,
                headers={"Authorization": f"Bearer {offered[0].token}", "Idempotency-Key": keys[0]},
            )
            assert (replay.status_code, replay.json()) == (200, {"case_id": cases[0]})
            refused = await http.post(pipeline.url, content=offered[0].body)
            assert refused.status_code == 401
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["code"] == "unauthenticated"

            assert await clock.wait_closed(cases, timeout=60), "not every case closed"
            assert set(cases) <= set(clock.routed)
        finally:
            await clock.stop()

        case = shape.case_shape()
        conn = await asyncpg.connect(cfg.dsn)
        try:
            # The timeline applies the closed record after the bench saw it, and a relay
            # deletes what it published with its next read (or 0.1 s later): wait for the
            # last applications and deletes, then every count must be exact.
            async def applied() -> bool:
                inbox = {p: await count(conn, cfg.schema, f"{p}_inbox") for p in shape.PROCESSES}
                timeline = await count(conn, cfg.schema, "intake_timeline")
                outboxes = [await count(conn, cfg.schema, f"{p}_outbox") for p in shape.PROCESSES]
                return (
                    inbox == {p: n * CASES for p, n in case.inbox_rows.items()}
                    and timeline == case.state_rows["intake_timeline"] * CASES
                    and not any(outboxes)
                )

            await eventually(applied, timeout=30, what="every application recorded, sent")
            for table, per_case in case.state_rows.items():
                assert await count(conn, cfg.schema, table) == per_case * CASES, table
            for process in shape.PROCESSES:
                assert await count(conn, cfg.schema, f"{process}_outbox") == 0, process
            statuses = await conn.fetch(
                f'SELECT status, count(*) AS n FROM "{cfg.schema}".intake_cases GROUP BY status'
            )
            assert {r["status"]: r["n"] for r in statuses} == {"closed": CASES}
            timeline = await conn.fetchval(
                f'SELECT data FROM "{cfg.schema}".intake_timeline WHERE case_id = $1 '
                f"AND type = '{shape.SUBMITTED}'",
                cases[0],
            )
            assert json.loads(timeline)["application"] == json.loads(offered[0].body)
        finally:
            await conn.close()

    published = await records_per_topic(cfg)
    assert published == {p: n * CASES for p, n in case.published.items()}
    assert sum(published.values()) == case.events * CASES == 7 * CASES
