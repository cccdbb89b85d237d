"""`tongban tail`, `tongban lag` and `tongban dlq` as operators run them: the installed command
in a subprocess, against the real broker, on topics of the test's own."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.common.envelope import Envelope
from services.common.settings import CommonSettings
from tests.conftest import ROOT, MakeTopic, unique
from tests.kafka_helpers import header, produce, read_topic
from tests.unit import catalog_data

pytestmark = pytest.mark.integration

ID_NUMBER = catalog_data.resident_id()
PHONE = "13912345678"
NAME = "李四光"

# (partition, timestamp ms, key, value, headers)
Placed = tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes]]]


def command() -> list[str]:
    script = Path(sys.executable).parent / "tongban"
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli.main"]


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", **extra}


def tongban(
    *args: str, timeout: float = 90, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(**(env or {})),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


async def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The command with these arguments (and environment variables) in a thread."""
    return await asyncio.to_thread(tongban, *args, env=env)


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


async def produce_placed(settings: CommonSettings, topic: str, records: Sequence[Placed]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        for partition, ts, key, value, headers in records:
            await producer.send_and_wait(
                topic, key=key, value=value, headers=headers, partition=partition, timestamp_ms=ts
            )
    finally:
        await producer.stop()


def event(
    event_type: str, case_id: str, data: dict[str, Any], handledby: str | None = None
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return Envelope(
        type=event_type,
        source="/tongban/test",
        subject=case_id,
        data={"case_id": case_id, **data},
        handledby=handledby,
    ).to_record()


def application(office: str, division: str) -> dict[str, Any]:
    return {
        "item_code": "SOC-1",
        "channel": "counter",
        "office_code": office,
        "applicant": {
            "category": "individual",
            "name": NAME,
            "id_number": ID_NUMBER,
            "phone": PHONE,
            "division_code": division,
        },
        "materials": [],
        "delivery": {"method": "postal", "address": "二区滨江路8号"},
    }


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


# -- tail ----------------------------------------------------------------------------------------


async def test_tail_merges_partitions_and_topics_in_time_order(
    settings: CommonSettings, make_topic: MakeTopic
) -> None:
    first, second = await make_topic("tail_a"), await make_topic("tail_b")
    base = now_ms() - 60_000
    placed: dict[tuple[str, int], list[Placed]] = {}
    for i in range(12):
        topic, partition = (first, second)[i % 2], (i * 2) % 3
        key, value, headers = event("gov.case.routed.v1", f"T-CASE-{i:02d}", {"seq": i})
        placed.setdefault((topic, partition), []).append(
            (partition, base + i * 100, key, value, headers)
        )
    # Produce partition by partition, the last ones first: fetch order is not time order.
    for (topic, _p), records in sorted(placed.items(), reverse=True):
        await produce_placed(settings, topic, records)

    lines = json_lines(
        await run("tail", "-t", first, "-t", second, "--from-beginning", "--max", "12", "--json")
    )
    assert [x["case_id"] for x in lines] == [f"T-CASE-{i:02d}" for i in range(12)]
    assert len({(x["topic"], x["partition"]) for x in lines}) == 6
    assert [x["data"]["seq"] for x in lines] == list(range(12))

    plain = await run("tail", "-t", first, "-t", second, "--from-beginning", "--max", "12")
    assert plain.returncode == 0, plain.stderr
    shown = plain.stdout.splitlines()
    assert len(shown) == 12
    assert [line.split()[3] for line in shown] == [f"T-CASE-{i:02d}" for i in range(12)]
    assert all("status=routed" in line for line in shown)
    assert "12 events shown" in plain.stderr

    later = await run(
        "tail", "-t", first, "-t", second, "--from-offset", "1", "--json", "--timeout", "1.5"
    )
    # Each of the 6 partitions got 2 records: offset 1 of each is the later one.
    assert sorted(x["data"]["seq"] for x in json_lines(later)) == [6, 7, 8, 9, 10, 11]

    since = datetime.fromtimestamp((base + 750) / 1000, UTC).isoformat()
    from_time = await run(
        "tail", "-t", first, "-t", second, "--from-time", since, "--json", "--timeout", "1.5"
    )
    assert [x["data"]["seq"] for x in json_lines(from_time)] == [8, 9, 10, 11]


async def test_tail_steps_over_a_record_the_kafka_client_cannot_parse(
    settings: CommonSettings, make_topic: MakeTopic
) -> None:
    """A header name that is not UTF-8 fails aiokafka's whole fetch: tail says where the
    record is and shows every other one, in both partitions, the backlog and live."""
    from tests.integration.test_hostile_records import _produce_with_unreadable_header_name

    topic = await make_topic("tail_bad", partitions=2)
    base = now_ms() - 10_000
    records = [
        (i % 2, base + i * 100, *event("gov.case.routed.v1", f"T-OK-{i}", {"seq": i}))
        for i in range(6)
    ]
    await produce_placed(settings, topic, records[:4])
    bad = await _produce_with_unreadable_header_name(
        settings, topic, 0, event("gov.case.routed.v1", "T-BAD", {"seq": 99})
    )
    await produce_placed(settings, topic, records[4:])
    result = await run("tail", "-t", topic, "--from-beginning", "--json", "--timeout", "2")
    assert [x["case_id"] for x in json_lines(result)] == [f"T-OK-{i}" for i in range(6)]
    assert f"unreadable record skipped: {topic}/0 offset {bad}" in " ".join(result.stderr.split())


async def test_tail_prints_a_large_backlog_of_many_topics_in_exact_event_time_order(
    settings: CommonSettings, make_topic: MakeTopic
) -> None:
    """Thousands of events on 3 topics x 4 partitions, their times interleaved across every
    partition and, within a partition, a few out of order (as when two transactions commit in
    the other order than they stamped their events): the backlog comes out in exact ce_time
    order. A reorder window of a fixed delay fails this: the backlog takes longer to fetch
    than the window, and partitions fetched late hold events older than those already shown."""
    topics = [await make_topic(f"big{n}", partitions=4) for n in range(3)]
    count, partitions = 9000, [(t, p) for t in topics for p in range(4)]
    base = datetime.now(UTC) - timedelta(hours=1)
    rng = random.Random(20261207)
    placed: dict[tuple[str, int], list[int]] = {place: [] for place in partitions}
    for seq in range(count):
        placed[rng.choice(partitions)].append(seq)
    for seqs in placed.values():  # neighbours swapped here and there within a partition
        for i in range(0, len(seqs) - 1, 40):
            seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
    padding = "x" * 600  # about the size of a real event

    def record(seq: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        return Envelope(
            type="gov.case.routed.v1",
            source="/tongban/test",
            subject=f"T-BIG-{seq % 500:03d}",
            data={"case_id": f"T-BIG-{seq % 500:03d}", "seq": seq, "note": padding},
            time=base + timedelta(milliseconds=seq),
        ).to_record()

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20)
    await producer.start()
    try:
        # The last partitions first: fetch order is not time order either.
        for topic, partition in reversed(partitions):
            sent = []
            for seq in placed[(topic, partition)]:
                key, value, headers = record(seq)
                stamp = int((base + timedelta(milliseconds=seq)).timestamp() * 1000)
                sent.append(
                    await producer.send(
                        topic,
                        value,
                        key=key,
                        headers=headers,
                        partition=partition,
                        timestamp_ms=stamp,
                    )
                )
            await asyncio.gather(*sent)
    finally:
        await producer.stop()

    args = [a for t in topics for a in ("-t", t)]
    result = await run("tail", *args, "--from-beginning", "--max", str(count), "--json")
    lines = json_lines(result)
    seqs = [x["data"]["seq"] for x in lines]
    # Events printed after an event that happened later than they did.
    running_max = itertools.accumulate(seqs, max)
    late = sum(1 for seq, latest in zip(seqs, running_max, strict=True) if seq < latest)
    assert late == 0 and seqs == list(range(count)), f"{late} of {count} came after later ones"
    assert f"{count} events shown" in result.stderr


async def test_tail_filters(
    settings: CommonSettings, make_topic: MakeTopic, tmp_path: Path
) -> None:
    intake, routing, approval = [await make_topic(p) for p in ("in", "rt", "ap")]
    base = now_ms() - 30_000
    cases = {
        # case: (office, division, path, department)
        "T-A": ("T11-SC", "T11", "delegated", "T1-MKT"),
        "T-B": ("T21-SC", "T21", "online", "M-MKT"),
    }
    step = 0
    for case_id, (office, division, path, dept) in cases.items():
        for topic, event_type, data, handledby in (
            (intake, "gov.case.submitted.v1", {"application": application(office, division)}, None),
            (
                routing,
                "gov.case.routed.v1",
                {"route": {"path": path, "handled_by": dept, "intake_office": office}},
                dept,
            ),
            (approval, "gov.case.approved.v1", {"department": dept}, None),
        ):
            key, value, headers = event(event_type, case_id, data, handledby)
            await produce_placed(
                settings, topic, [(step % 3, base + step * 50, key, value, headers)]
            )
            step += 1
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(catalog_data.base_catalog()), encoding="utf-8")
    topics = ["-t", intake, "-t", routing, "-t", approval, "--from-beginning", "--json"]
    queries: dict[str, list[str]] = {
        "case": ["--case", "T-A"],
        "type": ["--type", "approved"],
        "type_glob": ["--type", "gov.case.rout*"],
        "department": ["--department", "T1-MKT"],
        "path": ["--path", "delegated"],
        "office": ["--office", "T11-SC"],
        "district": ["--district", "T2", "--catalog", str(catalog)],
        "none": ["--path", "delegated", "--district", "T2", "--catalog", str(catalog)],
        "either": ["--department", "T1-MKT", "--department", "M-MKT", "--type", "approved"],
    }
    results = await asyncio.gather(
        *(run("tail", *topics, "--timeout", "1.5", *q) for q in queries.values())
    )
    got = {
        name: [(x["case_id"], x["type"].split(".")[2]) for x in json_lines(r)]
        for name, r in zip(queries, results, strict=True)
    }
    a_all = [("T-A", "submitted"), ("T-A", "routed"), ("T-A", "approved")]
    assert got["case"] == a_all
    assert got["type"] == [("T-A", "approved"), ("T-B", "approved")]
    assert got["type_glob"] == [("T-A", "routed"), ("T-B", "routed")]
    assert got["department"] == a_all[1:]  # named from the routed event on
    assert got["path"] == a_all[1:]
    assert got["office"] == a_all
    assert got["district"] == [("T-B", "submitted"), ("T-B", "routed"), ("T-B", "approved")]
    assert got["none"] == []
    assert got["either"] == [("T-A", "approved"), ("T-B", "approved")]


async def test_tail_json_masks_personal_data(
    settings: CommonSettings, make_topic: MakeTopic
) -> None:
    topic = await make_topic("mask")
    key, value, headers = event(
        "gov.case.approved.v1",
        "T-M",
        {
            "application": application("T11-SC", "T11"),
            "applicant_name": NAME,
            "applicant_id_number": ID_NUMBER,
            "delivery_address": "二区滨江路8号",
            "reason": f"called {PHONE}",
        },
    )
    await produce(settings, topic, [(key, value, headers)])
    for args in (["--json"], []):
        result = await run("tail", "-t", topic, "--from-beginning", "--max", "1", *args)
        assert result.returncode == 0, result.stderr
        for secret in (ID_NUMBER, PHONE, NAME, "滨江路"):
            assert secret not in result.stdout
    (line,) = json_lines(await run("tail", "-t", topic, "--from-beginning", "--max", "1", "--json"))
    applicant = line["data"]["application"]["applicant"]
    assert applicant["id_number"] == ID_NUMBER[:4] + "*" * 10 + ID_NUMBER[-4:]
    assert applicant["phone"] == "139****5678"
    assert applicant["name"] == "李**"
    assert line["data"]["reason"] == "called 139****5678"


async def test_tail_follows_live_events_and_stops_cleanly_on_ctrl_c(
    settings: CommonSettings, make_topic: MakeTopic
) -> None:
    topic = await make_topic("live")
    await produce(settings, topic, [event("gov.case.routed.v1", "T-OLD", {})])
    proc = await asyncio.create_subprocess_exec(
        *command(),
        "tail",
        "-t",
        topic,
        "--json",
        "--order-delay",
        "0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=cli_env(),
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while b"tailing" not in await asyncio.wait_for(proc.stderr.readline(), 60):
            pass
        await produce(
            settings, topic, [event("gov.case.routed.v1", f"T-NEW-{i}", {}) for i in range(3)]
        )
        got = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 30)) for _ in range(3)]
        assert sorted(x["case_id"] for x in got) == ["T-NEW-0", "T-NEW-1", "T-NEW-2"]  # not T-OLD
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert b"tail stopped (interrupted): 3 events shown" in await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_tail_of_a_missing_topic_fails_clearly() -> None:
    result = await run("tail", "-t", unique("missing"), "--timeout", "1")
    assert result.returncode == 2
    assert "no such topic" in result.stderr


# -- lag -----------------------------------------------------------------------------------------


async def group_behind(settings: CommonSettings, topic: str, prefix: str) -> str:
    """A consumer group on `topic` (3 partitions) that has read 4 of partition 0's 10
    records, all 3 of partition 1's and none of partition 2 (empty): lag 6, 0, 0."""
    group = unique(prefix)
    await produce_placed(
        settings,
        topic,
        [(0, now_ms(), b"k", b"{}", []) for _ in range(10)]
        + [(1, now_ms(), b"k", b"{}", []) for _ in range(3)],
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(3)])
        await consumer.commit({TopicPartition(topic, 0): 4, TopicPartition(topic, 1): 3})
    finally:
        await consumer.stop()
    return group


async def test_lag_per_partition_after_consuming_some(
    settings: CommonSettings, make_topic: MakeTopic
) -> None:
    topic = await make_topic("lag")
    group = await group_behind(settings, topic, "lagtest")

    body = json.loads((await run("lag", "--group", group, "--json")).stdout)
    rows = {r["partition"]: r for r in body["partitions"]}
    assert {p: (r["committed"], r["end"], r["lag"]) for p, r in rows.items()} == {
        0: (4, 10, 6),
        1: (3, 3, 0),
        2: (None, 0, 0),
    }
    assert body["total_lag"] == 6
    assert body["groups"] == [{"group": group, "state": "Empty", "members": 0}]
    assert all(r["topic"] == topic and r["service"] is None for r in rows.values())

    table = await run("lag", "--group", group, "--lagging")
    assert table.returncode == 0, table.stderr
    assert group in table.stdout and "total lag: 6 records across 1 groups" in table.stdout
    assert table.stdout.count(topic) == 2  # the lagging partition and its total

    services_only = await run("lag", "--json")
    assert group not in services_only.stdout  # not a service group: only with --all or --group


# -- dead letters --------------------------------------------------------------------------------


def dead_letter_headers(
    headers: list[tuple[str, bytes]], reason: str, original: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    return [
        *headers,
        ("dlq_reason", reason.encode()),
        ("dlq_source", b"test/test-consumer"),
        ("dlq_topic", original.encode()),
        ("dlq_partition", str(partition).encode()),
        ("dlq_offset", str(offset).encode()),
    ]


async def test_dlq_list_show_and_replay_once(
    settings: CommonSettings, make_topic: MakeTopic
) -> None:
    dlq, original = await make_topic("dlq"), await make_topic("orig")
    replays = unique("replays")
    key, value, headers = event(
        "gov.case.submitted.v1", "T-DLQ-1", {"application": application("T11-SC", "T11")}
    )
    failed_reason = f"handler failed after 3 attempts: RuntimeError('{ID_NUMBER} clash')"
    await produce_placed(
        settings,
        dlq,
        [
            (
                0,
                now_ms(),
                None,
                f"not json {PHONE}".encode(),
                dead_letter_headers([], "malformed: value is not JSON", original, 0, 5),
            ),
            (1, now_ms(), key, value, dead_letter_headers(headers, failed_reason, original, 2, 9)),
        ],
    )
    opts = ["--dlq-topic", dlq, "--replays-topic", replays]

    listed = json_lines(await run("dlq", "list", *opts, "--json"))
    assert [x["ref"] for x in listed] == ["0:0", "1:0"]
    poison, failed = listed
    assert poison["original"] == {"topic": original, "partition": 0, "offset": 5}
    assert poison["data"] is None and PHONE not in poison["value_text"]
    assert failed["type"] == "gov.case.submitted.v1" and failed["case_id"] == "T-DLQ-1"
    assert failed["event_id"] == header_value(headers, "ce_id")
    for secret in (ID_NUMBER, PHONE, NAME):
        assert secret not in json.dumps(listed, ensure_ascii=False)
    assert [
        x["ref"]
        for x in json_lines(await run("dlq", "list", *opts, "--json", "--reason", "HANDLER"))
    ] == ["1:0"]
    assert json_lines(await run("dlq", "list", *opts, "--json", "--type", "routed")) == []

    table = await run("dlq", "list", *opts)
    assert table.returncode == 0, table.stderr
    assert "0:0" in table.stdout and "1:0" in table.stdout and "2 dead letters" in table.stdout
    assert ID_NUMBER not in table.stdout

    shown = await run("dlq", "show", "1:0", *opts)
    assert shown.returncode == 0, shown.stderr
    assert "handler failed after 3 attempts" in shown.stdout and "never replayed" in shown.stdout
    assert "dlq_source" in shown.stdout and "1101" in shown.stdout
    for secret in (ID_NUMBER, PHONE, NAME):
        assert secret not in shown.stdout
    assert (await run("dlq", "show", "2:7", *opts)).returncode == 1
    ambiguous = await run("dlq", "show", "0", *opts)
    assert ambiguous.returncode == 2 and "PARTITION:OFFSET" in ambiguous.stderr + ambiguous.stdout

    replayed = await run("dlq", "replay", "1:0", *opts, "--operator", "ops-wang")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "1 replayed, 0 refused" in replayed.stdout
    again = await run("dlq", "replay", "1:0", *opts, "--operator", "ops-zhao")
    assert again.returncode == 1
    assert "already replayed 1x" in again.stdout and "ops-wang" in again.stdout
    refused_poison = await run("dlq", "replay", "0:0", *opts)
    assert refused_poison.returncode == 1 and "not a valid CloudEvent" in refused_poison.stdout

    on_original = await read_topic(settings, original, min_records=1)
    assert len(on_original) == 1
    (copy,) = on_original
    assert copy.key == key and copy.value == value
    assert header(copy, "ce_id") == header_value(headers, "ce_id")
    assert not [k for k, _ in copy.headers if k.startswith("dlq_")]
    assert sorted(copy.headers) == sorted(headers)

    (recorded,) = [json.loads(r.value) for r in await read_topic(settings, replays, min_records=1)]
    assert recorded["dlq_topic"] == dlq and recorded["dlq_partition"] == 1
    assert recorded["dlq_offset"] == 0 and recorded["operator"] == "ops-wang"
    assert recorded["original_topic"] == original and recorded["original_offset"] == 9
    assert recorded["event_id"] == header_value(headers, "ce_id")
    assert recorded["replayed_to_partition"] == copy.partition
    assert recorded["replayed_to_offset"] == copy.offset
    assert recorded["forced"] is False

    listed = json_lines(await run("dlq", "list", *opts, "--json"))
    assert [len(x["replays"]) for x in listed] == [0, 1]
    assert "1x" in (await run("dlq", "list", *opts)).stdout

    # --all-matching skips what was replayed; more dead letters go with a progress bar.
    more = [event("gov.case.routed.v1", f"T-DLQ-{i}", {}) for i in range(2, 5)]
    await produce_placed(
        settings,
        dlq,
        [
            (2, now_ms(), k, v, dead_letter_headers(h, "timeout talking to x", original, 1, i))
            for i, (k, v, h) in enumerate(more)
        ],
    )
    dry = await run("dlq", "replay", "--all-matching", "--type", "routed", "--dry-run", *opts)
    assert dry.returncode == 0 and dry.stdout.count("replay ") >= 3
    assert len(await read_topic(settings, original, min_records=1)) == 1
    bulk = await run("dlq", "replay", "--all-matching", "--reason", "timeout", "--yes", *opts)
    assert bulk.returncode == 0, bulk.stdout + bulk.stderr
    assert "3 replayed, 0 refused" in bulk.stdout
    skipped = await run("dlq", "replay", "--all-matching", "--since", "1h", "--yes", *opts)
    assert "replayed before: skipped" in skipped.stderr
    assert "not a valid CloudEvent" in skipped.stdout  # the poison one is still refused
    forced = await run("dlq", "replay", "1:0", "--force", *opts)
    assert forced.returncode == 0 and "(forced)" in forced.stdout
    assert len(await read_topic(settings, original, min_records=5)) == 5


def header_value(headers: list[tuple[str, bytes]], name: str) -> str:
    return next(v.decode() for k, v in headers if k == name)


async def test_dlq_list_and_show_cope_with_hostile_dead_letters(
    settings: CommonSettings, make_topic: MakeTopic
) -> None:
    """A dead letter holds whatever was produced: markup, terminal escapes, NUL, lone
    surrogates, bytes that are not UTF-8, ids of 200 000 characters, JSON nested 100 000 deep.
    Operators still list, show and (refuse to) replay it."""
    dlq, original = await make_topic("dlq", partitions=1), await make_topic("orig")
    key, _value, headers = event("gov.case.submitted.v1", "T-HOSTILE", {})
    hostile_headers = [
        *[(k, v) for k, v in headers if k != "ce_id"],
        ("ce_id", b"id-" + b"9" * 200_000),
        ("x-escape", b"\x1b[2J\x1b[31mred\x00"),
        ("x-binary", b"\xff\xfe\x00"),
        ("x-surrogate", "\ud800".encode("utf-8", "surrogatepass")),
    ]
    values = [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"name": "\\ud800", "n": ' + b"7" * 5000 + b"}",
        b'{"name": "\\udfff"}',
        b"\x1b]0;owned\x07 [bold]not markup[/bogus]",
    ]
    reason = "malformed: [/bogus] \x1b[31m \ud800 reason"
    await produce_placed(
        settings,
        dlq,
        [
            (
                0,
                now_ms(),
                key,
                value,
                [
                    *hostile_headers,
                    *dead_letter_headers([], "x", original, 0, i)[1:],
                    ("dlq_reason", reason.encode("utf-8", "surrogatepass")),
                ],
            )
            for i, value in enumerate(values)
        ],
    )
    opts = ["--dlq-topic", dlq, "--replays-topic", unique("replays")]

    listed = await run("dlq", "list", *opts, "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    entries = json_lines(listed)
    assert [x["ref"] for x in entries] == ["0:0", "0:1", "0:2", "0:3"]
    assert all(x["data"] is None and x["value_text"] for x in entries)
    assert len(entries[0]["event_id"]) < 300 and "more characters" in entries[0]["event_id"]
    assert "\x1b" not in listed.stdout and "\\x1b" in listed.stdout
    table = await run("dlq", "list", *opts)
    assert table.returncode == 0, table.stderr[-2000:]
    assert "4 dead letters" in table.stdout and "\x1b" not in table.stdout
    for ref in ("0:0", "0:1", "0:3"):
        shown = await run("dlq", "show", ref, *opts)
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert "[/bogus]" in shown.stdout and "\x1b" not in shown.stdout
    refused = await run("dlq", "replay", "0:2", *opts)
    assert refused.returncode == 1 and "not a valid CloudEvent" in refused.stdout
