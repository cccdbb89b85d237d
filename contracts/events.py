"""Event payloads of every topic (DESIGN.md §4): frozen models, past tense, version in the type.

`EVENT_TYPES` maps each CloudEvents `type` to its topic and payload model; producers, consumers,
the generated JSON Schemas and the AsyncAPI document are all built from it. `ReplayRecord` is
the one record that is not an event: the operators' log of dead-letter replays.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts.common import (
    Application,
    Code,
    Contract,
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


class CaseEvent(Contract):
    case_id: str


# -- case.intake.v1 (intake) -------------------------------------------------------------------


class CaseNotified(CaseEvent):
    """One-time notification (一次性告知): every missing material listed at once."""

    application: Application
    missing_materials: list[str]
    notified_at: AwareDatetime


class CaseSubmitted(CaseEvent):
    """The materials are complete: routing takes it from here."""

    application: Application
    submitted_at: AwareDatetime
    handover: Handover | None = Field(
        default=None, description="the intake office's signature (counter intake)"
    )


class CaseSupplemented(CaseEvent):
    """Materials answering a supplement request (at the counter or during review)."""

    materials: list[Material]
    supplemented_at: AwareDatetime


class CaseWithdrawn(CaseEvent):
    reason: str | None = None
    withdrawn_at: AwareDatetime


# -- case.routing.v1 (routing) -----------------------------------------------------------------


class CaseRouted(CaseEvent):
    route: Route
    item: ItemSnapshot
    application: Application
    submitted_at: AwareDatetime
    handover: Handover | None = None


class CaseRouteFailed(CaseEvent):
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


class DecisionMade(CaseEvent):
    # Outside input (department systems): held to the same text rules as the REST body.
    department: Code
    decision: DecisionKind
    reason: Text | None = None
    legal_basis: Text | None = None
    missing_materials: list[Code] = Field(default_factory=list)


# -- case.approval.v1 (approval) ---------------------------------------------------------------


class CaseAccepted(CaseEvent):
    department: str
    accepted_at: AwareDatetime
    deadline: date | None = Field(description="null when past the calendar: an alarm, not a guess")
    time_limit_days: int


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


class CaseApproved(DecisionOutcome):
    pass


class CaseDenied(DecisionOutcome):
    legal_basis: str


class ClockStep(StrEnum):
    decision = "decision"  # the committed time limit of the case
    followup = "followup"  # the answer owed to a bad rating


class CaseSlaWarning(CaseEvent):
    department: str
    deadline: date | None = Field(description="null while the deadline is past the calendar")
    elapsed_ratio: float
    step: ClockStep = ClockStep.decision


class CaseOverdue(CaseEvent):
    department: str
    deadline: date
    step: ClockStep = ClockStep.decision


class CaseDeadlineChanged(CaseEvent):
    """The deadline moved: a supplement round ended (the paused days do not count), or the
    calendar now covers a deadline that was unknown."""

    department: str
    deadline: date | None
    reason: str = Field(description="supplemented | calendar_extended")
    paused_working_days: int = 0


class CaseDeadlineUnknown(CaseEvent):
    """Alarm: the deadline falls past the last date the catalog calendar covers. tongban does
    not guess; the case shows no deadline until the calendar is extended."""

    department: str
    accepted_on: date
    time_limit_days: int
    covers_until: date


class CaseHandoverRefused(CaseEvent):
    """Entrusted intake whose signed handover does not match what arrived: not accepted,
    flagged for operators."""

    department: str
    office_code: str | None
    reason: str


class CaseFollowupOpened(CaseEvent):
    """A dissatisfied rating opens a follow-up the department must answer in time."""

    department: str
    rating: str
    comment: str | None = None
    deadline: date | None
    opened_at: AwareDatetime


class CaseFollowupAnswered(CaseEvent):
    department: str
    answer: str
    answered_at: AwareDatetime


# -- case.delivery.v1 (delivery) ---------------------------------------------------------------


class CaseResultIssued(CaseEvent):
    result: ResultDocument
    issued_at: AwareDatetime


class CaseDelivered(CaseEvent):
    method: DeliveryMethod
    delivered_at: AwareDatetime
    tracking_number: str | None = None
    office_code: str | None = None


class CaseClosed(CaseEvent):
    outcome: str = Field(description="approved | denied")
    closed_at: AwareDatetime


class Rating(StrEnum):
    very_satisfied = "very_satisfied"
    satisfied = "satisfied"
    basic = "basic"
    dissatisfied = "dissatisfied"
    very_dissatisfied = "very_dissatisfied"


class CaseRated(CaseEvent):
    rating: Rating
    comment: str | None = None
    rated_at: AwareDatetime


# -- catalog.v1 (routing, compacted) -----------------------------------------------------------


class CatalogPublished(Contract):
    version: int
    loaded_at: AwareDatetime
    catalog: dict[str, Any] = Field(description="the whole catalog, as in the catalog file")


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


@dataclass(frozen=True)
class EventType:
    type: str
    topic: str
    model: builtins.type[Contract]
    producer: str
    summary: str

    @property
    def handledby(self) -> bool:
        """Its records carry `ce_handledby`, the department deciding the case: routing's
        `gov.case.routed.v1` (the department topics are filtered by it) and everything
        approval publishes about a case, which it does for that department."""
        return self.type == "gov.case.routed.v1" or self.producer == "approval"


EVENT_TYPES: dict[str, EventType] = {
    e.type: e
    for e in (
        EventType(
            "gov.case.notified.v1",
            INTAKE_TOPIC,
            CaseNotified,
            "intake",
            "One-time notification of missing materials at the counter",
        ),
        EventType(
            "gov.case.submitted.v1",
            INTAKE_TOPIC,
            CaseSubmitted,
            "intake",
            "Materials complete; the case goes to routing",
        ),
        EventType(
            "gov.case.supplemented.v1",
            INTAKE_TOPIC,
            CaseSupplemented,
            "intake",
            "Materials answering a supplement request",
        ),
        EventType(
            "gov.case.withdrawn.v1",
            INTAKE_TOPIC,
            CaseWithdrawn,
            "intake",
            "The applicant withdrew the case",
        ),
        EventType(
            "gov.case.routed.v1",
            ROUTING_TOPIC,
            CaseRouted,
            "routing",
            "Handling level and department decided",
        ),
        EventType(
            "gov.case.route_failed.v1",
            ROUTING_TOPIC,
            CaseRouteFailed,
            "routing",
            "No route: the case waits in the triage queue",
        ),
        EventType(
            "gov.case.decision.v1",
            DECISIONS_TOPIC,
            DecisionMade,
            "department systems",
            "A department's decision: accept, request_supplement, approve or deny",
        ),
        EventType(
            "gov.case.accepted.v1",
            APPROVAL_TOPIC,
            CaseAccepted,
            "approval",
            "Formally accepted; the legal clock starts",
        ),
        EventType(
            "gov.case.supplement_requested.v1",
            APPROVAL_TOPIC,
            CaseSupplementRequested,
            "approval",
            "Supplement requested; the clock pauses",
        ),
        EventType("gov.case.approved.v1", APPROVAL_TOPIC, CaseApproved, "approval", "Approved"),
        EventType(
            "gov.case.denied.v1",
            APPROVAL_TOPIC,
            CaseDenied,
            "approval",
            "Denied, with its legal basis",
        ),
        EventType(
            "gov.case.sla_warning.v1",
            APPROVAL_TOPIC,
            CaseSlaWarning,
            "approval",
            "A share of the committed time limit has passed",
        ),
        EventType(
            "gov.case.overdue.v1",
            APPROVAL_TOPIC,
            CaseOverdue,
            "approval",
            "The committed time limit (or a follow-up's) has passed",
        ),
        EventType(
            "gov.case.deadline_changed.v1",
            APPROVAL_TOPIC,
            CaseDeadlineChanged,
            "approval",
            "The deadline moved (supplement ended, calendar extended)",
        ),
        EventType(
            "gov.case.deadline_unknown.v1",
            APPROVAL_TOPIC,
            CaseDeadlineUnknown,
            "approval",
            "Alarm: the deadline is past the calendar's covers_until",
        ),
        EventType(
            "gov.case.handover_refused.v1",
            APPROVAL_TOPIC,
            CaseHandoverRefused,
            "approval",
            "An entrusted handover failed verification",
        ),
        EventType(
            "gov.case.followup_opened.v1",
            APPROVAL_TOPIC,
            CaseFollowupOpened,
            "approval",
            "A bad rating opened a follow-up for the department",
        ),
        EventType(
            "gov.case.followup_answered.v1",
            APPROVAL_TOPIC,
            CaseFollowupAnswered,
            "approval",
            "The department answered the follow-up",
        ),
        EventType(
            "gov.case.result_issued.v1",
            DELIVERY_TOPIC,
            CaseResultIssued,
            "delivery",
            "The result (licence, e-licence or decision letter) is issued",
        ),
        EventType(
            "gov.case.delivered.v1",
            DELIVERY_TOPIC,
            CaseDelivered,
            "delivery",
            "The result reached the applicant",
        ),
        EventType(
            "gov.case.closed.v1", DELIVERY_TOPIC, CaseClosed, "delivery", "The case is closed"
        ),
        EventType(
            "gov.case.rated.v1",
            DELIVERY_TOPIC,
            CaseRated,
            "delivery",
            "The applicant rated the service (好差评)",
        ),
        EventType(
            "gov.catalog.published.v1",
            CATALOG_TOPIC,
            CatalogPublished,
            "routing",
            "A whole catalog version",
        ),
    )
}

CASE_TOPICS = (INTAKE_TOPIC, ROUTING_TOPIC, DECISIONS_TOPIC, APPROVAL_TOPIC, DELIVERY_TOPIC)


def types_on(topic: str) -> list[str]:
    return [t for t, e in EVENT_TYPES.items() if e.topic == topic]
