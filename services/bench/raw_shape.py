"""The shape of one tongban case, which the raw pipeline (services/bench/raw.py) repeats with no
framework: pure data and pure functions, no I/O (unit-tested in tests/unit/test_bench_rawcase.py).

What tongban does for one instant online case with electronic delivery (what `make bench`
submits), read off a stack on 7 Dec 2026 (two cases submitted, their records read back from the
four case topics, the inbox rows counted per consumer group):

    POST /v1/cases (intake)          one transaction: idempotency key, case, outbox row
      -> gov.case.submitted.v1       on case.intake.v1     published by intake
    routing-intake applies it        route row, outbox row
      -> gov.case.routed.v1          on case.routing.v1    published by routing
    approval-routing applies it      approval case row, two outbox rows
      -> gov.case.accepted.v1, gov.case.approved.v1       on case.approval.v1
    delivery-approval applies the approved one            result row, three outbox rows
      -> gov.case.result_issued.v1, .delivered.v1, .closed.v1  on case.delivery.v1

    7 events published (intake 1, routing 1, approval 2, delivery 3)
    10 applications, each recorded in its batch's transaction, an inbox row (consumer, event
    id) each but the timeline's, whose own row keyed by the event id is its record (main since
    the timeline became its own inbox):
      intake-timeline   7  every event of the case: a timeline row each, the case row updated
      routing-intake    1  the submitted event: the route
      approval-routing  1  the routed event
      delivery-approval 1  the approved event
    routing-xregion reads every event (7) and passes over those of cases of this region alone
      with one lookup of cases across regions per batch, outside any transaction, no inbox row
      (DESIGN.md §9; main since d52f699 and 595ee23: it wrote 7 inbox rows a case before)
    fetched and skipped (read, type looked at, no inbox row): approval-intake 1 (submitted),
      approval-delivery 3, delivery-approval 1 (accepted), delivery-intake 1 (submitted),
      delivery-routing 1 (routed), delivery-imported 3 (delivery's own events).

Issue 18 counted 9 applications (routing 1, approval 1, delivery 1, the timeline 6): the
timeline applies the submitted event too (7). An item whose result goes into the licence
library (1 of the demo catalog's 10 instant items, MKT-0104) adds gov.license.issued.v1 and
intake-licenses' inbox row: left out here, so the raw case is the common one of 7 events and
10 applications. When tongban's path changes what it applies, CONSUMERS below follows it: the
limit is the same case with no framework, not a different one.

The raw pipeline runs one consumer group per process over the topics its tongban counterpart
reads (the lean form issue 18 asks of tongban: one consumer per service), so a record two of a
service's groups read is fetched once there (routing's submitted event), and a skipped record
is skipped by its `ce_type` header alone, its body never decoded.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

INTAKE, ROUTING, APPROVAL, DELIVERY = "intake", "routing", "approval", "delivery"
PROCESSES = (INTAKE, ROUTING, APPROVAL, DELIVERY)
TOPIC_ROLES = PROCESSES  # tongban's case.<role>.v1; the raw pipeline's <prefix>.<role>

SUBMITTED = "gov.case.submitted.v1"
ROUTED = "gov.case.routed.v1"
ACCEPTED = "gov.case.accepted.v1"
APPROVED = "gov.case.approved.v1"
RESULT_ISSUED = "gov.case.result_issued.v1"
DELIVERED = "gov.case.delivered.v1"
CLOSED = "gov.case.closed.v1"


@dataclass(frozen=True)
class EventKind:
    """One event of the case: its type, topic, publisher and place in the case's story."""

    type: str
    topic: str  # topic role
    publisher: str  # process
    step: int  # order of the case's story: intake keeps the status of the latest step
    status: str  # the case's status (intake's view) once this event is applied


EVENTS = (
    EventKind(SUBMITTED, INTAKE, INTAKE, 0, "submitted"),
    EventKind(ROUTED, ROUTING, ROUTING, 1, "routed"),
    EventKind(ACCEPTED, APPROVAL, APPROVAL, 2, "accepted"),
    EventKind(APPROVED, APPROVAL, APPROVAL, 3, "approved"),
    EventKind(RESULT_ISSUED, DELIVERY, DELIVERY, 4, "result_issued"),
    EventKind(DELIVERED, DELIVERY, DELIVERY, 5, "delivered"),
    EventKind(CLOSED, DELIVERY, DELIVERY, 6, "closed"),
)
EVENT_KINDS = {e.type: e for e in EVENTS}
ALL_TYPES = frozenset(EVENT_KINDS)


@dataclass(frozen=True)
class Consumer:
    """One of tongban's consumer groups on this path: the types it applies (an inbox row each),
    the state table an applied event writes a row to, and what it publishes in reply."""

    name: str  # the inbox's `consumer`
    process: str
    topics: tuple[str, ...]
    applies: frozenset[str]
    state_table: str | None = None
    replies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Reads its batch's cases across regions once, outside any transaction, before applying.
    looks_up_partners: bool = False
    # Its state table's row, keyed by the event id, is its record of what it applied: no
    # inbox row (intake's timeline).
    own_inbox: bool = False


CONSUMERS = (
    Consumer("intake-timeline", INTAKE, TOPIC_ROLES, ALL_TYPES, "intake_timeline", own_inbox=True),
    Consumer(
        "routing-intake",
        ROUTING,
        (INTAKE,),
        frozenset({SUBMITTED}),
        "routing_routes",
        {SUBMITTED: (ROUTED,)},
    ),
    # None of the path's cases is across regions: every event passed over after the lookup.
    Consumer("routing-xregion", ROUTING, TOPIC_ROLES, frozenset(), looks_up_partners=True),
    Consumer(
        "approval-routing",
        APPROVAL,
        (ROUTING,),
        frozenset({ROUTED}),
        "approval_cases",
        {ROUTED: (ACCEPTED, APPROVED)},
    ),
    Consumer("approval-intake", APPROVAL, (INTAKE,), frozenset()),  # withdrawn, supplemented
    Consumer("approval-delivery", APPROVAL, (DELIVERY,), frozenset()),  # rated
    Consumer(
        "delivery-approval",
        DELIVERY,
        (APPROVAL,),
        frozenset({APPROVED}),
        "delivery_results",
        {APPROVED: (RESULT_ISSUED, DELIVERED, CLOSED)},
    ),
    Consumer("delivery-intake", DELIVERY, (INTAKE,), frozenset()),  # cases from partners
    Consumer("delivery-routing", DELIVERY, (ROUTING,), frozenset()),  # cases to partners
    Consumer("delivery-imported", DELIVERY, (DELIVERY,), frozenset()),  # partners' pickups
)
# The submission's own rows, written by intake's HTTP endpoint in one transaction.
SUBMISSION_TABLES = ("intake_idempotency_keys", "intake_cases")


def topics_read(process: str) -> tuple[str, ...]:
    """The topic roles the process's one consumer reads: every topic a group of its
    tongban counterpart reads, in topic order."""
    wanted = {t for c in CONSUMERS if c.process == process for t in c.topics}
    return tuple(t for t in TOPIC_ROLES if t in wanted)


def looks_up_partners(process: str) -> bool:
    """Whether the process reads each batch's cases across regions (routing-xregion)."""
    return any(c.looks_up_partners for c in CONSUMERS if c.process == process)


def own_inboxes(process: str) -> frozenset[str]:
    """The process's consumers that write no inbox row (`Consumer.own_inbox`)."""
    return frozenset(c.name for c in CONSUMERS if c.process == process and c.own_inbox)


def appliers(process: str) -> dict[str, tuple[str, ...]]:
    """Event type -> the process's consumers that apply it (each writes its inbox row);
    a type not named is fetched and skipped."""
    found: dict[str, tuple[str, ...]] = {}
    for consumer in CONSUMERS:
        if consumer.process != process:
            continue
        for type_ in sorted(consumer.applies):
            found[type_] = (*found.get(type_, ()), consumer.name)
    return found


@dataclass(frozen=True)
class CaseShape:
    """Per case: what each process publishes, applies and skips, and the state rows left."""

    published: dict[str, int]
    applied: dict[str, int]
    inbox_rows: dict[str, int]
    skipped: dict[str, int]
    state_rows: dict[str, int]

    @property
    def events(self) -> int:
        return sum(self.published.values())

    @property
    def applications(self) -> int:
        return sum(self.applied.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "applications": self.applications,
            "published": self.published,
            "applied": self.applied,
            "inbox_rows": self.inbox_rows,
            "skipped": self.skipped,
            "state_rows": self.state_rows,
        }


def case_shape() -> CaseShape:
    """The shape of one case, from EVENTS and CONSUMERS."""
    published = {p: sum(1 for e in EVENTS if e.publisher == p) for p in PROCESSES}
    applied = {p: sum(len(c.applies) for c in CONSUMERS if c.process == p) for p in PROCESSES}
    inbox = {
        p: sum(len(c.applies) for c in CONSUMERS if c.process == p and not c.own_inbox)
        for p in PROCESSES
    }
    skipped = {}
    for process in PROCESSES:
        read = topics_read(process)
        applying = appliers(process)
        skipped[process] = sum(1 for e in EVENTS if e.topic in read and e.type not in applying)
    state = dict.fromkeys(SUBMISSION_TABLES, 1)
    for consumer in CONSUMERS:
        if consumer.state_table is not None:
            state[consumer.state_table] = state.get(consumer.state_table, 0) + len(consumer.applies)
    return CaseShape(published, applied, inbox, skipped, state)


# -- the records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """An event to publish: an outbox row until the relay has sent it."""

    topic: str  # role
    type: str
    event_id: str
    case_id: str
    time: str  # RFC 3339, as `ce_time`
    traceparent: str
    handled_by: str | None
    value: bytes


def source_of(type_: str) -> str:
    return f"/tongban/{EVENT_KINDS[type_].publisher}"


def headers(event: Outgoing) -> list[tuple[str, bytes]]:
    """The record headers tongban's relay sends (CloudEvents binary mode, W3C trace context)."""
    found = [
        ("ce_id", event.event_id),
        ("ce_source", source_of(event.type)),
        ("ce_type", event.type),
        ("ce_subject", event.case_id),
        ("ce_time", event.time),
        ("content-type", "application/json"),
    ]
    if event.handled_by is not None:
        found.append(("ce_handledby", event.handled_by))
    found += [
        ("ce_traceparent", event.traceparent),
        ("ce_specversion", "1.0"),
        ("traceparent", event.traceparent),
    ]
    return [(k, v.encode()) for k, v in found]


def header(pairs: Iterable[tuple[str, bytes]], name: str) -> str | None:
    for key, value in pairs:
        if key == name:
            return value.decode()
    return None


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def new_traceparent() -> str:
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


def child_traceparent(parent: str) -> str:
    """The same trace, a new span: as a handler's published events continue its record's."""
    trace = parent.split("-")[1] if parent.count("-") == 3 else uuid.uuid4().hex
    return f"00-{trace}-{uuid.uuid4().hex[:16]}-01"


def department_of(item_code: str) -> str:
    """The owner department of an item (MKT-0104 -> YZ-MKT), as routing's route names it."""
    return f"YZ-{item_code.split('-')[0]}"


def dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def submitted_value(case_id: str, submitted_at: str, body: bytes) -> bytes:
    """gov.case.submitted.v1: the application as the applicant sent it (already checked to
    be a JSON object), spliced in rather than encoded again."""
    head = dumps(
        {
            "origin": None,
            "case_id": case_id,
            "handover": None,
            "bundle_id": None,
            "bundle_code": None,
            "submitted_at": submitted_at,
        }
    )
    return head[:-1] + b',"application":' + body + b"}"


def _item(code: str) -> dict[str, Any]:
    return {
        "code": code,
        "name": "个体工商户设立登记",
        "instant": True,
        "e_license": True,
        "defer_days": 5,
        "result_kind": "licence",
        "verify_days": 20,
        "license_type": None,
        "time_limit_days": 0,
    }


def route_for(submitted: dict[str, Any], *, now: datetime) -> dict[str, Any]:
    """routing's route of a submitted case: an online item, decided by its owner department
    (the fields of tongban's route, about 1 KB)."""
    application = submitted["application"]
    code = str(application.get("item_code", ""))
    department = department_of(code)
    office = application.get("office_code")
    division = (application.get("applicant") or {}).get("division_code")
    return {
        "path": "online",
        "rule": "R4-online",
        "level": "municipal",
        "inputs": {
            "owner": department,
            "channel": application.get("channel"),
            "item_code": code,
            "item_mode": "online",
            "owner_line": "market",
            "delegated_to": None,
            "effective_to": None,
            "submitted_on": now.date().isoformat(),
            "intake_office": office,
            "item_category": "enterprise",
            "effective_from": "2024-01-01",
            "catalog_version": "1",
            "applicant_street": division,
            "applicant_category": (application.get("applicant") or {}).get("category"),
            "applicant_district": division[:4] if isinstance(division, str) else None,
            "applicant_division": division,
            "intake_office_kind": "street_center" if office else "online",
            "intake_office_district": office[:4] if isinstance(office, str) else None,
        },
        "instant": True,
        "same_city": False,
        "handled_by": department,
        "explanation": (
            f"全程网办：由事项主管部门 云州市市场监督管理局（{department}） 在线办理，由 "
            f"{office or '网上办事大厅'} 帮办 / Fully online: decided by the owner department "
            f"{department}, assisted at {office or 'the online hall'}"
        ),
        "intake_office": office,
        "catalog_version": 1,
        "time_limit_days": 0,
        "entrusted_receiver": None,
    }


def routed_reply(
    submitted: dict[str, Any], route: dict[str, Any], *, traceparent: str, now: datetime
) -> Outgoing:
    """gov.case.routed.v1 for a submitted case and its route, with the application (about
    2 KB, as tongban's)."""
    application = submitted["application"]
    code = str(application.get("item_code", ""))
    department = str(route["handled_by"])
    case_id = str(submitted["case_id"])
    value = dumps(
        {
            "item": _item(code),
            "route": route,
            "case_id": case_id,
            "handover": None,
            "bundle_id": None,
            "application": application,
            "bundle_code": None,
            "submitted_at": submitted.get("submitted_at"),
        }
    )
    return Outgoing(
        ROUTING, ROUTED, str(uuid.uuid4()), case_id, rfc3339(now), traceparent, department, value
    )


def approval_replies(routed: dict[str, Any], *, traceparent: str, now: datetime) -> list[Outgoing]:
    """approval's reply to a routed instant case: accepted, then approved at once."""
    case_id = str(routed["case_id"])
    department = str(routed["route"]["handled_by"])
    application = routed["application"]
    applicant = application.get("applicant") or {}
    at = rfc3339(now)
    accepted = dumps(
        {
            "case_id": case_id,
            "deadline": now.date().isoformat(),
            "bundle_id": None,
            "department": department,
            "accepted_at": at,
            "deferred_due": None,
            "time_limit_days": 0,
        }
    )
    approved = dumps(
        {
            "item": routed["item"],
            "level": "municipal",
            "reason": None,
            "case_id": case_id,
            "bundle_id": None,
            "decided_at": at,
            "department": department,
            "intake_office": application.get("office_code"),
            "applicant_name": applicant.get("name"),
            "delivery_method": (application.get("delivery") or {}).get("method"),
            "delivery_address": None,
            "applicant_id_number": applicant.get("id_number"),
        }
    )
    return [
        Outgoing(APPROVAL, t, str(uuid.uuid4()), case_id, at, traceparent, department, v)
        for t, v in ((ACCEPTED, accepted), (APPROVED, approved))
    ]


def delivery_replies(
    approved: dict[str, Any], *, traceparent: str, now: datetime
) -> list[Outgoing]:
    """delivery's reply to an approval with electronic delivery: the e-licence issued,
    delivered and the case closed."""
    case_id = str(approved["case_id"])
    at = rfc3339(now)
    code = str(approved["item"]["code"])
    license_id = f"EL-{code}-{now:%Y%m%d}-{uuid.uuid4().hex[:16].upper()}"
    result = {
        "kind": "licence",
        "title": f"{approved['item']['name']}（电子证照）",
        "sha256": hashlib.sha256(f"{license_id}:{case_id}".encode()).hexdigest(),
        "license_id": license_id,
    }
    values = {
        RESULT_ISSUED: {"result": result, "case_id": case_id, "bundle_id": None, "issued_at": at},
        DELIVERED: {
            "method": "electronic",
            "case_id": case_id,
            "bundle_id": None,
            "office_code": None,
            "delivered_at": at,
            "tracking_number": None,
        },
        CLOSED: {"case_id": case_id, "outcome": "approved", "bundle_id": None, "closed_at": at},
    }
    return [
        Outgoing(DELIVERY, t, str(uuid.uuid4()), case_id, at, traceparent, None, dumps(v))
        for t, v in values.items()
    ]


def result_of(replies: Sequence[Outgoing]) -> dict[str, Any]:
    """The issued result among delivery's replies (its state row)."""
    issued = next(r for r in replies if r.type == RESULT_ISSUED)
    result: dict[str, Any] = json.loads(issued.value)["result"]
    return result


# -- intake's side ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """An RFC 9457 answer of the raw endpoint, with a stable code as tongban's."""

    status: int
    code: str
    title: str

    def body(self) -> bytes:
        return dumps(
            {
                "type": f"https://tongban.example/problems/{self.code}",
                "title": self.title,
                "status": self.status,
                "code": self.code,
                "errors": [],
            }
        )


UNAUTHENTICATED = Problem(401, "unauthenticated", "A bearer token is required")
NOT_FOUND = Problem(404, "not_found", "No such resource")
METHOD_NOT_ALLOWED = Problem(405, "method_not_allowed", "Method not allowed")
INVALID_BODY = Problem(422, "validation_failed", "The application is not valid")
KEY_TOO_LONG = Problem(400, "invalid_idempotency_key", "The Idempotency-Key is too long")
REQUIRED_FIELDS = ("item_code", "applicant", "delivery", "materials")


@dataclass(frozen=True)
class Submission:
    idempotency_key: str | None
    item_code: str
    body: bytes


def check_submission(headers: Mapping[bytes, bytes], body: bytes) -> Submission | Problem:
    """What intake checks before its transaction: a bearer token present (not verified: the
    raw limit leaves out the policy work), an Idempotency-Key of at most 256 characters if
    any, and a JSON object naming the item, the applicant, the delivery and the materials."""
    auth = headers.get(b"authorization", b"")
    if not auth.startswith(b"Bearer ") or not auth[7:].strip():
        return UNAUTHENTICATED
    key = headers.get(b"idempotency-key")
    if key is not None and len(key) > 256:
        return KEY_TOO_LONG
    try:
        data = json.loads(body)
    except ValueError:
        return INVALID_BODY
    if not isinstance(data, dict) or any(f not in data for f in REQUIRED_FIELDS):
        return INVALID_BODY
    if not isinstance(data["item_code"], str):
        return INVALID_BODY
    return Submission(
        key.decode("latin-1") if key is not None else None, data["item_code"], body.strip()
    )


def new_case_id(now: datetime) -> str:
    """A case id shaped as tongban's (YZ-20261207-965D4C41FA)."""
    return f"YZ-{now:%Y%m%d}-{uuid.uuid4().hex[:10].upper()}"


def latest_steps(events: Iterable[tuple[str, str]]) -> dict[str, tuple[int, str]]:
    """(case id, event type) in offset order -> per case the latest step and its status:
    intake updates each case once per batch, to where its events took it."""
    latest: dict[str, tuple[int, str]] = {}
    for case_id, type_ in events:
        kind = EVENT_KINDS.get(type_)
        if kind is None:
            continue
        if case_id not in latest or kind.step > latest[case_id][0]:
            latest[case_id] = (kind.step, kind.status)
    return latest


def first_of_each(keys: Iterable[str]) -> list[int]:
    """Positions of the first occurrence of each key (a record redelivered within one batch
    is applied once)."""
    seen: set[str] = set()
    positions = []
    for n, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            positions.append(n)
    return positions
