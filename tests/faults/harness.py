"""The fault suite's machinery: steady load through intake, a simulated department, an observer
of every case topic, fault actions on the real processes, and the checks.

Everything runs against the local stack of deploy/local (three brokers, two processes per
service): faults are real (kill -9 of a broker that leads case partitions, SIGKILL of service
processes and of the relay leaders, an immediate PostgreSQL restart, commits whose answer is
lost), and the checks read what really happened (the events on the topics, the rows in the
services' schemas), never what the harness believes it sent.

A scenario's verdict (one table row):
- submitted: cases intake accepted (201/200, after retries with the same Idempotency-Key);
- terminal: of those, cases whose status at intake is terminal (closed or withdrawn) and whose
  `gov.case.closed.v1` is on the delivery topic;
- lost: submitted minus terminal, after the drain;
- duplicate effects: more than one distinct event id for one case and one effect type (one
  routing, one acceptance, one decision, one e-licence (result), one delivery, one closing,
  one rating per case), more than one intake case for one Idempotency-Key, or intake cases the
  harness never got an answer for;
- order violations: a case's events on one topic out of lifecycle order, or an effect stamped
  earlier than its cause;
- max lag: the largest total lag of tongban's consumer groups, sampled every second;
- recovery s: for each fault, seconds from its injection until the total lag is back under the
  pre-fault level (the worst fault of the scenario);
- bundles (members), members lost/doubled: bundles submitted beside the cases under the same
  faults, and whether each member reached one terminal state once and each bundle was
  delivered and closed once (tests.faults.bundles).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from contracts.events import DecisionKind, DecisionMade
from services.cli.applicants import application_for
from services.cli.devclient import (
    APPROVAL_PORT,
    DELIVERY_PORT,
    INTAKE_PORT,
    ROUTING_PORT,
    ActingClient,
    ClientFleet,
)
from services.cli.ops.lag import compute_lag
from services.common.auth import Role
from services.common.db import asyncpg_dsn
from services.common.envelope import Envelope
from services.common.kafka import client_options
from services.common.settings import CommonSettings
from tests.faults.bundles import (
    MEMBER_TERMINAL,
    BundleCounter,
    PlannedBundle,
    bundle_database_checks,
    bundles_done,
    member_verdict,
    plan_bundles,
)
from tests.kafka_helpers import topic_partitions

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "deploy" / "local"
RUN = Path(os.environ.get("TONGBAN_RUN_DIR", ROOT / ".run"))

SERVICES = ("intake", "routing", "approval", "delivery")
# The replicas' ports as deploy/local/services.sh gives them: moved by SERVICES_PORT_OFFSET
# (services/cli/devclient.py), 10 apart per replica.
BASE_PORT = {
    "intake": INTAKE_PORT,
    "routing": ROUTING_PORT,
    "approval": APPROVAL_PORT,
    "delivery": DELIVERY_PORT,
}
CASE_TOPICS = (
    "case.intake.v1",
    "case.routing.v1",
    "case.decisions.v1",
    "case.approval.v1",
    "case.delivery.v1",
)
DLQ_TOPIC = "case.dlq.v1"
CATALOG_TOPIC = "catalog.v1"
BUNDLE_TOPIC = "bundle.v1"
# Every process of these services follows the whole catalog topic (no consumer group); each
# service dead-letters an unreadable catalog record once.
CATALOG_FOLLOWERS = ("intake", "routing", "approval", "delivery")
TERMINAL = {"closed", "withdrawn"}

# Lifecycle rank of each event type: on one topic, a case's events come in this order, and an
# effect is never stamped earlier than its cause.
RANK = {
    "gov.case.submitted.v1": 1,
    "gov.case.routed.v1": 2,
    "gov.case.decision.v1": 3,
    "gov.case.accepted.v1": 3,
    "gov.case.approved.v1": 4,
    "gov.case.denied.v1": 4,
    "gov.case.result_issued.v1": 5,
    "gov.case.delivered.v1": 6,
    "gov.case.closed.v1": 7,
    "gov.case.rated.v1": 8,
}
# One effect per case: a second distinct event id of these types is a duplicate effect.
ONCE_PER_CASE = (
    "gov.case.submitted.v1",
    "gov.case.routed.v1",
    "gov.case.accepted.v1",
    "gov.case.approved.v1",
    "gov.case.denied.v1",
    "gov.case.result_issued.v1",
    "gov.case.delivered.v1",
    "gov.case.closed.v1",
    "gov.case.rated.v1",
)


def port_of(service: str, replica: int) -> int:
    return BASE_PORT[service] + 10 * (replica - 1)


def url_of(service: str, replica: int) -> str:
    return f"http://127.0.0.1:{port_of(service, replica)}"


def now() -> float:
    return time.monotonic()


# --------------------------------------------------------------------------- the processes


class Stack:
    """The local stack's processes, driven through deploy/local's scripts."""

    def __init__(self, replicas: int = 2, extra_env: dict[str, str] | None = None) -> None:
        self.replicas = replicas
        self.extra_env = dict(extra_env or {})

    def _script(self, *args: str, env: dict[str, str] | None = None, timeout: float = 240) -> str:
        full_env = {**os.environ, "REPLICAS": str(self.replicas), **self.extra_env, **(env or {})}
        done = subprocess.run(
            ["bash", str(LOCAL / args[0]), *args[1:]],
            cwd=ROOT,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    async def script(self, *args: str, env: dict[str, str] | None = None) -> str:
        return await asyncio.to_thread(self._script, *args, env=env)

    async def services_up(self, env: dict[str, str] | None = None) -> None:
        """Start every missing service process (all of them after services_down)."""
        if env is not None:
            self.extra_env = env
        await self.script("services.sh", "up")

    async def services_down(self) -> None:
        await self.script("services.sh", "down")

    def pid(self, service: str, replica: int) -> int | None:
        path = RUN / "services" / f"{service}-{replica}.pid"
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            return None

    def sigkill(self, service: str, replica: int) -> bool:
        pid = self.pid(service, replica)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            return True
        return False

    async def relay_leader(self, service: str) -> int | None:
        """The replica whose outbox relay leads for the service's schema (from /metrics)."""
        async with httpx.AsyncClient(timeout=3) as http:
            for replica in range(1, self.replicas + 1):
                try:
                    text = (await http.get(f"{url_of(service, replica)}/metrics")).text
                except httpx.HTTPError:
                    continue
                for line in text.splitlines():
                    if line.startswith("tongban_outbox_relay_leader{") and line.endswith(" 1.0"):
                        return replica
        return None

    async def kill_broker(self, node: int) -> None:
        await self.script("kafka.sh", "kill-broker", str(node))

    async def stop_broker(self, node: int) -> None:
        await self.script("kafka.sh", "stop-broker", str(node))

    async def start_broker(self, node: int) -> None:
        await self.script("kafka.sh", "start-broker", str(node))

    async def restart_postgres(self) -> None:
        await self.script("postgres.sh", "restart-immediate")


async def partition_leader(settings: CommonSettings, topic: str, partition: int) -> int:
    """The node id leading `topic`'s partition right now."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
        for part in described[0]["partitions"]:
            if part["partition"] == partition:
                return int(part["leader"])
        raise LookupError(f"{topic}[{partition}] not found")
    finally:
        await admin.close()


# --------------------------------------------------------------------------- load


@dataclass
class PlannedCase:
    key: str  # Idempotency-Key
    item: dict[str, Any]
    body: dict[str, Any]
    department_decides: bool
    deny: bool = False
    rate: bool = False
    submitted_at: float | None = None
    attempts: int = 0
    answers: list[int] = field(default_factory=list)
    answer: dict[str, Any] = field(default_factory=dict)  # intake's 201 (or 200) body
    refused: str | None = None

    @property
    def case_id(self) -> str | None:
        return self.answer.get("case_id")


def plan_load(
    catalog: dict[str, Any], count: int, rng: random.Random, dept_share: float
) -> list[PlannedCase]:
    """A steady mix: instant items (approved on acceptance) and items a department decides."""
    today = datetime.now(UTC).date().isoformat()
    items = [
        i
        for i in catalog["items"]
        if str(i.get("effective_from") or "0000") <= today
        and (i.get("effective_to") is None or str(i["effective_to"]) >= today)
    ]
    instant = [i for i in items if i.get("instant")]
    decided = [i for i in items if not i.get("instant")]
    if not instant or not decided:
        raise ValueError("the catalog needs instant and non-instant items in force")
    cases = []
    for n in range(count):
        by_department = rng.random() < dept_share
        item = rng.choice(decided if by_department else instant)
        body = application_for(catalog, item, rng, delivery="electronic")
        cases.append(
            PlannedCase(
                key=f"faults-{uuid.uuid4()}",
                item=item,
                body=body,
                department_decides=by_department,
                deny=by_department and n % 10 == 3,
                rate=n % 5 == 1,
            )
        )
    return cases


async def keep_routable(client: ActingClient, cases: list[PlannedCase]) -> list[PlannedCase]:
    """Only cases the catalog can route: a case that fails routing waits in triage for an
    operator (not terminal by design), which is not what the fault suite measures."""
    verdicts: dict[tuple[Any, ...], bool] = {}
    kept = []
    for case in cases:
        body = case.body
        key = (
            body["item_code"],
            body["applicant"].get("division_code"),
            body["channel"],
            body.get("office_code"),
        )
        if key not in verdicts:
            answer = await client.post(
                f"{url_of('routing', 1)}/v1/routes/preview",
                json=body,
                headers=client.headers_for(Role.operator),
            )
            answer.raise_for_status()
            verdicts[key] = answer.json().get("route") is not None
        if verdicts[key]:
            kept.append(case)
    return kept


async def post_submission(
    client: ActingClient, case: PlannedCase | PlannedBundle, replica: int, path: str = "/v1/cases"
) -> httpx.Response:
    """The counter's POST of a planned case (or bundle, at `/v1/bundles`) to one intake
    process, with its own key."""
    return await client.post(
        f"{url_of('intake', replica)}{path}",
        json=case.body,
        headers={
            "Idempotency-Key": case.key,
            **client.headers_for(Role.clerk, office_scope(case.body)),
        },
    )


def office_scope(body: dict[str, Any]) -> str:
    return (
        "online"
        if body.get("channel") == "online" or not body.get("office_code")
        else str(body["office_code"])
    )


def counter_terminals(timeout_s: float = 15.0, connect_s: float = 5.0) -> ClientFleet[ActingClient]:
    """32 terminals of 64 connections each: the load never waits on its own client."""
    return ClientFleet(
        lambda: ActingClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_s),
            limits=httpx.Limits(max_connections=64),
        )
    )


class LoadDriver:
    """Open-loop submissions at a steady rate; every submission retried with its own
    Idempotency-Key until intake answers it (a killed replica, 503 and 429 included)."""

    def __init__(
        self,
        terminals: ClientFleet[ActingClient],
        replicas: int,
        give_up_s: float = 240,
        post: Callable[[ActingClient, Any, int], Awaitable[httpx.Response]] | None = None,
    ) -> None:
        self.post = post or post_submission  # a case; a bundle: post_bundle
        self.terminals = terminals
        self.replicas = replicas
        self.give_up_s = give_up_s
        self.statuses: dict[int, int] = defaultdict(int)
        self.transport_errors = 0
        self.transport_kinds: dict[str, int] = defaultdict(int)
        self.retry_after_missing = 0

    async def run(
        self, cases: Sequence[Any], rate: float, on_accepted: Callable[[Any], None]
    ) -> None:
        start = now()
        tasks = []
        for n, case in enumerate(cases):
            delay = start + n / rate - now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._submit(case, n, on_accepted)))
        await asyncio.gather(*tasks)

    async def _submit(self, case: Any, n: int, on_accepted: Callable[[Any], None]) -> None:
        deadline = now() + self.give_up_s
        case.submitted_at = now()
        replica = n % self.replicas + 1
        while now() < deadline:
            case.attempts += 1
            try:
                answer = await self.post(self.terminals[n], case, replica)
            except httpx.HTTPError as exc:
                self.transport_errors += 1
                self.transport_kinds[type(exc).__name__] += 1
                replica = replica % self.replicas + 1  # that process may be down: the other
                await asyncio.sleep(0.5)
                continue
            self.statuses[answer.status_code] += 1
            case.answers.append(answer.status_code)
            if answer.status_code in (200, 201):
                case.answer = answer.json()
                on_accepted(case)
                return
            if answer.status_code in (429, 503):
                retry_after = answer.headers.get("retry-after")
                if retry_after is None:
                    self.retry_after_missing += 1
                await asyncio.sleep(float(retry_after or 1))
                replica = replica % self.replicas + 1
                continue
            case.refused = f"{answer.status_code} {answer.text[:300]}"
            return
        case.refused = f"no answer within {self.give_up_s}s"


# --------------------------------------------------------------------------- observer


@dataclass
class Seen:
    topic: str
    partition: int
    offset: int
    type: str
    event_id: str
    time: str
    seen_at: float


class Observer:
    """Reads every case topic, bundle.v1 (a bundle's events under its id) and the dead
    letters from where they stood when it started."""

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        self.events: dict[str, list[Seen]] = defaultdict(list)
        self.dead_letters: list[dict[str, str]] = []
        self.closed_at: dict[str, float] = {}
        self.accepted: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.start_offsets: dict[TopicPartition, int] = {}
        self.on_closed: Callable[[str], None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            **client_options(self.settings), group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        partitions = [
            tp
            for topic in (*CASE_TOPICS, BUNDLE_TOPIC, DLQ_TOPIC)
            for tp in await topic_partitions(consumer, topic)
        ]
        consumer.assign(partitions)
        self.start_offsets = await consumer.end_offsets(partitions)
        for tp, offset in self.start_offsets.items():
            consumer.seek(tp, offset)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for record in records:
                    self._take(record)

    def _take(self, record: Any) -> None:
        headers = {k: v.decode(errors="replace") for k, v in record.headers}
        if record.topic == DLQ_TOPIC:
            self.dead_letters.append(headers)
            return
        case_id = headers.get("ce_subject") or (record.key or b"").decode(errors="replace")
        event_type = headers.get("ce_type", "")
        self.events[case_id].append(
            Seen(
                record.topic,
                record.partition,
                record.offset,
                event_type,
                headers.get("ce_id", ""),
                headers.get("ce_time", ""),
                now(),
            )
        )
        if event_type == "gov.case.accepted.v1":
            with contextlib.suppress(ValueError):
                department = json.loads(record.value).get("department", "")
                self.accepted.put_nowait((case_id, department))
        if event_type == "gov.case.closed.v1" and case_id not in self.closed_at:
            self.closed_at[case_id] = now()
            if self.on_closed is not None:
                self.on_closed(case_id)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


# --------------------------------------------------------------------------- department


class Department:
    """A department system: answers every case it was meant to decide, on case.decisions.v1,
    once per case (it remembers what it answered, as a real one keeps its own records)."""

    def __init__(self, settings: CommonSettings, planned: dict[str, PlannedCase]) -> None:
        self.settings = settings
        self.planned = planned
        self.answered: set[str] = set()
        self.waiting: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, accepted: asyncio.Queue[tuple[str, str]]) -> None:
        self._producer = AIOKafkaProducer(
            **client_options(self.settings),
            enable_idempotence=True,
            request_timeout_ms=15_000,
        )
        await self._producer.start()
        self._task = asyncio.create_task(self._run(accepted))

    async def _run(self, accepted: asyncio.Queue[tuple[str, str]]) -> None:
        while True:
            case_id, department = await accepted.get()
            if case_id not in self.planned:
                # Accepted before the harness had intake's answer (a retried submission whose
                # first answer was lost): decide once that answer arrives.
                self.waiting[case_id] = department
                continue
            self._maybe_decide(case_id, department)

    def known(self, case_id: str) -> None:
        """Intake's answer for this case arrived (call after adding it to `planned`)."""
        if case_id in self.waiting:
            self._maybe_decide(case_id, self.waiting.pop(case_id))

    def _maybe_decide(self, case_id: str, department: str) -> None:
        case = self.planned[case_id]
        if case.department_decides and case_id not in self.answered:
            self.answered.add(case_id)
            self._tasks.append(asyncio.create_task(self._decide(case_id, department, case.deny)))

    async def _decide(self, case_id: str, department: str, deny: bool) -> None:
        decision = DecisionMade(
            case_id=case_id,
            department=department,
            decision=DecisionKind.deny if deny else DecisionKind.approve,
            reason="材料不符合受理条件" if deny else None,
            legal_basis="《行政许可法》第三十八条" if deny else None,
        )
        envelope = Envelope(
            type="gov.case.decision.v1",
            source=f"/departments/{department}",
            subject=case_id,
            data=decision.model_dump(mode="json"),
        )
        key, value, headers = envelope.to_record()
        assert self._producer is not None
        while True:  # a department system retries until the broker has its decision
            try:
                await self._producer.send_and_wait(
                    "case.decisions.v1", key=key, value=value, headers=headers
                )
                return
            except Exception:
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._producer is not None:
            await self._producer.stop()


# --------------------------------------------------------------------------- lag


class LagSampler:
    """Total lag of tongban's consumer groups, every `every_s` seconds (samples that fail
    while a broker is down are skipped, not guessed)."""

    def __init__(self, settings: CommonSettings, every_s: float = 1.0) -> None:
        self.settings = settings
        self.every_s = every_s
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        admin: AIOKafkaAdminClient | None = None
        reader: AIOKafkaConsumer | None = None
        try:
            while True:
                try:
                    if admin is None or reader is None:
                        admin = AIOKafkaAdminClient(**client_options(self.settings))
                        await admin.start()
                        reader = AIOKafkaConsumer(**client_options(self.settings), group_id=None)
                        await reader.start()
                    total = await asyncio.wait_for(self._total(admin, reader), timeout=5)
                    self.samples.append((now(), total))
                except Exception:
                    for client in (admin, reader):
                        with contextlib.suppress(Exception):
                            if isinstance(client, AIOKafkaAdminClient):
                                await client.close()
                            elif client is not None:
                                await client.stop()
                    admin = reader = None
                await asyncio.sleep(self.every_s)
        finally:
            with contextlib.suppress(Exception):
                if admin is not None:
                    await admin.close()
                if reader is not None:
                    await reader.stop()

    async def _total(self, admin: AIOKafkaAdminClient, reader: AIOKafkaConsumer) -> int:
        groups = [
            g[0] for g in await admin.list_consumer_groups() if g[0].split("-", 1)[0] in SERVICES
        ]
        total = 0
        for group in groups:
            offsets = await admin.list_consumer_group_offsets(group)
            committed = {tp: meta.offset for tp, meta in offsets.items()}
            if not committed:
                continue
            ends = await reader.end_offsets(list(committed))
            total += sum(row.lag for row in compute_lag(group, committed, {}, ends))
        return total

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def max_lag(self) -> int:
        return max((lag for _, lag in self.samples), default=0)

    def recovery_s(self, fault_at: float, repaired_at: float, threshold: int) -> float | None:
        """Seconds from the fault until lag is back under `threshold` after the repair."""
        for at, lag in self.samples:
            if at >= repaired_at and lag <= threshold:
                return round(at - fault_at, 1)
        return None


# --------------------------------------------------------------------------- checks


@dataclass
class Verdict:
    scenario: str
    submitted: int
    terminal: int
    lost: int
    duplicate_effects: int
    order_violations: int
    max_lag: int
    recovery_s: float | None
    refused: int = 0
    bundles: int = 0
    members: int = 0
    members_lost: int = 0
    members_doubled: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (
            self.lost == 0
            and self.members_lost == 0
            and self.members_doubled == 0
            and self.duplicate_effects == 0
            and self.order_violations == 0
            and self.refused == 0
            and self.details.get("problems", []) == []
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def order_violations(events: list[Seen]) -> list[str]:
    """A case's events out of lifecycle order on one topic, or stamped before their cause."""
    problems = []
    by_topic: dict[str, list[Seen]] = defaultdict(list)
    first: dict[str, Seen] = {}
    for seen in events:
        by_topic[seen.topic].append(seen)
        if seen.type not in first:
            first[seen.type] = seen
    for topic, seen_on_topic in by_topic.items():
        highest, highest_type = 0, ""
        done: set[str] = set()
        for seen in sorted(seen_on_topic, key=lambda s: (s.partition, s.offset)):
            if seen.event_id in done:
                continue  # a redelivered copy of an earlier event: dedupe by id is the contract
            done.add(seen.event_id)
            rank = RANK.get(seen.type, 0)
            if rank and rank < highest:
                problems.append(f"{topic}: {seen.type} after {highest_type}")
            if rank > highest:
                highest, highest_type = rank, seen.type
    stamped = sorted(
        ((RANK[t], s.time, t) for t, s in first.items() if t in RANK and s.time), key=lambda x: x[0]
    )
    for (rank_a, time_a, type_a), (rank_b, time_b, type_b) in zip(
        stamped, stamped[1:], strict=False
    ):
        if rank_b > rank_a and _ts(time_b) < _ts(time_a):
            problems.append(f"{type_b} stamped before {type_a}")
    return problems


def _ts(value: str) -> float:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def duplicate_effects(events: list[Seen]) -> list[str]:
    ids: dict[str, set[str]] = defaultdict(set)
    for seen in events:
        if seen.type in ONCE_PER_CASE:
            ids[seen.type].add(seen.event_id)
    return [f"{t} x{len(found)}" for t, found in ids.items() if len(found) > 1]


class Submission(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def case_id(self) -> str | None: ...


async def database_checks(
    settings: CommonSettings,
    cases: Sequence[Submission],
    since: datetime,
    members: Sequence[str] = (),
) -> dict[str, Any]:
    """What the services' own tables say: status per case, one case per key, one result, one
    rating, and no case created that the harness never had an answer for (`members`: the
    cases a bundle's answer named)."""
    accepted = {c.case_id for c in cases if c.case_id}
    keys = [c.key for c in cases]
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        statuses = dict(
            await conn.fetch(
                "SELECT case_id, status FROM intake.cases WHERE case_id = ANY($1::text[])",
                list(accepted),
            )
        )
        per_key = await conn.fetch(
            "SELECT key, case_id FROM intake.idempotency_keys WHERE key = ANY($1::text[])", keys
        )
        created = {
            r["case_id"]
            for r in await conn.fetch(
                "SELECT case_id FROM intake.cases WHERE created_at >= $1", since
            )
        }
        results = await conn.fetchval(
            "SELECT count(*) FROM delivery.results WHERE case_id = ANY($1::text[])", list(accepted)
        )
        ratings = await conn.fetchval(
            "SELECT count(*) FROM delivery.ratings WHERE case_id = ANY($1::text[])", list(accepted)
        )
    finally:
        await conn.close()
    key_cases: dict[str, set[str]] = defaultdict(set)
    for row in per_key:
        key_cases[row["key"]].add(row["case_id"])
    harness_keys = {c.key: c.case_id for c in cases}
    mismatched = [k for k, found in key_cases.items() if found != {harness_keys.get(k)}]
    return {
        "statuses": statuses,
        "key_mismatch": mismatched,
        "phantom_cases": sorted(created - accepted - set(members)),
        "results": int(results),
        "ratings": int(ratings),
    }


# --------------------------------------------------------------------------- a scenario


Fault = Callable[["Run"], Awaitable[tuple[float, float] | None]]


@dataclass
class ScenarioSpec:
    name: str
    cases: int
    rate: float
    faults: list[tuple[float, Fault]] = field(default_factory=list)  # (share of the run, action)
    service_env: dict[str, str] | None = None  # restart the services with this environment
    poison_per_topic: int = 0
    dept_share: float = 0.3
    bundles: int = 0  # bundle applications beside the cases (tests.faults.bundles)


@dataclass
class Run:
    stack: Stack
    settings: CommonSettings
    rng: random.Random
    notes: list[str] = field(default_factory=list)


async def run_scenario(
    spec: ScenarioSpec,
    stack: Stack,
    catalog: dict[str, Any],
    settings: CommonSettings,
    *,
    drain_s: float = 240,
    progress: Callable[[str, str], None] = lambda _s, _m: None,
) -> Verdict:
    rng = random.Random(spec.name)
    run = Run(stack, settings, rng)
    if spec.service_env is not None:
        await stack.services_down()
        await stack.services_up(spec.service_env)
    client = ActingClient(
        timeout=httpx.Timeout(15.0, connect=3.0), limits=httpx.Limits(max_connections=2000)
    )
    cases = await keep_routable(client, plan_load(catalog, spec.cases, rng, spec.dept_share))
    bundles = plan_bundles(catalog, spec.bundles, rng)
    items = {i["code"]: i for i in catalog["items"]}
    by_case: dict[str, PlannedCase] = {}
    observer = Observer(settings)
    department = Department(settings, by_case)
    lag = LagSampler(settings)
    since = datetime.now(UTC)
    await observer.start()
    await department.start(observer.accepted)
    await lag.start()
    terminals = counter_terminals()
    driver = LoadDriver(terminals, stack.replicas)
    bundle_driver = LoadDriver(
        terminals, stack.replicas, post=functools.partial(post_submission, path="/v1/bundles")
    )
    counter = BundleCounter(client, [url_of("delivery", r) for r in range(1, stack.replicas + 1)])
    rating_tasks: list[asyncio.Task[None]] = []

    def accepted(case: PlannedCase) -> None:
        assert case.case_id is not None
        by_case[case.case_id] = case
        department.known(case.case_id)
        if case.case_id in observer.closed_at:
            closed(case.case_id)

    def bundle_accepted(bundle: PlannedBundle) -> None:
        # Every member is an ordinary case for the department: decided unless instant.
        for case_id, code in bundle.members().items():
            by_case[case_id] = PlannedCase(
                key=f"{bundle.key}/{case_id}",
                item=items[code],
                body=bundle.body,
                department_decides=not items[code].get("instant"),
                deny=code == bundle.deny,
                answer={"case_id": case_id},
            )
            department.known(case_id)

    def closed(case_id: str) -> None:
        case = by_case.get(case_id)
        if case is not None and case.rate:
            rating_tasks.append(asyncio.create_task(_rate(client, stack, case)))

    observer.on_closed = closed
    fault_windows: list[tuple[float, float]] = []
    started = now()
    duration = spec.cases / spec.rate

    async def inject() -> None:
        for share, action in spec.faults:
            await asyncio.sleep(max(0.0, started + share * duration - now()))
            progress(spec.name, f"fault at {share:.0%}: {getattr(action, '__name__', action)}")
            window = await action(run)
            if window is not None:
                fault_windows.append(window)

    poison_sent: dict[str, list[tuple[int, int]]] = {}

    async def poison() -> None:
        if spec.poison_per_topic:
            await asyncio.sleep(duration * 0.3)
            poison_sent.update(await send_poison(settings, spec.poison_per_topic, rng))
            progress(
                spec.name,
                f"poison: {spec.poison_per_topic} malformed records on every consumed topic",
            )

    async def counter_rounds() -> None:
        while True:
            delivered = {
                b.bundle_id
                for b in bundles
                if b.bundle_id
                and any(s.type == "gov.bundle.delivered.v1" for s in observer.events[b.bundle_id])
            }
            try:
                await counter.serve(bundles, delivered)
            except Exception as exc:  # an odd answer: said in the verdict, the rounds go on
                counter.problems.append(f"counter round: {exc!r}"[:300])
            await asyncio.sleep(1)

    counting = asyncio.create_task(counter_rounds())
    try:
        progress(spec.name, f"{spec.cases} cases at {spec.rate:g}/s, {len(bundles)} bundles")
        await asyncio.gather(
            driver.run(cases, spec.rate, accepted),
            bundle_driver.run(bundles, max(len(bundles), 1) / duration, bundle_accepted),
            inject(),
            poison(),
        )
        submitted = [c for c in cases if c.case_id]
        progress(spec.name, f"submitted {len(submitted)}; draining")
        deadline = now() + drain_s
        while now() < deadline:
            if all(c.case_id in observer.closed_at for c in submitted) and bundles_done(
                bundles, observer.events
            ):
                break
            await asyncio.sleep(0.5)
        counting.cancel()
        await asyncio.gather(*rating_tasks)
        await asyncio.sleep(3)  # late duplicates, rating events, the intake timeline
        readers = await readers_of_topics(settings) if poison_sent else {}
        if poison_sent:
            # Dead letters of the last poison records may still be on their way.
            for _ in range(60):
                if not check_poison(poison_sent, observer.dead_letters, readers)["missing"]:
                    break
                await asyncio.sleep(1)
        members = [c for b in bundles for c in b.members()]
        checked = await database_checks(settings, cases, since, members)
        in_bundles = await bundle_database_checks(settings, bundles, since)
        # Let the intake timeline catch up on closings it has not applied yet.
        for _ in range(30):
            if all(checked["statuses"].get(c.case_id) in TERMINAL for c in submitted) and all(
                in_bundles["statuses"].get(c) in MEMBER_TERMINAL for c in members
            ):
                break
            await asyncio.sleep(1)
            checked = await database_checks(settings, cases, since, members)
            in_bundles = await bundle_database_checks(settings, bundles, since)
    finally:
        counting.cancel()
        await client.aclose()
        await terminals.aclose()
        await lag.stop()
        await department.stop()
        await observer.stop()
        if spec.service_env is not None:
            await stack.services_down()
            await stack.services_up({})

    terminal = [
        c
        for c in submitted
        if c.case_id in observer.closed_at and checked["statuses"].get(c.case_id) in TERMINAL
    ]
    lost = [c.case_id for c in submitted if c not in terminal]
    duplicates: dict[str, list[str]] = {}
    disorder: dict[str, list[str]] = {}
    for case in submitted:
        assert case.case_id is not None
        seen = observer.events.get(case.case_id, [])
        if found := duplicate_effects(seen):
            duplicates[case.case_id] = found
        if found := order_violations(seen):
            disorder[case.case_id] = found
    dup_count = (
        sum(len(v) for v in duplicates.values())
        + len(checked["key_mismatch"])
        + len(checked["phantom_cases"])
    )
    pre = [
        lag_
        for at, lag_ in lag.samples
        if at < started + (spec.faults[0][0] if spec.faults else 1) * duration
    ]
    threshold = max(20, 2 * sorted(pre)[int(0.95 * (len(pre) - 1))] if pre else 20)
    recoveries = [lag.recovery_s(a, b, threshold) for a, b in fault_windows]
    recovery = None
    if recoveries:
        recovery = max((r for r in recoveries if r is not None), default=None)
        if any(r is None for r in recoveries):
            recovery = float("inf")
    problems = []
    if driver.retry_after_missing:
        problems.append(f"{driver.retry_after_missing} 429/503 answers without Retry-After")
    poison_report = (
        check_poison(poison_sent, observer.dead_letters, readers) if poison_sent else None
    )
    if poison_report and poison_report["missing"]:
        problems.append(f"{len(poison_report['missing'])} poison records not dead-lettered")
    rated = sum(1 for c in submitted if c.rate and c.case_id in observer.closed_at)
    bundle_verdict = member_verdict(
        bundles, observer.events, in_bundles["statuses"], duplicate_effects
    )
    for case_id in members:
        if found := order_violations(observer.events.get(case_id, [])):
            disorder[case_id] = found
    problems += counter.problems
    return Verdict(
        scenario=spec.name,
        submitted=len(submitted),
        terminal=len(terminal),
        lost=len(lost),
        duplicate_effects=dup_count,
        order_violations=sum(len(v) for v in disorder.values()),
        max_lag=lag.max_lag(),
        recovery_s=recovery,
        refused=sum(1 for c in cases if c.refused) + sum(1 for b in bundles if b.refused),
        bundles=sum(1 for b in bundles if b.bundle_id),
        members=bundle_verdict["members"],
        members_lost=len(bundle_verdict["lost"]),
        members_doubled=len(bundle_verdict["doubled"])
        + len(in_bundles["key_mismatch"])
        + len(in_bundles["phantom_bundles"]),
        details={
            "rate": spec.rate,
            "planned": len(cases),
            "seconds": round(now() - started, 1),
            "answers": dict(driver.statuses),
            "transport_errors": dict(driver.transport_kinds),
            "lost_cases": lost[:20],
            "duplicates": dict(list(duplicates.items())[:20]),
            "key_mismatch": checked["key_mismatch"][:20],
            "phantom_cases": checked["phantom_cases"][:20],
            "order": dict(list(disorder.items())[:20]),
            "refused": [c.refused for c in cases if c.refused][:10]
            + [b.refused for b in bundles if b.refused][:10],
            "lost_members": bundle_verdict["lost"][:20],
            "doubled_members": dict(list(bundle_verdict["doubled"].items())[:20]),
            "bundle_key_mismatch": in_bundles["key_mismatch"][:20],
            "phantom_bundles": in_bundles["phantom_bundles"][:20],
            "results_rows": checked["results"],
            "ratings_rows": checked["ratings"],
            "ratings_asked": rated,
            "faults": len(fault_windows),
            "recoveries": recoveries,
            "poison": poison_report,
            "notes": run.notes,
            "problems": problems,
        },
    )


async def _rate(client: ActingClient, stack: Stack, case: PlannedCase) -> None:
    """A citizen rates the closed case; retried through 503s and dead replicas. A 409 after
    a retry means the first attempt was applied (its answer lost): that is the point."""
    assert case.case_id is not None
    headers = client.headers_for(Role.clerk, office_scope(case.body))
    replica = 1
    for _ in range(120):
        try:
            answer = await client.post(
                f"{url_of('delivery', replica)}/v1/cases/{case.case_id}/rating",
                json={"rating": "satisfied", "comment": "办事顺利"},
                headers=headers,
            )
        except httpx.HTTPError:
            replica = replica % stack.replicas + 1
            await asyncio.sleep(0.5)
            continue
        if answer.status_code in (200, 201, 409):
            return
        if answer.status_code in (429, 503):
            await asyncio.sleep(float(answer.headers.get("retry-after", 1)))
            continue
        case.refused = f"rating: {answer.status_code} {answer.text[:200]}"
        return


# --------------------------------------------------------------------------- faults


def broker_fault(how: str, topic: str = "case.intake.v1", partition: int = 0) -> Fault:
    """kill -9 (or cleanly stop) the leader of a case partition; restart it after the
    broker session timeout has let the controller notice."""

    async def fault(run: Run) -> tuple[float, float]:
        leader = await partition_leader(run.settings, topic, partition)
        at = now()
        if how == "kill":
            await run.stack.kill_broker(leader)
        else:
            await run.stack.stop_broker(leader)
        await asyncio.sleep(8)  # past broker.session.timeout.ms (6 s)
        await run.stack.start_broker(leader)
        run.notes.append(f"{how} node {leader} (leader of {topic}[{partition}])")
        return at, now()

    fault.__name__ = f"{how}_partition_leader"
    return fault


def service_kills(services: tuple[str, ...] = ("routing", "approval", "delivery")) -> Fault:
    """SIGKILL one process of each service under load (mid-batch: they are busy), plus the
    process whose outbox relay leads intake's schema; restart them after a rebalance."""

    async def fault(run: Run) -> tuple[float, float]:
        at = now()
        killed = []
        for service in services:
            replica = run.rng.randint(1, run.stack.replicas)
            if run.stack.sigkill(service, replica):
                killed.append(f"{service}-{replica}")
        leader = await run.stack.relay_leader("intake")
        if leader is not None and run.stack.sigkill("intake", leader):
            killed.append(f"intake-{leader} (relay leader)")
        run.notes.append("SIGKILL " + ", ".join(killed))
        await asyncio.sleep(4)
        await run.stack.services_up()
        return at, now()

    fault.__name__ = "sigkill_services_and_relay"
    return fault


def relay_kills() -> Fault:
    """SIGKILL the processes whose outbox relays lead (routing, approval, delivery)."""

    async def fault(run: Run) -> tuple[float, float]:
        at = now()
        killed = []
        for service in ("routing", "approval", "delivery"):
            leader = await run.stack.relay_leader(service)
            if leader is not None and run.stack.sigkill(service, leader):
                killed.append(f"{service}-{leader}")
        run.notes.append("SIGKILL relay leaders " + ", ".join(killed))
        await asyncio.sleep(3)
        await run.stack.services_up()
        return at, now()

    fault.__name__ = "sigkill_relay_leaders"
    return fault


def postgres_restart() -> Fault:
    async def fault(run: Run) -> tuple[float, float]:
        at = now()
        await run.stack.restart_postgres()
        run.notes.append("PostgreSQL immediate restart")
        return at, now()

    fault.__name__ = "postgres_immediate_restart"
    return fault


# --------------------------------------------------------------------------- poison


POISON_KINDS = ("not_a_cloudevent", "not_json", "unknown_type")


async def send_poison(
    settings: CommonSettings, per_topic: int, rng: random.Random
) -> dict[str, list[tuple[int, int]]]:
    """Malformed records on every consumed topic (the case topics, bundle.v1 and the
    catalog): without
    CloudEvents headers, with a body that is not JSON, with an event type nobody knows.
    Returns (partition, offset) per topic."""
    producer = AIOKafkaProducer(**client_options(settings), enable_idempotence=True)
    await producer.start()
    sent: dict[str, list[tuple[int, int]]] = defaultdict(list)
    try:
        for topic in (*CASE_TOPICS, BUNDLE_TOPIC, CATALOG_TOPIC):
            for n in range(per_topic):
                kind = POISON_KINDS[n % len(POISON_KINDS)]
                key = f"POISON-{rng.randrange(10**9)}".encode()
                headers = [
                    ("ce_specversion", b"1.0"),
                    ("ce_id", str(uuid.uuid4()).encode()),
                    ("ce_source", b"/faults/poison"),
                    (
                        "ce_type",
                        b"gov.case.bogus.v1"
                        if kind == "unknown_type"
                        else b"gov.case.submitted.v1",
                    ),
                    ("content-type", b"application/json"),
                ]
                value = b'{"case_id": "x"}'
                if kind == "not_a_cloudevent":
                    headers = []
                elif kind == "not_json":
                    value = b"\xff\xfe not json {"
                meta = await producer.send_and_wait(topic, key=key, value=value, headers=headers)
                sent[topic].append((meta.partition, meta.offset))
    finally:
        await producer.stop()
    return dict(sent)


async def readers_of_topics(settings: CommonSettings) -> dict[str, set[str]]:
    """topic -> the `dlq_source` of every tongban consumer group reading it."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    readers: dict[str, set[str]] = defaultdict(set)
    try:
        for listed in await admin.list_consumer_groups():
            group = listed[0]
            service = group.split("-", 1)[0]
            if service not in SERVICES:
                continue
            for tp in await admin.list_consumer_group_offsets(group):
                readers[tp.topic].add(f"{service}/{group}")
    finally:
        await admin.close()
    readers[CATALOG_TOPIC] = {f"{service}/catalog-follower" for service in CATALOG_FOLLOWERS}
    return dict(readers)


def check_poison(
    sent: dict[str, list[tuple[int, int]]],
    dead: list[dict[str, str]],
    readers: dict[str, set[str]],
) -> dict[str, Any]:
    """Every poison record is dead-lettered, with a reason, by every group that reads its
    topic."""
    by_record: dict[tuple[str, int, int], set[str]] = defaultdict(set)
    reasons: dict[tuple[str, int, int], str] = {}
    for headers in dead:
        try:
            where = (
                headers["dlq_topic"],
                int(headers["dlq_partition"]),
                int(headers["dlq_offset"]),
            )
        except (KeyError, ValueError):
            continue
        by_record[where].add(headers.get("dlq_source", ""))
        reasons[where] = headers.get("dlq_reason", "")
    missing = []
    per_topic: dict[str, dict[str, int]] = {}
    for topic, records in sent.items():
        expected = readers.get(topic, set())
        complete = 0
        for partition, offset in records:
            got = by_record.get((topic, partition, offset), set())
            if not expected or got != expected or not reasons.get((topic, partition, offset)):
                missing.append(f"{topic}[{partition}]@{offset}")
            else:
                complete += 1
        per_topic[topic] = {
            "sent": len(records),
            "dead_lettered_by_every_reader": complete,
            "readers": len(expected),
        }
    return {
        "per_topic": per_topic,
        "missing": missing[:20],
        "sample_reasons": sorted(set(reasons.values()))[:5],
    }
