"""The console's bundle board (一件事, DESIGN.md §8): one row per bundle, opening into its
members.

What it shows, and from where:
- every bundle on `bundle.v1` (read from the beginning): its code, name, window, lead, the
  members created (with their items) and the bundle's own steps (delivered, closed, withdrawn,
  rated, SLA warning, overdue);
- each member's latest status from the case events that name the bundle (`bundle_id`), read
  live from the case topics once the console runs; before that, the status the bundle's
  submission gave it. Opening a row asks intake for the bundle (`GET /v1/bundles/{id}`): the
  members' routes and current statuses, the deadline and the one timeline.

`BundleBoard` is pure (events in, rows out); `BundleFollower` feeds it from Kafka without a
consumer group, so watching moves nobody's offsets. The board keeps the newest `capacity`
bundles.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from contracts.events import (
    BUNDLE_TOPIC,
    CASE_TOPICS,
    BundleClosed,
    BundleDelivered,
    BundleOverdue,
    BundleRated,
    BundleSlaWarning,
    BundleSubmitted,
    BundleWithdrawn,
)
from services.common.envelope import Envelope, EnvelopeError
from services.common.kafka import ReadableFetch, client_options
from services.common.logs import get_logger
from services.common.settings import CommonSettings
from services.operators.event_facts import status_after

log = get_logger(__name__)

# A member in one of these has its result or has ended: the bundle waits for it no more.
DONE = frozenset(
    {
        "approved",
        "denied",
        "result_issued",
        "delivered",
        "closed",
        "withdrawn",
        "terminated",
        "revoked",
    }
)
# A later status never gives way to an earlier one (topics are not ordered among themselves).
_FINAL = frozenset({"closed", "withdrawn", "terminated", "revoked"})


@dataclass
class BundleMemberRow:
    case_id: str
    item_code: str
    status: str
    after: list[str] = field(default_factory=list)


@dataclass
class BundleRow:
    bundle_id: str
    bundle_code: str = ""
    bundle_name: str = ""
    status: str = "in_progress"
    lead: str | None = None
    office_code: str | None = None
    channel: str | None = None
    time_limit_days: int | None = None
    submitted_at: str | None = None
    updated_at: str | None = None
    members: dict[str, BundleMemberRow] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    rating: str | None = None
    alert: str | None = None  # "sla_warning" | "overdue"

    def view(self) -> dict[str, Any]:
        members = list(self.members.values())
        return {
            "bundle_id": self.bundle_id,
            "bundle_code": self.bundle_code,
            "bundle_name": self.bundle_name,
            "status": self.status,
            "lead": self.lead,
            "office_code": self.office_code,
            "channel": self.channel,
            "time_limit_days": self.time_limit_days,
            "submitted_at": self.submitted_at,
            "updated_at": self.updated_at,
            "members": [asdict(m) for m in members],
            "members_done": sum(m.status in DONE for m in members),
            "excluded": self.excluded,
            "rating": self.rating,
            "alert": self.alert,
        }


class BundleBoard:
    """Bundles as the console knows them, newest submission first."""

    def __init__(self, capacity: int = 2000) -> None:
        self.capacity = capacity
        self._rows: OrderedDict[str, BundleRow] = OrderedDict()
        self._member_of: dict[str, str] = {}  # case id -> bundle id

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, limit: int = 200) -> list[dict[str, Any]]:
        newest = list(reversed(self._rows.values()))[:limit]
        return [row.view() for row in newest]

    def get(self, bundle_id: str) -> BundleRow | None:
        return self._rows.get(bundle_id)

    def _row(self, bundle_id: str) -> BundleRow:
        row = self._rows.get(bundle_id)
        if row is None:
            row = self._rows[bundle_id] = BundleRow(bundle_id)
            while len(self._rows) > self.capacity:
                _, gone = self._rows.popitem(last=False)
                for case_id in gone.members:
                    self._member_of.pop(case_id, None)
        return row

    def apply(self, event_type: str, data: Mapping[str, Any], time: datetime | None) -> None:
        """One event of bundle.v1, or a case event (of a member when it names `bundle_id`)."""
        bundle_id = data.get("bundle_id")
        if not isinstance(bundle_id, str) or not bundle_id:
            return
        when = time.isoformat() if time else None
        if event_type.startswith("gov.bundle."):
            self._bundle_event(self._row(bundle_id), event_type, data, when)
            return
        case_id = data.get("case_id")
        status = status_after(event_type)
        if not isinstance(case_id, str) or status is None:
            return
        row = self._row(bundle_id)
        member = row.members.get(case_id)
        if member is None:  # the member's event came before the bundle's submission
            item = data.get("application", {}).get("item_code") if "application" in data else ""
            member = row.members[case_id] = BundleMemberRow(case_id, str(item or ""), status)
            self._member_of[case_id] = bundle_id
        elif member.status not in _FINAL:
            member.status = status
        row.updated_at = when or row.updated_at

    def _bundle_event(
        self, row: BundleRow, event_type: str, data: Mapping[str, Any], when: str | None
    ) -> None:
        row.updated_at = when or row.updated_at
        if event_type == BundleSubmitted.TYPE:
            row.bundle_code = str(data.get("bundle_code") or "")
            row.bundle_name = str(data.get("bundle_name") or "")
            row.lead = data.get("lead")
            row.office_code = data.get("office_code")
            row.channel = data.get("channel")
            row.time_limit_days = data.get("time_limit_days")
            row.submitted_at = str(data.get("submitted_at") or when or "")
            row.excluded = [str(x) for x in data.get("excluded") or ()]
            for ref in data.get("members") or ():
                case_id = str(ref.get("case_id"))
                known = row.members.get(case_id)
                row.members[case_id] = BundleMemberRow(
                    case_id,
                    str(ref.get("item_code") or ""),
                    # a member's own event seen first knows better than the submission
                    known.status if known is not None else str(ref.get("status") or ""),
                    [str(a) for a in ref.get("after") or ()],
                )
                self._member_of[case_id] = row.bundle_id
        elif event_type == BundleWithdrawn.TYPE:
            for case_id in data.get("withdrawn_members") or ():
                if (member := row.members.get(str(case_id))) is not None:
                    member.status = "withdrawn"
            if (
                row.status == "in_progress"
                and row.members
                and all(m.status == "withdrawn" for m in row.members.values())
            ):
                row.status = "withdrawn"
        elif event_type == BundleDelivered.TYPE:
            # Each member's line: its result delivered now, or how it ended before.
            for result in data.get("results") or ():
                member = row.members.get(str(result.get("case_id")))
                if member is not None and member.status not in _FINAL:
                    member.status = "delivered" if result.get("result") else result["outcome"]
            if row.status != "closed":
                row.status = "delivered"
        elif event_type == BundleClosed.TYPE:
            for case_id in data.get("members") or ():
                if (member := row.members.get(str(case_id))) is not None:
                    member.status = "closed"
            row.status = "closed"
        elif event_type == BundleRated.TYPE:
            row.rating = data.get("rating")
        elif event_type == BundleOverdue.TYPE:
            row.alert = "overdue"
        elif event_type == BundleSlaWarning.TYPE and row.alert != "overdue":
            row.alert = "sla_warning"


class BundleFollower:
    """Feeds a `BundleBoard`: bundle.v1 from its beginning, the case topics from now on.
    `partitions` lists the partitions of those topics that exist (the admin's metadata)."""

    def __init__(
        self,
        settings: CommonSettings,
        board: BundleBoard,
        partitions: Callable[[tuple[str, ...]], Awaitable[list[TopicPartition]]],
    ) -> None:
        self.settings = settings
        self.board = board
        self.partitions = partitions
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        bundle_parts = await self.partitions((BUNDLE_TOPIC,))
        if not bundle_parts:
            raise LookupError(f"{BUNDLE_TOPIC} does not exist yet")
        case_parts = await self.partitions(CASE_TOPICS)
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            client_id="tongban-console-bundles",
            request_timeout_ms=self.settings.kafka_request_timeout_ms,
        )
        await consumer.start()
        try:
            consumer.assign(bundle_parts + case_parts)
            await consumer.seek_to_beginning(*bundle_parts)
            if case_parts:
                await consumer.seek_to_end(*case_parts)
            fetch = ReadableFetch(consumer)
            while not self._stop.is_set():
                batch = await fetch.getmany(timeout_ms=500, max_records=1000)
                records = sorted(
                    (r for found in batch.values() for r in found), key=lambda r: r.timestamp
                )
                for record in records:
                    self._apply(record)
        finally:
            await consumer.stop()

    def _apply(self, record: Any) -> None:
        try:
            envelope = Envelope.from_record(record.key, record.value, list(record.headers or ()))
        except EnvelopeError:
            return  # a poison record: the dead-letter view shows those
        if isinstance(envelope.data, Mapping):
            self.board.apply(envelope.type, envelope.data, envelope.time)
