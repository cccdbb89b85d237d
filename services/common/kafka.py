"""Kafka clients configured the way tongban's guarantees need them, and topic provisioning."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from contracts.events import CASE_TOPICS, CATALOG_TOPIC, DLQ_TOPIC
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
    ]


def make_producer(settings: CommonSettings, *, client_id: str | None = None) -> AIOKafkaProducer:
    # aiokafka defaults to acks=1 and no idempotence; both are needed so a retried send is
    # neither lost nor duplicated within one producer session.
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
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
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group_id,
        client_id=client_id or settings.service,
        enable_auto_commit=False,  # offsets move only after the database transaction commits
        auto_offset_reset="earliest",  # a new group starts from the beginning: nothing skipped
        isolation_level="read_committed",
        max_poll_records=settings.consumer_max_records,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
        request_timeout_ms=settings.kafka_request_timeout_ms,
    )


async def ensure_topics(settings: CommonSettings, topics: list[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Idempotent."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        request_timeout_ms=settings.kafka_request_timeout_ms,
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics if t.name not in existing]
        created: list[str] = []
        for spec in wanted:
            config = {"min.insync.replicas": str(settings.kafka_min_insync), **spec.config}
            new_topic = NewTopic(
                name=spec.name,
                num_partitions=spec.partitions or settings.kafka_partitions,
                replication_factor=settings.kafka_replication,
                topic_configs=config,
            )
            try:
                await admin.create_topics([new_topic])
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass  # another process won the race; that is fine
        if created:
            log.info("topics created", topics=created)
        return created
    finally:
        await admin.close()
