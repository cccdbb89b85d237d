"""REST bodies of the four services (DESIGN.md §4). Pinned names are the black-box contract."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, Field

from contracts.common import (
    Applicant,
    Application,
    CaseStatus,
    Channel,
    Code,
    Contract,
    Delivery,
    DeliveryMethod,
    Failure,
    Material,
    ResultDocument,
    Route,
    Text,
    TimelineEntry,
)
from contracts.events import DecisionKind, Rating


class ProblemBody(Contract):
    """RFC 9457 problem details with a stable machine `code` and a field list."""

    model_config = {"extra": "allow", "frozen": True}
    type: str
    title: str
    status: int
    code: str
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] = Field(default_factory=list)


# -- intake ------------------------------------------------------------------------------------

SubmissionRequest = Application


class DeferredMaterial(Contract):
    """A material deferred at submission (容缺受理, DESIGN.md §7): due by the end of `due`."""

    code: str
    due: date | None = Field(description="set at acceptance: defer_days working days after it")
    received: bool = False


class LicensedMaterial(Contract):
    """A material satisfied by an e-licence of the licence library (免提交, DESIGN.md §7)."""

    material: str = Field(description="the material code")
    license_id: str


class SubmissionResponse(Contract):
    case_id: str
    status: CaseStatus
    missing_materials: list[str]
    route_preview: Route | None
    deferred_materials: list[DeferredMaterial] = Field(
        default_factory=list, description="materials to bring after acceptance (容缺受理)"
    )
    reused_licenses: list[LicensedMaterial] = Field(
        default_factory=list,
        description="materials satisfied by e-licences the applicant holds, attached or named",
    )


class MaterialsRequest(Contract):
    materials: list[Material] = Field(min_length=1, max_length=200)


class WithdrawRequest(Contract):
    reason: Text | None = Field(default=None, max_length=1000)


class CaseView(Contract):
    case_id: str
    status: CaseStatus
    item_code: str
    channel: str | None = None
    office_code: str | None = Field(default=None, description="the office that took it")
    route: Route | None
    failure: Failure | None
    deadline: date | None
    missing_materials: list[str]
    timeline: list[TimelineEntry]
    applicant: Applicant | None = Field(default=None, description="masked for operators and admins")
    deferred_materials: list[DeferredMaterial] = Field(
        default_factory=list, description="materials deferred at submission (容缺受理)"
    )
    bundle_id: str | None = Field(default=None, description="the bundle it is a member of (§8)")


class ItemView(Contract):
    code: str
    name: str
    category: str
    mode: str
    intake_levels: list[str]
    instant: bool
    time_limit_days: int
    materials: list[dict[str, Any]]
    effective_from: date | None
    effective_to: date | None
    scope: str = Field(
        "city", description="city | cross_region: taken at a partner region's counters (§9)"
    )


class PartnerView(Contract):
    """A partner region (DESIGN.md §9), known by its catalog mirrored here."""

    city_code: str
    name: str
    catalog_version: int
    cross_region_items: int = Field(
        description="its cross_region items in force today: what a counter here may take"
    )


class AdoptionRefusalView(Contract):
    """A case a partner region forwarded here and this region did not adopt (DESIGN.md §9):
    answered with `gov.case.adoption_refused.v1`; kept for operators."""

    event_id: str = Field(description="the forwarded event's `ce_id`")
    case_id: str
    from_city: str = Field(description="the origin region's city code")
    item_code: str
    code: str = Field(
        description="handover_invalid | unknown_item | item_not_effective | not_cross_region | "
        "out_of_jurisdiction | case_id_in_use"
    )
    reason: str
    refused_at: AwareDatetime


# -- routing -----------------------------------------------------------------------------------


class RoutePreviewResponse(Contract):
    route: Route | None
    failure: Failure | None
    rule: str


class TriageEntry(Contract):
    case_id: str
    item_code: str
    failure: Failure
    rule: str
    catalog_version: int | None
    failed_at: AwareDatetime


class CatalogWarning(Contract):
    """Allowed, but worth a look (an e-licence type no item of the catalog issues)."""

    field: str
    message: str


class CatalogVersion(Contract):
    version: int
    loaded_at: AwareDatetime
    city: str
    items: int
    warnings: list[CatalogWarning] = Field(default_factory=list)


# -- approval ----------------------------------------------------------------------------------


class DecisionRequest(Contract):
    department: Code = Field(min_length=1, max_length=64)
    decision: DecisionKind
    reason: Text | None = Field(default=None, max_length=2000)
    legal_basis: Text | None = Field(default=None, max_length=2000)
    missing_materials: list[Annotated[Code, Field(max_length=64)]] = Field(
        default_factory=list, max_length=200
    )


class WorklistEntry(Contract):
    case_id: str
    item_code: str
    item_name: str
    status: CaseStatus
    path: str
    level: str
    instant: bool
    accepted_at: AwareDatetime | None
    deadline: date | None
    applicant_name: str
    licensed_materials: list[LicensedMaterial] = Field(
        default_factory=list, description="materials that came from e-licences, and which"
    )
    bundle_id: str | None = Field(default=None, description="the bundle it is a member of (§8)")


class ApprovalCaseView(Contract):
    """A case as its deciding department holds it (approval's own view, for departments and
    tests; the applicant's whole story is intake's `GET /v1/cases/{case_id}`)."""

    case_id: str
    status: CaseStatus
    department: str | None
    item_code: str | None
    accepted_at: AwareDatetime | None
    deadline: date | None
    time_limit_days: int | None
    missing_materials: list[str]
    supplement_rounds: int
    decision: DecisionKind | None
    reason: str | None
    legal_basis: str | None
    decided_at: AwareDatetime | None
    withdrawn_at: AwareDatetime | None
    handover_problem: str | None = None
    deferred_outstanding: list[str] = Field(
        default_factory=list, description="deferred materials not yet brought (容缺受理)"
    )
    deferred_due: date | None = Field(default=None, description="the last day to bring them")
    licensed_materials: list[LicensedMaterial] = Field(
        default_factory=list, description="materials that came from e-licences, and which"
    )
    verification: VerificationEntry | None = Field(
        default=None, description="the verification of its commitments, once approved (告知承诺)"
    )
    bundle_id: str | None = Field(default=None, description="the bundle it is a member of (§8)")


class FollowupEntry(Contract):
    """A dissatisfied rating the department owes an answer to (好差评 follow-up)."""

    case_id: str
    department: str
    rating: str
    comment: str | None
    opened_at: AwareDatetime
    deadline: date | None


class FollowupAnswerRequest(Contract):
    department: Code = Field(min_length=1, max_length=64)
    answer: Text = Field(min_length=1, max_length=4000)


class VerificationResult(StrEnum):
    """A department's finding on an approved case's commitments (告知承诺, DESIGN.md §7)."""

    confirmed = "confirmed"
    breached = "breached"


class VerificationStatus(StrEnum):
    open = "open"
    confirmed = "confirmed"
    breached = "breached"


class VerificationRequest(Contract):
    """`POST /v1/cases/{case_id}/verification`: what checking the commitments found."""

    result: VerificationResult
    note: Text | None = Field(default=None, max_length=4000)


class VerificationEntry(Contract):
    """The verification of an approved case's commitments, due `verify_days` working days after
    the approval took effect (告知承诺, DESIGN.md §7)."""

    case_id: str
    department: str
    item_code: str
    committed_materials: list[str] = Field(description="the materials committed, not proven")
    approved_at: AwareDatetime
    due: date | None = Field(description="null while past the catalog calendar")
    status: VerificationStatus
    note: str | None = None
    verified_at: AwareDatetime | None = None


class HandoverProblemEntry(Contract):
    """An entrusted case held because its signed handover did not verify."""

    case_id: str
    department: str | None
    office_code: str | None
    problem: str
    updated_at: AwareDatetime


class SlaBoardRow(Contract):
    """One department's open cases against their clocks."""

    department: str
    open: int
    warned: int = Field(description="open cases past an SLA warning point")
    overdue: int = Field(description="open cases whose deadline day is over")
    unknown_deadline: int = Field(description="open cases whose deadline is past the calendar")
    next_deadline: date | None


class CaseAtRisk(Contract):
    case_id: str
    department: str | None
    status: str
    deadline: date | None
    accepted_at: AwareDatetime | None
    item_code: str | None
    deferred_outstanding: list[str] = Field(
        default_factory=list, description="deferred materials not yet brought (容缺受理)"
    )
    deferred_due: date | None = Field(
        default=None, description="the last day to bring them; past it the case is terminated"
    )
    committed_materials: list[str] = Field(
        default_factory=list, description="materials committed to, under verification (告知承诺)"
    )
    verification_due: date | None = Field(
        default=None, description="the day the open verification of its commitments is due"
    )


class DecisionResponse(Contract):
    case_id: str
    status: CaseStatus


# -- delivery ----------------------------------------------------------------------------------


class ResultView(Contract):
    case_id: str
    status: CaseStatus
    outcome: str
    result: ResultDocument
    delivery_method: DeliveryMethod
    tracking_number: str | None
    pickup_office: str | None
    issued_at: AwareDatetime
    delivered_at: AwareDatetime | None
    closed_at: AwareDatetime | None
    bundle_id: str | None = Field(
        default=None, description="a bundle's member: delivered with its bundle (§8)"
    )


class PickupRequest(Contract):
    """`POST /v1/cases/{case_id}/pickup` body (optional)."""

    office_code: Code | None = Field(
        default=None,
        max_length=64,
        description="the office handing the result over; must be the pickup (intake) office",
    )


class RatingRequest(Contract):
    rating: Rating
    comment: Text | None = Field(default=None, max_length=2000)


class LicenseStatus(StrEnum):
    valid = "valid"
    invalid = "invalid"  # no such licence, or not the sha256 on record
    revoked = "revoked"  # its decision was revoked (DESIGN.md §7)


class LicenseVerification(Contract):
    """`GET /v1/licenses/{license_id}/verify`. Anyone may ask; only a caller who may read the
    licence's case (its office, its department, operators, admins) learns its case, hash,
    item and issue time: to everyone else they are null, and an unknown id reads the same."""

    license_id: str
    status: LicenseStatus
    valid: bool = Field(description="status is valid")
    case_id: str | None
    sha256: str | None
    item_code: str | None
    issued_at: AwareDatetime | None


class HeldLicense(Contract):
    """One e-licence of the licence library, as `GET /v1/licenses?holder=` lists it (intake's
    copy of `license.v1`); the holder's ID number is masked for operators and admins."""

    license_id: str
    license_type: str
    holder_id_number: str
    item_code: str
    issued_at: AwareDatetime
    status: LicenseStatus = Field(description="valid | revoked")
    revoked_at: AwareDatetime | None = None


class RatingGrouping(StrEnum):
    """What `GET /v1/ratings/stats?by=` groups the ratings by."""

    department = "department"  # the deciding (handling) department
    office = "office"  # the office that took the application (null: online channel)
    level = "level"  # the deciding department's level: municipal | district | street


class RatingStatsRow(Contract):
    """Ratings of one group (one department, office or level) in the period asked for."""

    key: str | None = Field(
        description="department code, office code or level; null: no office (online "
        "applications) or no level on record (results issued before levels were recorded)"
    )
    total: int = Field(ge=1, description="ratings in the group")
    very_satisfied: int = Field(ge=0)
    satisfied: int = Field(ge=0)
    basic: int = Field(ge=0)
    dissatisfied: int = Field(ge=0)
    very_dissatisfied: int = Field(ge=0)
    satisfaction_rate: float = Field(
        ge=0, le=1, description="(very_satisfied + satisfied) / total, rounded to 4 decimals"
    )
    bad: int = Field(ge=0, description="差评: dissatisfied + very_dissatisfied")


# -- bundles (一件事一次办, DESIGN.md §8) ---------------------------------------------------------


class BundleStatus(StrEnum):
    in_progress = "in_progress"
    delivered = "delivered"
    closed = "closed"
    withdrawn = "withdrawn"


class BundleApplication(Contract):
    """`POST /v1/bundles` body: one form, one set of materials, for every member."""

    bundle_code: Code = Field(min_length=1, max_length=64)
    channel: Channel
    office_code: Code | None = Field(default=None, max_length=64, description="counter only")
    applicant: Applicant
    answers: dict[
        Annotated[Code, Field(min_length=1, max_length=64)],
        bool | Annotated[Code, Field(max_length=64)],
    ] = Field(
        default_factory=dict, max_length=100, description="question code -> answer (情形引导)"
    )
    materials: list[Material] = Field(
        default_factory=list,
        max_length=200,
        description="one set: a code several members take is given once",
    )
    delivery: Delivery


class BundleMemberPreview(Contract):
    case_id: str
    item_code: str
    status: CaseStatus
    route_preview: Route | None


class BundleSubmissionResponse(Contract):
    bundle_id: str
    status: BundleStatus
    members: list[BundleMemberPreview]
    missing_materials: list[str] = Field(description="every material still missing, once")
    excluded: list[str] = Field(
        default_factory=list, description="member items the answers left out (not created)"
    )
    reused_licenses: list[LicensedMaterial] = Field(default_factory=list)


class BundleMemberView(Contract):
    case_id: str
    item_code: str
    status: CaseStatus
    route: Route | None
    after: list[str] = Field(default_factory=list, description="case ids it waits for")
    failure: Failure | None = None
    deadline: date | None = None


class BundleTimelineEntry(TimelineEntry):
    case_id: str | None = Field(default=None, description="the member; null: the bundle itself")


class BundleView(Contract):
    """`GET /v1/bundles/{bundle_id}` (intake)."""

    bundle_id: str
    bundle_code: str
    bundle_name: str | None = None
    status: BundleStatus
    deadline: date | None = Field(
        description="first member's acceptance + the bundle's time_limit_days working days"
    )
    office_code: str | None = None
    members: list[BundleMemberView]
    excluded: list[str] = Field(default_factory=list)
    missing_materials: list[str] = Field(default_factory=list)
    timeline: list[BundleTimelineEntry]
    applicant: Applicant | None = Field(default=None, description="masked for operators and admins")


class BundleWithdrawResponse(Contract):
    bundle_id: str
    status: BundleStatus
    withdrawn: list[str] = Field(description="case ids withdrawn now")
    kept: list[str] = Field(description="members already decided: their results still come")


class BundleQuestionView(Contract):
    code: str
    text: str
    type: str
    options: list[str] = Field(default_factory=list)


class BundleMaterialView(Contract):
    code: str
    name: str
    required: bool
    items: list[str] = Field(description="the member items that take it")
    license_type: str | None = None
    commitment: bool = False
    deferrable: bool = False


class BundleCatalogMember(Contract):
    item: str
    name: str
    when: dict[str, bool | str] = Field(default_factory=dict)
    after: list[str] = Field(default_factory=list)


class BundleCatalogView(Contract):
    """`GET /v1/bundles` (intake): what a counter terminal needs to render the one form."""

    code: str
    name: str
    category: str
    lead: str
    time_limit_days: int
    intake_levels: list[str]
    questions: list[BundleQuestionView]
    members: list[BundleCatalogMember]
    materials: list[BundleMaterialView] = Field(description="the union of the members' materials")
    effective_from: date | None
    effective_to: date | None


class BundleResultsView(Contract):
    """`GET /v1/bundles/{bundle_id}/results` (delivery)."""

    bundle_id: str
    status: BundleStatus
    delivery_method: DeliveryMethod | None
    pickup_office: str | None
    results: list[ResultView]
    ended: list[str] = Field(default_factory=list, description="members that ended without one")
    open_members: list[str] = Field(
        default_factory=list, description="members with neither a result nor an end yet"
    )
    ready_at: AwareDatetime | None = Field(
        default=None,
        description="when every member had its result or had ended (counter_pickup: since "
        "then the results wait at the intake office for the one pickup)",
    )
    delivered_at: AwareDatetime | None = None
    closed_at: AwareDatetime | None = None


class BundleAtRisk(Contract):
    """`GET /v1/sla/bundles` (approval): a bundle's clock at risk (DESIGN.md §8)."""

    bundle_id: str
    bundle_code: str | None
    lead: str | None = Field(description="牵头部门: warnings and overdue are for it")
    time_limit_days: int | None
    first_accepted_at: AwareDatetime | None = Field(description="the clock started here")
    deadline: date | None = Field(description="null: past the catalog calendar (an alarm)")
    overdue: bool
    warned: bool = Field(description="a warning (or the overdue) was published")
    open_members: list[str] = Field(description="members not decided yet (case ids)")
