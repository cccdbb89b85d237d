"""Kafka clients configured the way tongban's guarantees need them, and topic provisioning.

Department topics (`dept.<code>.cases.v1`): every department receives the cases routed to it
on a topic of its own, so that broker ACLs can confine a department's system to its own
cases (deploy/README.md). `department_topic` maps a department code to that name.
"""

from __future__ import annotations

import asyncio
import hashlib
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import ConsumerRecord

from contracts.events import (
    BUNDLE_TOPIC,
    CASE_TOPICS,
    CATALOG_TOPIC,
    DLQ_TOPIC,
    LICENSE_TOPIC,
    XREGION_TOPIC,
)
from services.common.logs import get_logger
from services.common.settings import CommonSettings

log = get_logger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int | None = None  # None: the settings' default
    config: dict[str, str] = field(default_factory=dict)


def standard_topics() -> list[TopicSpec]:
    return [
        *(TopicSpec(name) for name in CASE_TOPICS),
        TopicSpec(DLQ_TOPIC),
        # Compacted, keyed per catalog version (`<city>/catalog/<n>`), so a new reader finds
        # every version without replaying deletions; one partition keeps them in load order.
        TopicSpec(CATALOG_TOPIC, partitions=1, config={"cleanup.policy": "compact"}),
        # The licence library (DESIGN.md §7), keyed by licence id: compacted, so a reader that
        # starts late still finds each licence's last state (issued, or revoked).
        TopicSpec(LICENSE_TOPIC, config={"cleanup.policy": "compact"}),
        # Bundles (DESIGN.md §8), keyed by bundle id: one bundle's story in order.
        TopicSpec(BUNDLE_TOPIC),
        # What this region sends its partners (DESIGN.md §9), keyed by case id.
        TopicSpec(XREGION_TOPIC),
    ]


# A partner region's copy of a topic, as MirrorMaker 2's default replication policy names it:
# `<source cluster alias>.<topic>` (an alias is a deployment name: no dots).
def mirrored_pattern(topic: str) -> str:
    return r"^[A-Za-z0-9_-]+\." + topic.replace(".", r"\.") + "$"


PARTNER_XREGION_PATTERN = mirrored_pattern(XREGION_TOPIC)
PARTNER_CATALOG_PATTERN = mirrored_pattern(CATALOG_TOPIC)


# -- department topics ---------------------------------------------------------------------------

DEPARTMENT_TOPIC_PREFIX = "dept."
DEPARTMENT_TOPIC_SUFFIX = ".cases.v1"
MAX_TOPIC_NAME = 249  # Kafka's limit
# Characters of a department code kept as they are (case kept): letters, digits and `-`.
_KEPT = frozenset(string.ascii_letters + string.digits + "-")
_MAX_SAFE_CODE = MAX_TOPIC_NAME - len(DEPARTMENT_TOPIC_PREFIX) - len(DEPARTMENT_TOPIC_SUFFIX)
_HASH_MARK = "_h"  # never produced by an escape (`_` + two upper-case hex digits)


def topic_safe_code(code: str) -> str:
    """A department code as it appears in topic names: deterministic and one-to-one.

    - ASCII letters, digits and `-` are kept as they are, upper/lower case included
      (`YZ01-MKT` stays `YZ01-MKT`).
    - Every other character, `.` and `_` included, becomes `_` followed by the two upper-case
      hex digits of each byte of its UTF-8 encoding: `.` -> `_2E`, `_` -> `_5F`, `/` -> `_2F`,
      `市` -> `_E5_B8_82`. Kafka allows `.` and `_`, but escaping them keeps the mapping
      one-to-one (two departments never share a topic) and keeps names clear of Kafka's rule
      that topics differing only by `.` versus `_` collide.
    - A result longer than Kafka allows (249 characters for the whole topic name) keeps its
      first escaped characters and ends with `_h` and the SHA-256 of the code in hex; `_h`
      never comes out of an escape, so such a name cannot equal a short one.
    """
    if not code:
        raise ValueError("a department code must not be empty")
    pieces = [
        c if c in _KEPT else "".join(f"_{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        for c in code
    ]
    safe = "".join(pieces)
    if len(safe) <= _MAX_SAFE_CODE:
        return safe
    digest = _HASH_MARK + hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()
    head: list[str] = []
    budget = _MAX_SAFE_CODE - len(digest)
    for piece in pieces:  # whole escapes only: a readable head, never half an escape
        if len(piece) > budget:
            break
        head.append(piece)
        budget -= len(piece)
    return "".join(head) + digest


def department_topic(code: str) -> str:
    """`dept.<code>.cases.v1`: the topic of the cases routed to department `code`."""
    return f"{DEPARTMENT_TOPIC_PREFIX}{topic_safe_code(code)}{DEPARTMENT_TOPIC_SUFFIX}"


def department_topics(codes: Iterable[str]) -> list[TopicSpec]:
    """The topics of these departments (partitions and replication from the settings)."""
    return [TopicSpec(name) for name in sorted({department_topic(code) for code in codes})]


async def ensure_department_topics(settings: CommonSettings, codes: Iterable[str]) -> list[str]:
    """Create the missing department topics of these departments; the names created."""
    return await ensure_topics(settings, department_topics(codes))


# -- clients -------------------------------------------------------------------------------------


def client_options(settings: CommonSettings) -> dict[str, Any]:
    """Connection options every Kafka client of tongban shares (bootstrap, TLS, SASL)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism or "SCRAM-SHA-512"
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value()
            if settings.kafka_sasl_password
            else None
        )
    return options


def make_producer(settings: CommonSettings, *, client_id: str | None = None) -> AIOKafkaProducer:
    # aiokafka defaults to acks=1 and no idempotence; both are needed so a retried send is
    # neither lost nor duplicated within one producer session.
    return AIOKafkaProducer(
        **client_options(settings),
        client_id=client_id or settings.service,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        max_batch_size=256 * 1024,
        request_timeout_ms=settings.kafka_request_timeout_ms,
    )


def make_consumer(
    settings: CommonSettings, *topics: str, group_id: str, client_id: str | None = None
) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        **client_options(settings),
        group_id=group_id,
        client_id=client_id or settings.service,
        enable_auto_commit=False,  # offsets move only after the database transaction commits
        auto_offset_reset="earliest",  # a new group starts from the beginning: nothing skipped
        isolation_level="read_committed",
        max_poll_records=settings.consumer_max_records,
        fetch_max_bytes=settings.consumer_fetch_max_bytes,
        max_partition_fetch_bytes=settings.consumer_partition_fetch_bytes,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
        metadata_max_age_ms=settings.kafka_metadata_max_age_ms,
        request_timeout_ms=settings.kafka_request_timeout_ms,
    )


class TopicCreationError(RuntimeError):
    """The broker refused to create some topics (name -> the broker's error)."""

    def __init__(self, failures: dict[str, str]) -> None:
        super().__init__(f"topics not created: {failures}")
        self.failures = failures


async def ensure_topics(settings: CommonSettings, topics: list[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Idempotent.

    Raises TopicCreationError when the broker answers with an error for a topic (other than
    "already exists": another process won the race, which is fine), and the client's errors
    when the broker cannot be reached.
    """
    admin = AIOKafkaAdminClient(
        **client_options(settings),
        request_timeout_ms=settings.kafka_request_timeout_ms,
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics if t.name not in existing]
        created: list[str] = []
        failures: dict[str, str] = {}
        for spec in wanted:
            config = {"min.insync.replicas": str(settings.kafka_min_insync), **spec.config}
            new_topic = NewTopic(
                name=spec.name,
                num_partitions=spec.partitions or settings.kafka_partitions,
                replication_factor=settings.kafka_replication,
                topic_configs=config,
            )
            try:
                response = await admin.create_topics([new_topic])
            except TopicAlreadyExistsError:
                continue  # another process won the race; that is fine
            # The client does not raise for per-topic errors: read them from the answer.
            error = next((e for e in response.topic_errors if e[0] == spec.name), None)
            code = int(error[1]) if error is not None else 0
            if code == 0:
                created.append(spec.name)
            elif code != TopicAlreadyExistsError.errno:
                message = error[2] if error is not None and len(error) > 2 else None
                failures[spec.name] = f"{for_code(code).__name__}: {message or ''}".strip()
        if created:
            log.info("topics created", topics=created)
        if failures:
            raise TopicCreationError(failures)
        await _until_led(admin, [t.name for t in topics])
        return created
    finally:
        await admin.close()


async def _until_led(admin: AIOKafkaAdminClient, names: list[str], within_s: float = 60.0) -> None:
    """Wait until the brokers' metadata shows every partition of `names` with a leader.

    A topic another process has just created exists at the controller before every broker
    knows it: a consumer that joins its group in between is given none of its partitions and
    sits idle until its next metadata refresh. Bounded: past `within_s` a warning, and the
    consumers' own refresh (`kafka_metadata_max_age_ms`) picks the topic up later."""
    deadline = asyncio.get_running_loop().time() + within_s
    waiting = sorted(names)
    while waiting:
        described = await admin.describe_topics(waiting)
        waiting = sorted(
            str(t.get("topic"))
            for t in described
            if t.get("error_code")
            or not t.get("partitions")
            or any(p.get("leader", -1) < 0 for p in t["partitions"])
        )
        if not waiting:
            return
        if asyncio.get_running_loop().time() > deadline:
            log.warning("topics without a leader yet", topics=waiting)
            return
        await asyncio.sleep(0.2)


# Told of each record the client could not parse: its partition, offset, and the error.
OnUnreadable = Callable[[TopicPartition, int, Exception], None]


def log_unreadable(tp: TopicPartition, offset: int, error: Exception) -> None:
    log.warning(
        "unreadable record skipped",
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        error=repr(error),
    )


class ReadableFetch:
    """`consumer.getmany` for readers (operators' tools, the console, the catalog follower)
    that steps over records the Kafka client cannot parse.

    A record whose header name is not UTF-8 (no Java client writes one; a raw producer can)
    makes aiokafka's getmany raise for every partition at every call, and drop what it had
    already taken from other partitions in that call while moving their positions past it.
    So this keeps, per partition, the offset after the last record it returned; on such an
    error it rewinds every partition there, reads on partition by partition, and reports the
    unreadable record's place to `on_unreadable` (there are no bytes to show) instead of
    stopping; by default it is logged.
    Consumer groups that apply events do the same in ConsumerRunner, with dead letters.
    """

    def __init__(
        self, consumer: AIOKafkaConsumer, on_unreadable: OnUnreadable = log_unreadable
    ) -> None:
        self.consumer = consumer
        self.on_unreadable = on_unreadable
        self.next_offsets: dict[TopicPartition, int] = {}

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        wanted = list(partitions) or sorted(self.consumer.assignment())
        for tp in wanted:
            if tp not in self.next_offsets:
                self.next_offsets[tp] = await self.consumer.position(tp)
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
        try:
            batch = await self.consumer.getmany(
                *partitions, timeout_ms=timeout_ms, max_records=max_records
            )
        except Exception as exc:
            if isinstance(exc, KafkaError):
                raise
            batch = await self._step_over(wanted, exc)
        for tp, records in batch.items():
            if records:
                self.next_offsets[tp] = records[-1].offset + 1
        return batch

    async def _step_over(
        self, wanted: list[TopicPartition], error: Exception
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        for tp in wanted:
            self.consumer.seek(tp, self.next_offsets[tp])
        found: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for tp in wanted:
            try:
                batch = await self.consumer.getmany(tp, timeout_ms=500)
            except Exception as exc:
                if isinstance(exc, KafkaError):
                    raise
                found[tp] = await self._find_and_skip(tp)
                continue
            found[tp] = batch.get(tp, [])
            if found[tp]:
                self.next_offsets[tp] = found[tp][-1].offset + 1
        return found

    async def _find_and_skip(self, tp: TopicPartition) -> list[ConsumerRecord[bytes, bytes]]:
        """The readable records before the unreadable one in `tp`; skips that one."""
        readable: list[ConsumerRecord[bytes, bytes]] = []
        self.consumer.seek(tp, self.next_offsets[tp])
        while True:
            try:
                batch = await self.consumer.getmany(tp, timeout_ms=500, max_records=1)
            except Exception as exc:
                if isinstance(exc, KafkaError):
                    raise
                offset = self.next_offsets[tp]
                self.on_unreadable(tp, offset, exc)
                self.next_offsets[tp] = offset + 1
                self.consumer.seek(tp, offset + 1)
                return readable
            records = batch.get(tp, [])
            if not records:
                return readable
            readable.extend(records)
            self.next_offsets[tp] = records[-1].offset + 1
