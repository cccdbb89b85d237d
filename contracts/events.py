"""Event payloads of every topic (DESIGN.md §4): frozen models, past tense, version in the type.

Each payload class declares its CloudEvents `type` and topic once, with `@event`: the class
carries them (`CaseSubmitted.TYPE`, `.TOPIC`), and `EVENT_TYPES`, derived from the declarations,
maps each type to its topic and payload model; producers, consumers, the generated JSON Schemas
and the AsyncAPI document are all built from it. `ReplayRecord` is
the one record that is not an event: the operators' log of dead-letter replays.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts.common import (
    Application,
    CaseStatus,
    Channel,
    Code,
    Contract,
    CrossRegionOrigin,
    DeliveryMethod,
    Failure,
    Handover,
    ItemSnapshot,
    Level,
    Material,
    ResultDocument,
    Route,
    Text,
)

INTAKE_TOPIC = "case.intake.v1"
ROUTING_TOPIC = "case.routing.v1"
DECISIONS_TOPIC = "case.decisions.v1"
APPROVAL_TOPIC = "case.approval.v1"
DELIVERY_TOPIC = "case.delivery.v1"
DLQ_TOPIC = "case.dlq.v1"
DLQ_REPLAYS_TOPIC = "case.dlq.replays.v1"
CATALOG_TOPIC = "catalog.v1"
LICENSE_TOPIC = "license.v1"
BUNDLE_TOPIC = "bundle.v1"
# Across regions (DESIGN.md §9): what a region sends its partners. MirrorMaker 2 copies it to
# each partner as `<source alias>.xregion.out.v1` (and `catalog.v1` as `<alias>.catalog.v1`).
XREGION_TOPIC = "xregion.out.v1"
# The city code a record on xregion.out.v1 is addressed to (a CloudEvents extension): a
# region reads, from its partners' mirrored topics, exactly the records that name its own.
TO_CITY_HEADER = "ce_tocity"
# A case event relayed to a partner keeps its own type, id, source, subject and data; this
# header names the region that published it (its city code).
FROM_CITY_HEADER = "ce_fromcity"


@dataclass(frozen=True)
class EventType:
    type: str
    topic: str
    model: builtins.type[Event]
    producer: str
    summary: str

    @property
    def handledby(self) -> bool:
        """Its records carry `ce_handledby`, the department deciding the case: routing's
        `gov.case.routed.v1` (the department topics are filtered by it) and everything
        approval publishes about a case, which it does for that department."""
        return self.type == "gov.case.routed.v1" or self.producer == "approval"


class Event(Contract):
    """A payload that is an event: its class knows its CloudEvents `type` and its topic, set
    once by `@event`, so services emit and subscribe by class and never spell a type."""

    TYPE: ClassVar[str]
    TOPIC: ClassVar[str]


EVENT_TYPES: dict[str, EventType] = {}
E = TypeVar("E", bound=type[Event])


def event(type_: str, topic: str, producer: str, summary: str) -> Callable[[E], E]:
    """Declare a payload class the payload of event type `type_` on `topic`, in EVENT_TYPES."""

    def declare(model: E) -> E:
        if type_ in EVENT_TYPES or "TYPE" in model.__dict__:
            raise TypeError(f"{type_} ({model.__name__}) declared twice")
        model.TYPE, model.TOPIC = type_, topic
        EVENT_TYPES[type_] = EventType(type_, topic, model, producer, summary)
        return model

    return declare


class CaseEvent(Event):
    case_id: str
    bundle_id: str | None = Field(
        default=None,
        description="the bundle (一件事, DESIGN.md §8) the case is a member of: set by tongban's "
        "services on every event of a member; null for a single case",
    )


class BundleMemberEvent(CaseEvent):
    """An event that carries the application: a member names its bundle's code too, so
    routing checks the intake office against the bundle's window, not the item's alone."""

    bundle_code: str | None = Field(default=None, description="the bundle's catalog code")


# -- case.intake.v1 (intake) -------------------------------------------------------------------


@event(
    "gov.case.notified.v1",
    INTAKE_TOPIC,
    "intake",
    "One-time notification of missing materials at the counter",
)
class CaseNotified(BundleMemberEvent):
    """One-time notification (一次性告知): every missing material listed at once."""

    application: Application
    missing_materials: list[str]
    notified_at: AwareDatetime
    deferred_materials: list[str] = Field(
        default_factory=list, description="materials to bring after acceptance (容缺受理)"
    )


@event(
    "gov.case.submitted.v1",
    INTAKE_TOPIC,
    "intake",
    "Materials complete; the case goes to routing",
)
class CaseSubmitted(BundleMemberEvent):
    """The materials are complete: routing takes it from here."""

    application: Application
    submitted_at: AwareDatetime
    handover: Handover | None = Field(
        default=None, description="the intake office's signature (counter intake)"
    )
    origin: CrossRegionOrigin | None = Field(
        default=None,
        description="a case adopted from a partner region (DESIGN.md §9): where it was taken; "
        "`application.office_code` is then this region's municipal center",
    )


@event(
    "gov.case.supplemented.v1",
    INTAKE_TOPIC,
    "intake",
    "Materials answering a supplement request",
)
class CaseSupplemented(CaseEvent):
    """Materials answering a supplement request (at the counter or during review), or deferred
    materials (容缺受理) brought after acceptance: these alone answer no request."""

    materials: list[Material]
    supplemented_at: AwareDatetime


@event("gov.case.withdrawn.v1", INTAKE_TOPIC, "intake", "The applicant withdrew the case")
class CaseWithdrawn(CaseEvent):
    reason: str | None = None
    withdrawn_at: AwareDatetime


# -- case.routing.v1 (routing) -----------------------------------------------------------------


@event("gov.case.routed.v1", ROUTING_TOPIC, "routing", "Handling level and department decided")
class CaseRouted(BundleMemberEvent):
    route: Route
    item: ItemSnapshot
    application: Application
    submitted_at: AwareDatetime
    handover: Handover | None = None


@event(
    "gov.case.route_failed.v1",
    ROUTING_TOPIC,
    "routing",
    "No route: the case waits in the triage queue",
)
class CaseRouteFailed(BundleMemberEvent):
    failure: Failure
    rule: str
    catalog_version: int | None
    application: Application
    submitted_at: AwareDatetime


# -- case.decisions.v1 (department systems) ----------------------------------------------------


class DecisionKind(StrEnum):
    accept = "accept"
    request_supplement = "request_supplement"
    approve = "approve"
    deny = "deny"


@event(
    "gov.case.decision.v1",
    DECISIONS_TOPIC,
    "department systems",
    "A department's decision: accept, request_supplement, approve or deny",
)
class DecisionMade(CaseEvent):
    # Outside input (department systems): held to the same text rules as the REST body.
    department: Code
    decision: DecisionKind
    reason: Text | None = None
    legal_basis: Text | None = None
    missing_materials: list[Code] = Field(default_factory=list)


# -- case.approval.v1 (approval) ---------------------------------------------------------------


@event(
    "gov.case.accepted.v1",
    APPROVAL_TOPIC,
    "approval",
    "Formally accepted; the legal clock starts",
)
class CaseAccepted(CaseEvent):
    department: str
    accepted_at: AwareDatetime
    deadline: date | None = Field(description="null when past the calendar: an alarm, not a guess")
    time_limit_days: int
    deferred_due: date | None = Field(
        default=None,
        description="the last day to bring the deferred materials (容缺受理); null: none deferred",
    )


@event(
    "gov.case.supplement_requested.v1",
    APPROVAL_TOPIC,
    "approval",
    "Supplement requested; the clock pauses",
)
class CaseSupplementRequested(CaseEvent):
    department: str
    missing_materials: list[str]
    reason: str | None = None


class DecisionOutcome(CaseEvent):
    """What delivery needs to issue and deliver the result without reading other services."""

    department: str
    decided_at: AwareDatetime
    reason: str | None = None
    item: ItemSnapshot
    delivery_method: DeliveryMethod
    delivery_address: str | None = None
    intake_office: str | None = None
    level: Level | None = Field(default=None, description="level of the deciding department")
    applicant_name: str
    applicant_id_number: str


@event("gov.case.approved.v1", APPROVAL_TOPIC, "approval", "Approved")
class CaseApproved(DecisionOutcome):
    pass


@event("gov.case.denied.v1", APPROVAL_TOPIC, "approval", "Denied, with its legal basis")
class CaseDenied(DecisionOutcome):
    legal_basis: str


class ClockStep(StrEnum):
    decision = "decision"  # the committed time limit of the case
    followup = "followup"  # the answer owed to a bad rating
    verification = "verification"  # checking the commitments of an approved case (§7)
    bundle = "bundle"  # the committed limit of the whole bundle (§8)


@event(
    "gov.case.sla_warning.v1",
    APPROVAL_TOPIC,
    "approval",
    "A share of the committed time limit has passed",
)
class CaseSlaWarning(CaseEvent):
    department: str
    deadline: date | None = Field(description="null while the deadline is past the calendar")
    elapsed_ratio: float
    step: ClockStep = ClockStep.decision


@event(
    "gov.case.overdue.v1",
    APPROVAL_TOPIC,
    "approval",
    "The committed time limit (or a follow-up's) has passed",
)
class CaseOverdue(CaseEvent):
    department: str
    deadline: date
    step: ClockStep = ClockStep.decision


@event(
    "gov.case.deadline_changed.v1",
    APPROVAL_TOPIC,
    "approval",
    "The deadline moved (supplement ended, calendar extended)",
)
class CaseDeadlineChanged(CaseEvent):
    """The deadline moved: a supplement round ended (the paused days do not count), or the
    calendar now covers a deadline that was unknown."""

    department: str
    deadline: date | None
    reason: str = Field(description="supplemented | calendar_extended")
    paused_working_days: int = 0


@event(
    "gov.case.deadline_unknown.v1",
    APPROVAL_TOPIC,
    "approval",
    "Alarm: the deadline is past the calendar's covers_until",
)
class CaseDeadlineUnknown(CaseEvent):
    """Alarm: the deadline falls past the last date the catalog calendar covers. tongban does
    not guess; the case shows no deadline until the calendar is extended."""

    department: str
    accepted_on: date
    time_limit_days: int
    covers_until: date


@event(
    "gov.case.handover_refused.v1",
    APPROVAL_TOPIC,
    "approval",
    "An entrusted handover failed verification",
)
class CaseHandoverRefused(CaseEvent):
    """Entrusted intake whose signed handover does not match what arrived: not accepted,
    flagged for operators."""

    department: str
    office_code: str | None
    reason: str


@event(
    "gov.case.followup_opened.v1",
    APPROVAL_TOPIC,
    "approval",
    "A bad rating opened a follow-up for the department",
)
class CaseFollowupOpened(CaseEvent):
    """A dissatisfied rating opens a follow-up the department must answer in time."""

    department: str
    rating: str
    comment: str | None = None
    deadline: date | None
    opened_at: AwareDatetime


@event(
    "gov.case.followup_answered.v1",
    APPROVAL_TOPIC,
    "approval",
    "The department answered the follow-up",
)
class CaseFollowupAnswered(CaseEvent):
    department: str
    answer: str
    answered_at: AwareDatetime


@event(
    "gov.case.approval_held.v1",
    APPROVAL_TOPIC,
    "approval",
    "Approved, and held until the deferred materials arrive (容缺受理)",
)
class CaseApprovalHeld(CaseEvent):
    """An `approve` while deferred materials are outstanding is recorded and held;
    `gov.case.approved.v1` follows when the last one arrives (DESIGN.md §7)."""

    department: str
    decided_at: AwareDatetime
    outstanding: list[str] = Field(description="the deferred material codes still missing")


@event(
    "gov.case.terminated.v1",
    APPROVAL_TOPIC,
    "approval",
    "The case ended without a decision taking effect: deferred materials lapsed",
)
class CaseTerminated(CaseEvent):
    department: str
    reason: str = Field(description="deferred_materials_lapsed")
    terminated_at: AwareDatetime
    outstanding: list[str] = Field(default_factory=list, description="material codes missing")


@event(
    "gov.case.revoked.v1",
    APPROVAL_TOPIC,
    "approval",
    "The decision is revoked: a commitment was found false (告知承诺)",
)
class CaseRevoked(CaseEvent):
    department: str
    reason: str = Field(description="commitment_breached")
    revoked_at: AwareDatetime
    note: str | None = None


@event(
    "gov.case.verified.v1",
    APPROVAL_TOPIC,
    "approval",
    "The commitments of an approved case were checked and found true (告知承诺)",
)
class CaseVerified(CaseEvent):
    """The department confirmed the commitments the approval rested on: the verification is
    closed and the decision stands (its breach is `gov.case.revoked.v1`)."""

    department: str
    verified_at: AwareDatetime
    note: str | None = None


# -- case.delivery.v1 (delivery) ---------------------------------------------------------------


@event(
    "gov.case.result_issued.v1",
    DELIVERY_TOPIC,
    "delivery",
    "The result (licence, e-licence or decision letter) is issued",
)
class CaseResultIssued(CaseEvent):
    result: ResultDocument
    issued_at: AwareDatetime


@event("gov.case.delivered.v1", DELIVERY_TOPIC, "delivery", "The result reached the applicant")
class CaseDelivered(CaseEvent):
    method: DeliveryMethod
    delivered_at: AwareDatetime
    tracking_number: str | None = None
    office_code: str | None = None


@event("gov.case.closed.v1", DELIVERY_TOPIC, "delivery", "The case is closed")
class CaseClosed(CaseEvent):
    outcome: str = Field(description="approved | denied")
    closed_at: AwareDatetime


class Rating(StrEnum):
    very_satisfied = "very_satisfied"
    satisfied = "satisfied"
    basic = "basic"
    dissatisfied = "dissatisfied"
    very_dissatisfied = "very_dissatisfied"


@event("gov.case.rated.v1", DELIVERY_TOPIC, "delivery", "The applicant rated the service (好差评)")
class CaseRated(CaseEvent):
    rating: Rating
    comment: str | None = None
    rated_at: AwareDatetime


# -- catalog.v1 (routing, compacted) -----------------------------------------------------------


@event("gov.catalog.published.v1", CATALOG_TOPIC, "routing", "A whole catalog version")
class CatalogPublished(Event):
    version: int
    loaded_at: AwareDatetime
    catalog: dict[str, Any] = Field(description="the whole catalog, as in the catalog file")


# -- license.v1 (delivery; key = licence id) ---------------------------------------------------


class LicenseEvent(Event):
    """A change to the licence library: keyed and subjected by the licence id, so one licence's
    story stays in order on one partition."""

    license_id: str


@event(
    "gov.license.issued.v1",
    LICENSE_TOPIC,
    "delivery",
    "An e-licence is issued to its holder (a material of later cases)",
)
class LicenseIssued(LicenseEvent):
    license_type: str
    holder_id_number: str
    case_id: str
    item_code: str
    issued_at: AwareDatetime
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


@event(
    "gov.license.revoked.v1",
    LICENSE_TOPIC,
    "delivery",
    "An e-licence is revoked (its decision was revoked)",
)
class LicenseRevoked(LicenseEvent):
    case_id: str
    reason: str
    revoked_at: AwareDatetime | None = None


# -- bundle.v1 (intake, delivery, approval; key = bundle id) -----------------------------------


class BundleEvent(Event):
    """A change to a bundle (一件事, DESIGN.md §8): keyed and subjected by the bundle id, so one
    bundle's story stays in order on one partition. Its members' own events stay on the case
    topics, each with `bundle_id`."""

    bundle_id: str


class BundleMemberRef(Contract):
    case_id: str
    item_code: str
    status: CaseStatus = Field(description="the member's status when the event was written")
    after: list[str] = Field(
        default_factory=list, description="case ids of the members it waits for (`waiting`)"
    )


@event(
    "gov.bundle.submitted.v1",
    BUNDLE_TOPIC,
    "intake",
    "A bundle taken at one window: its members, created as ordinary cases",
)
class BundleSubmitted(BundleEvent):
    bundle_code: str
    bundle_name: str
    lead: str = Field(description="牵头部门")
    time_limit_days: int
    channel: Channel
    office_code: str | None
    answers: dict[str, bool | str] = Field(default_factory=dict)
    members: list[BundleMemberRef]
    excluded: list[str] = Field(
        default_factory=list, description="item codes the answers left out (not created)"
    )
    delivery_method: DeliveryMethod
    delivery_address: str | None = None
    submitted_at: AwareDatetime


@event(
    "gov.bundle.withdrawn.v1",
    BUNDLE_TOPIC,
    "intake",
    "The applicant withdrew the bundle: every undecided member is withdrawn",
)
class BundleWithdrawn(BundleEvent):
    withdrawn_members: list[str] = Field(description="case ids withdrawn now")
    reason: str | None = None
    withdrawn_at: AwareDatetime


class BundleResult(Contract):
    case_id: str
    item_code: str
    outcome: str = Field(description="approved | denied | withdrawn | terminated | revoked")
    result: ResultDocument | None = Field(description="null for a member that ended without one")


@event(
    "gov.bundle.delivered.v1",
    BUNDLE_TOPIC,
    "delivery",
    "Every member's result reached the applicant at once (一次送达)",
)
class BundleDelivered(BundleEvent):
    method: DeliveryMethod
    delivered_at: AwareDatetime
    office_code: str | None = None
    tracking_number: str | None = None
    results: list[BundleResult]


@event("gov.bundle.closed.v1", BUNDLE_TOPIC, "delivery", "The bundle and its members are closed")
class BundleClosed(BundleEvent):
    closed_at: AwareDatetime
    members: list[str] = Field(description="case ids of the members closed with it")


@event(
    "gov.bundle.rated.v1",
    BUNDLE_TOPIC,
    "delivery",
    "The applicant rated the bundle once; counted for each member's department",
)
class BundleRated(BundleEvent):
    rating: Rating
    comment: str | None = None
    rated_at: AwareDatetime
    departments: list[str] = Field(description="the member departments the rating counts for")


@event(
    "gov.bundle.sla_warning.v1",
    BUNDLE_TOPIC,
    "approval",
    "A share of the bundle's committed time limit has passed",
)
class BundleSlaWarning(BundleEvent):
    lead: str
    deadline: date | None
    elapsed_ratio: float
    open_members: list[str] = Field(description="case ids not decided yet")


@event(
    "gov.bundle.overdue.v1",
    BUNDLE_TOPIC,
    "approval",
    "The bundle's committed time limit has passed with members undecided",
)
class BundleOverdue(BundleEvent):
    lead: str
    deadline: date
    open_members: list[str]


# -- xregion.out.v1 (across regions, DESIGN.md §9) ----------------------------------------------


@event(
    "gov.case.forwarded.v1",
    XREGION_TOPIC,
    "routing",
    "A case taken here for a partner region's applicant, forwarded there to be decided",
)
class CaseForwarded(CaseEvent):
    """异地代收代办: routing's rule 2 found the applicant's jurisdiction in a partner region and
    the item in that partner's catalog with `scope: cross_region`. The partner adopts the case
    under the same `case_id` once it verifies `handover` (the intake office's signature over
    the application, its material hashes included) against its partner keys."""

    from_city: str = Field(description="the origin region's city code")
    to_city: str = Field(description="the handling region's city code (= ce_tocity)")
    item_code: str
    catalog_version: int = Field(description="the version of the partner's catalog it was read in")
    application: Application
    submitted_at: AwareDatetime
    handover: Handover
    forwarded_at: AwareDatetime


@event(
    "gov.case.adoption_refused.v1",
    XREGION_TOPIC,
    "intake",
    "A partner region refused a forwarded case (its handover did not verify, or its item is "
    "not cross_region there)",
)
class CaseAdoptionRefused(CaseEvent):
    """The handling region's answer to a forwarded case it will not adopt; flagged there for
    operators, and at the origin the case fails routing (`partner_refused`) into triage."""

    from_city: str = Field(description="the refusing region's city code")
    to_city: str = Field(description="the origin region's city code (= ce_tocity)")
    code: str = Field(description="handover_invalid | unknown_item | not_cross_region | ...")
    reason: str
    refused_at: AwareDatetime
    forwarded_id: str | None = Field(
        default=None,
        description="the ce_id of the gov.case.forwarded.v1 refused: the origin applies a "
        "refusal only to the forwarding it sent (a forged record for a real case id is refused "
        "without failing the genuine one)",
    )


# -- case.dlq.replays.v1 (operators: `tongban dlq replay`) ---------------------------------------


class ReplayRecord(BaseModel):
    """One replay of a dead letter: which letter (its place on the dead-letter topic), where its
    original record was and where it went back to, who replayed it and when. JSON, key
    `<dlq topic>/<partition>/<offset>`, header `content-type: application/json`; not a
    CloudEvent. Unknown fields are ignored, so an older reader still sees a newer record (a
    replay it missed would let a second one through without --force)."""

    model_config = ConfigDict(frozen=True)

    dlq_topic: str = Field(description="the dead-letter topic the letter was read from")
    dlq_partition: int
    dlq_offset: int
    original_topic: str = Field(description="where the letter's record came from, and went back")
    original_partition: int | None
    original_offset: int | None
    event_id: str | None = Field(description="its `ce_id`, when it had one")
    event_type: str | None = Field(description="its `ce_type`, when it had one")
    case_id: str | None = Field(description="its `ce_subject`, else its key")
    replayed_to_partition: int
    replayed_to_offset: int
    replayed_at: AwareDatetime
    operator: str = Field(description="who replayed it (`--operator`, else the login name)")
    forced: bool = Field(False, description="replayed again with `--force`")

    @property
    def dlq_place(self) -> tuple[str, int, int]:
        return (self.dlq_topic, self.dlq_partition, self.dlq_offset)


CASE_TOPICS = (INTAKE_TOPIC, ROUTING_TOPIC, DECISIONS_TOPIC, APPROVAL_TOPIC, DELIVERY_TOPIC)


def types_on(topic: str) -> list[str]:
    return [t for t, e in EVENT_TYPES.items() if e.topic == topic]
