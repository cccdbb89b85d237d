"""Prometheus metrics of the shared runtime, labelled by service (Prometheus naming rules)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter(
    "tongban_events_consumed_total",
    "Kafka records handled by a consumer, by outcome (processed, duplicate, dead_lettered)",
    ["service", "consumer", "topic", "outcome"],
)
EVENTS_PUBLISHED = Counter(
    "tongban_events_published_total",
    "Events the outbox relay published to Kafka",
    ["service", "topic"],
)
DEAD_LETTERS = Counter(
    "tongban_dead_letters_total",
    "Records sent to the dead-letter topic",
    ["service", "consumer", "topic"],
)
BATCH_SECONDS = Histogram(
    "tongban_consumer_batch_duration_seconds",
    "Time to apply one consumed batch in one database transaction",
    ["service", "consumer"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
OUTBOX_BACKLOG = Gauge(
    "tongban_outbox_backlog",
    "Unsent outbox rows seen by the relay at its last scan",
    ["service"],
)
DEAD_LETTERS_TRUNCATED = Counter(
    "tongban_dead_letters_truncated_total",
    "Dead letters too big for the dead-letter topic, written with the head of their value",
    ["service", "consumer", "topic"],
)
INBOX_PRUNED = Counter(
    "tongban_inbox_pruned_total",
    "Inbox rows deleted because they are older than TONGBAN_INBOX_RETENTION_DAYS",
    ["service"],
)
HANDLER_RETRIES = Counter(
    "tongban_handler_retries_total",
    "Retries of a failing event handler before success or dead letter",
    ["service", "consumer"],
)

CONSUMER_LAG = Gauge(
    "tongban_consumer_lag",
    "Records behind the partition's end after the consumer's last applied batch",
    ["service", "consumer", "topic", "partition"],
)
TASK_RESTARTS = Counter(
    "tongban_task_restarts_total",
    "Long-lived loops (consumers, relay, timers) restarted after an unforeseen crash",
    ["service", "task"],
)
RELAY_LEADER = Gauge(
    "tongban_outbox_relay_leader",
    "1 while this process's outbox relay holds its schema's lock and publishes, else 0",
    ["service"],
)

# HTTP, by route template (`/v1/cases/{case_id}`, never the path itself: case ids in labels
# would be personal data and unbounded), method and status; see `web.install_http_metrics`.
HTTP_LABELS = ["service", "method", "route", "status"]
HTTP_REQUESTS = Counter(
    "tongban_http_requests_total",
    "HTTP requests answered, by route template, method and status",
    HTTP_LABELS,
)
HTTP_SECONDS = Histogram(
    "tongban_http_request_duration_seconds",
    "Time from a request's arrival to its last response byte, by route template, method and "
    "status (streams count their whole life)",
    HTTP_LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
XREGION_REFUSED = Counter(
    "tongban_xregion_refused_total",
    "Cases forwarded by a partner region that this region did not adopt, by refusal code "
    "(DESIGN.md §9)",
    ["code"],
)
