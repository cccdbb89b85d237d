"""Settings shared by every tongban process, read from `TONGBAN_*` environment variables.

Each service subclasses `CommonSettings` to add its own knobs, so one place defines the names
operators set in production (`TONGBAN_KAFKA_BOOTSTRAP`, `TONGBAN_DATABASE_URL`, ...).
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_DATABASE_URL = "postgresql+asyncpg://tongban:tongban@127.0.0.1:5432/tongban"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TONGBAN_", extra="ignore")

    # Which service this process is; names its schema, consumer group and event source.
    service: str = "tongban"
    environment: str = Field("dev", description="dev | test | production")
    log_level: str = "INFO"
    log_json: bool = True

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    http_keep_alive_s: int = Field(75, ge=1)

    kafka_bootstrap: str = "localhost:9092"
    # Topic provisioning: production clusters use RF 3 / min ISR 2; one dev broker gets 1 / 1.
    kafka_partitions: int = Field(12, ge=1)
    kafka_replication: int = Field(1, ge=1)
    kafka_min_insync: int = Field(1, ge=1)
    kafka_request_timeout_ms: int = 30_000
    # How stale a client's view of the topics may get: a consumer notices a topic (or, for a
    # pattern subscription, a partner's mirrored topic, DESIGN.md §9) created after it joined
    # within this time. The client default (5 minutes) left a group idle that long.
    kafka_metadata_max_age_ms: int = Field(30_000, ge=1000)
    # A secured cluster (Strimzi listeners with SCRAM or TLS): PLAINTEXT | SSL | SASL_SSL |
    # SASL_PLAINTEXT, with the SASL user of the service (deploy/kubernetes/kafka-users.yaml).
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None  # e.g. SCRAM-SHA-512
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None

    # The role the service works as: its run-time role (tongban_<service>), which owns
    # nothing. TONGBAN_MIGRATION_DATABASE_URL, when given, is the schema owner's
    # (tongban_owner): start-up migrates with it and grants the run-time role its tables.
    # Without it a service only checks its schema is current, and migrates with
    # `database_url` only when it is not (a single-role setup: that role owns the schema).
    database_url: str = DEV_DATABASE_URL
    migration_database_url: str | None = None
    db_pool_size: int = Field(10, ge=1)
    db_max_overflow: int = Field(10, ge=0)
    # A request waits at most this long for a pooled connection, then gets 503 + Retry-After.
    db_pool_timeout_s: float = Field(5.0, gt=0)

    # Consumer runner: batch shape, bounded retries for a failing handler, dead letters.
    consumer_max_records: int = Field(500, ge=1)
    # What one fetch may bring, in all and per partition. The client buffers a whole fetch
    # response until it is consumed; with aiokafka's defaults (50 MiB, 1 MiB a partition) a
    # consumer that fell behind held tens of MB of records at once, and the process kept that
    # memory after it caught up (intake's RSS grew by 60 MB in a soak). 1 MiB is about 500
    # events, one batch (`consumer_max_records`); a record bigger than either limit still comes,
    # alone (the broker always returns a partition's first batch).
    consumer_fetch_max_bytes: int = Field(1_048_576, ge=1024)
    consumer_partition_fetch_bytes: int = Field(262_144, ge=1024)
    # A consumer group fetches no more while this many records are being applied (each reader
    # takes one batch at a time: a consumer behind its topics only queued the rest in memory).
    consumer_max_records_in_flight: int = Field(1000, ge=1)
    # After a fetch that found records, a group waits this long for more before applying: a
    # reader's transaction then takes several events. 0 (the default) where every moment
    # counts: routing, approval and delivery are on the case's path.
    consumer_linger_ms: int = Field(0, ge=0)
    consumer_poll_ms: int = Field(200, ge=1)
    # Offsets are committed at most this often (and always before partitions move and at a
    # graceful stop). Every applied event is in the inbox, so a crash redelivers at most this
    # much, which the inbox skips; 0 commits after every batch.
    consumer_commit_interval_ms: int = Field(500, ge=0)
    consumer_handler_attempts: int = Field(3, ge=1)
    consumer_retry_backoff_s: float = Field(0.2, ge=0)
    consumer_retry_backoff_max_s: float = Field(5.0, ge=0)
    dlq_topic: str = "case.dlq.v1"
    # The largest dead letter written whole (key, value, headers, batch overhead). Keep it at
    # most the dead-letter topic's max.message.bytes (broker default 1 MiB); a bigger letter
    # keeps the head of its value and points at the original's topic/partition/offset.
    dlq_max_record_bytes: int = Field(1_048_576, ge=4096)

    # Inbox pruning (services/common/inbox.py): an inbox row only matters while a copy of its
    # event can still arrive: from the topic (its retention: 7 days, Kafka's default) or as
    # a replayed dead letter (case.dlq.v1 keeps them 30 days, deploy/kubernetes/topics.yaml).
    # Rows older than this go, in batches of `inbox_prune_batch` with a pause between them.
    inbox_retention_days: float = Field(30.0, gt=0)
    inbox_prune_interval_s: float = Field(600.0, gt=0)
    inbox_prune_batch: int = Field(1000, ge=1)
    inbox_prune_pause_s: float = Field(0.2, ge=0)

    # Outbox relay: NOTIFY wakes it; the poll is only a safety net.
    outbox_batch_size: int = Field(500, ge=1)
    outbox_poll_s: float = Field(1.0, gt=0)
    # After publishing all there was, the relay deletes those rows with its next read, when
    # the next NOTIFY comes, waiting at most this long: one round trip per event instead of
    # two at a few events a second. A crash meanwhile re-publishes them (the inbox dedupes).
    outbox_delete_delay_ms: int = Field(100, ge=0)

    # Fault injection for the fault suite only (tests/faults): this share of successful
    # database commits report a timeout, as if the answer to COMMIT was lost. Refused in
    # production.
    fault_ambiguous_commit_rate: float = Field(0.0, ge=0, le=1)

    # Dev and test only: every rule's clock runs this many seconds ahead (services/common/
    # clock.py), so end-to-end tests pass due dates without waiting days. Never negative: rows
    # already written (catalog versions' loaded_at, fired timers, accepted cases) would lie in
    # the future of a clock moved back, and a case submitted before every catalog version
    # would be routed by the oldest one. Refused in production.
    clock_offset_s: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _no_faults_in_production(self) -> CommonSettings:
        if self.fault_ambiguous_commit_rate > 0 and not self.is_dev:
            raise ValueError(
                "TONGBAN_FAULT_AMBIGUOUS_COMMIT_RATE is for the fault suite; "
                f"it must be 0 when TONGBAN_ENVIRONMENT={self.environment}"
            )
        return self

    @model_validator(mode="after")
    def _no_clock_shift_in_production(self) -> CommonSettings:
        if self.clock_offset_s and not self.is_dev:
            raise ValueError(
                "TONGBAN_CLOCK_OFFSET_S shifts every deadline and timer and is for dev and "
                f"test only; it must be 0 when TONGBAN_ENVIRONMENT={self.environment}"
            )
        return self

    @model_validator(mode="after")
    def _min_insync_fits(self) -> CommonSettings:
        if self.kafka_min_insync > self.kafka_replication:
            raise ValueError(
                "TONGBAN_KAFKA_MIN_INSYNC must not exceed TONGBAN_KAFKA_REPLICATION "
                f"({self.kafka_min_insync} > {self.kafka_replication})"
            )
        return self

    @property
    def is_dev(self) -> bool:
        return self.environment in ("dev", "test")

    @property
    def migration_url(self) -> str:
        """What migrations run with: the schema owner's URL when given, else the one URL."""
        return self.migration_database_url or self.database_url

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap.split(",") if s.strip()]
