"""The live stream: Kafka records in, masked and filtered stream lines out (Server-Sent Events).
Records from this region's case topics, and what partner regions address to it (§9).

One `LiveStream` per open page; what the console learns about cases (`CaseMemory`) and what
intake answered about a case (`CaseLookup`) are shared by all of them.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from contracts.events import BUNDLE_TOPIC
from services.common.envelope import Envelope, EnvelopeError
from services.common.logs import get_logger, mask_text
from services.console.events import stream_item
from services.console.kafka_views import header_text
from services.console.links import is_partner_xregion
from services.operators.event_facts import (
    CaseMemory,
    EventFilter,
    Facts,
    facts_of,
    facts_of_case_view,
    facts_of_partner_record,
    mask_event_data,
)
from services.policy.catalog_index import CatalogIndex

log = get_logger(__name__)

FetchCase = Callable[[str], Awaitable[Mapping[str, Any] | None]]


class CaseLookup:
    """What intake knows of a case (its operator view), for stream filters that need where a
    case was taken or is handled when the stream started after the events saying so.
    Answers are kept `ttl_s` seconds (misses too), so one case is asked about rarely."""

    def __init__(self, fetch: FetchCase, *, ttl_s: float = 5.0, max_cases: int = 10_000) -> None:
        self.fetch = fetch
        self.ttl_s = ttl_s
        self.max_cases = max_cases
        self._answers: OrderedDict[str, tuple[float, Facts | None]] = OrderedDict()

    async def __call__(self, case_id: str) -> Facts | None:
        hit = self._answers.get(case_id)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        try:
            view = await self.fetch(case_id)
        except Exception as exc:  # intake down: the event simply does not match (yet)
            log.warning("case lookup failed", case_id=case_id, error=repr(exc))
            view = None
        facts = facts_of_case_view(view) if view is not None else None
        self._answers.pop(case_id, None)
        self._answers[case_id] = (time.monotonic(), facts)
        while len(self._answers) > self.max_cases:
            self._answers.popitem(last=False)
        return facts


class LiveStream:
    """Turns records into stream lines for one page's filters."""

    def __init__(
        self,
        filters: EventFilter,
        *,
        facts: CaseMemory,
        lookup: Callable[[str], Awaitable[Facts | None]],
        catalog: Callable[[], CatalogIndex | None],
        partner_names: Callable[[], Mapping[str, str]] = dict,
        own_city: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.filters = filters
        self.facts = facts
        self.lookup = lookup
        self.catalog = catalog
        self.partner_names = partner_names  # city code -> name of the partner regions (§9)
        self.own_city = own_city  # this region's city code, once its catalog is read

    async def line(self, record: Any) -> dict[str, Any] | None:
        """The stream line of one record, or None when the filters leave it out. Of what a
        partner region sent here (`<alias>.xregion.out.v1`, §9), only the records addressed to
        this region (`ce_tocity`) are shown: a partner's link to a third region carries that
        region's cases."""
        headers = header_text(record.headers)
        from_partner = is_partner_xregion(record.topic)
        own = self.own_city()
        if from_partner and (own is None or headers.get("ce_tocity") != own):
            return None
        catalog = self.catalog()
        try:
            envelope = Envelope.from_record(record.key, record.value, list(record.headers or ()))
        except EnvelopeError as exc:
            case_id = record.key.decode("utf-8", errors="replace") if record.key else None
            known = self.facts.get(case_id) if case_id else None
            if not self.filters.matches(
                case_id=case_id, event_type=None, facts=known, catalog=catalog
            ):
                return None
            return stream_item(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                event_id=None,
                event_type=None,
                time=None,
                source=headers.get("dlq_source"),
                case_id=mask_text(case_id) if case_id else None,
                handledby=None,
                data=None,
                facts=known,
                catalog=catalog,
                headers=_dlq_headers(headers),
                error=mask_text(f"unreadable record: {exc}"),
            )
        case_id = envelope.subject
        if from_partner:
            said = facts_of_partner_record(envelope.type, envelope.fromcity)
        else:
            said = facts_of(envelope.data, envelope.handledby, envelope.fromcity)
        facts = self.facts.learn(case_id, said)
        # A bundle's own event is about the bundle: intake has no case of that id to ask about.
        if record.topic != BUNDLE_TOPIC and self.filters.missing_facts(facts):
            looked_up = await self.lookup(case_id)
            if looked_up is not None:
                facts = self.facts.learn(case_id, looked_up)
        if not self.filters.matches(
            case_id=case_id, event_type=envelope.type, facts=facts, catalog=catalog
        ):
            return None
        return stream_item(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            event_id=envelope.id,
            event_type=envelope.type,
            time=envelope.time,
            # as intake's timeline names a partner's step: `<city>:<ce_source>`
            source=f"{envelope.fromcity}:{envelope.source}" if from_partner else envelope.source,
            case_id=case_id,
            handledby=envelope.handledby,
            data=mask_event_data(envelope.data),
            facts=facts,
            catalog=catalog,
            headers=_dlq_headers(headers),
            partner_names=self.partner_names(),
        )


def _dlq_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    return [(k, mask_text(v)) for k, v in headers.items() if k.startswith("dlq_")]


def sse(data: Mapping[str, Any], *, event: str | None = None, event_id: str | None = None) -> str:
    """One Server-Sent Events message (JSON has no raw newlines, so one `data:` line)."""
    head = ""
    if event:
        head += f"event: {event}\n"
    if event_id:
        head += f"id: {event_id}\n"
    return f"{head}data: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"
