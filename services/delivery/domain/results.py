"""delivery's pure domain: what a decision issues, how it is hashed, and how it is delivered.

No I/O here. The handlers give every random or database-made value (licence token, tracking
serial, clock) as an argument, so the same inputs always give the same result.

Canonical form of a result's content (what `sha256` is computed over, and what a verifier
recomputes): UTF-8 bytes of `json.dumps(content, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`. Every value in a content object is a string (times are ISO 8601 with the
city's offset, whole seconds), so the form does not depend on number formatting.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from contracts.common import CaseStatus, DeliveryMethod, ItemSnapshot, ResultDocument
from contracts.events import (
    CaseApproved,
    CaseClosed,
    CaseDelivered,
    CaseDenied,
    CaseEvent,
    CaseResultIssued,
    CaseRevoked,
    LicenseIssued,
    LicenseRevoked,
)
from contracts.rest import LicenseStatus
from services.common.city import CITY_TZ

# A delivery step is the event class it emits.
Step = type[CaseEvent]

APPROVED = "approved"
DENIED = "denied"

E_LICENCE_KIND = "licence"
DECISION_LETTER_KIND = "decision_letter"


# -- canonical content and its hash -----------------------------------------------------------


def canonical_json(content: dict[str, Any]) -> bytes:
    """The exact bytes a result's sha256 is computed over (see the module docstring)."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def content_sha256(content: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(content)).hexdigest()


def city_time(moment: datetime) -> str:
    """A time as it is written into a result: city offset, whole seconds."""
    if moment.tzinfo is None:
        raise ValueError("a result time must carry its offset")
    return moment.astimezone(CITY_TZ).replace(microsecond=0).isoformat()


# -- identifiers ------------------------------------------------------------------------------


def license_id_for(item_code: str, issued_on: date, token: str) -> str:
    """`EL-<item code>-<YYYYMMDD>-<token>`; the token is random (64 bits, upper-case hex)."""
    return f"EL-{item_code}-{issued_on:%Y%m%d}-{token.upper()}"


_S10_WEIGHTS = (8, 6, 4, 2, 3, 5, 9, 7)
TRACKING_SERIALS_PER_PREFIX = 100_000_000


def s10_check_digit(serial8: str) -> int:
    """UPU S10 check digit of an 8-digit serial number."""
    if len(serial8) != 8 or not serial8.isdigit():
        raise ValueError("an S10 serial has 8 digits")
    remainder = 11 - sum(int(d) * w for d, w in zip(serial8, _S10_WEIGHTS, strict=True)) % 11
    return {10: 0, 11: 5}.get(remainder, remainder)


def tracking_number(serial: int) -> str:
    """A postal tracking number in the UPU S10 shape: `T<A-Z><8 digits><check>CN`.

    `serial` comes from a database sequence, so numbers are unique; every 10^8 serials the
    second letter moves on (26 * 10^8 numbers before the shape repeats).
    """
    if serial < 0:
        raise ValueError("a tracking serial is not negative")
    block, number = divmod(serial, TRACKING_SERIALS_PER_PREFIX)
    digits = f"{number:08d}"
    return f"T{chr(ord('A') + block % 26)}{digits}{s10_check_digit(digits)}CN"


def is_tracking_number(value: str) -> bool:
    if len(value) != 13 or not value[:2].isalpha() or not value[:2].isupper():
        return False
    digits, check, country = value[2:10], value[10], value[11:]
    if not (digits.isdigit() and check.isdigit() and country.isalpha() and country.isupper()):
        return False
    return s10_check_digit(digits) == int(check)


# -- what a decision issues -------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedResult:
    """A result ready to store and publish: the document, and the content it hashes."""

    outcome: str  # approved | denied
    document: ResultDocument
    content: dict[str, str]

    @property
    def license_id(self) -> str | None:
        return self.document.license_id


def _holder(decision: CaseApproved | CaseDenied) -> dict[str, str]:
    return {
        "holder_name": decision.applicant_name,
        "holder_id_number": decision.applicant_id_number,
    }


def _item(item: ItemSnapshot) -> dict[str, str]:
    return {"item_code": item.code, "item_name": item.name}


def e_licence_content(
    *, license_id: str, decision: CaseApproved, issued_at: datetime
) -> dict[str, str]:
    return {
        "license_id": license_id,
        "case_id": decision.case_id,
        **_item(decision.item),
        **_holder(decision),
        "issuing_department": decision.department,
        "issued_at": city_time(issued_at),
    }


def paper_result_content(*, decision: CaseApproved, issued_at: datetime) -> dict[str, str]:
    return {
        "kind": decision.item.result_kind,
        "case_id": decision.case_id,
        **_item(decision.item),
        **_holder(decision),
        "issuing_department": decision.department,
        "issued_at": city_time(issued_at),
    }


def decision_letter_content(*, decision: CaseDenied, issued_at: datetime) -> dict[str, str]:
    return {
        "kind": DECISION_LETTER_KIND,
        "case_id": decision.case_id,
        **_item(decision.item),
        **_holder(decision),
        "issuing_department": decision.department,
        "reason": decision.reason or "",
        "legal_basis": decision.legal_basis,
        "issued_at": city_time(issued_at),
    }


def issue_result(
    decision: CaseApproved | CaseDenied, *, issued_at: datetime, license_token: str
) -> IssuedResult:
    """The result a decision issues.

    - approval of an item whose result is an e-licence: an e-licence with a unique id, verifiable
      by id and sha256;
    - other approvals: a paper document of the item's `result_kind`;
    - denial: a decision letter (不予决定书) with the reason and the legal basis.
    Every result carries the sha256 of its canonical content.
    """
    item = decision.item
    if isinstance(decision, CaseDenied):
        content = decision_letter_content(decision=decision, issued_at=issued_at)
        document = ResultDocument(
            kind=DECISION_LETTER_KIND,
            sha256=content_sha256(content),
            title=f"不予办理决定书（{item.name}）",
        )
        return IssuedResult(DENIED, document, content)
    if item.e_license:
        license_id = license_id_for(item.code, issued_at.astimezone(CITY_TZ).date(), license_token)
        content = e_licence_content(license_id=license_id, decision=decision, issued_at=issued_at)
        document = ResultDocument(
            kind=item.result_kind or E_LICENCE_KIND,
            license_id=license_id,
            sha256=content_sha256(content),
            title=f"{item.name}（电子证照）",
        )
        return IssuedResult(APPROVED, document, content)
    content = paper_result_content(decision=decision, issued_at=issued_at)
    document = ResultDocument(
        kind=item.result_kind, sha256=content_sha256(content), title=item.name
    )
    return IssuedResult(APPROVED, document, content)


# -- the licence library (DESIGN.md §7) -------------------------------------------------------


def holder_key(id_number: str) -> str:
    """The holder as the library knows them: the ID number trimmed and upper-cased (a resident
    ID's X), so one person is one holder however the number was typed."""
    return id_number.strip().upper()


def license_issued(
    decision: CaseApproved | CaseDenied, issued: IssuedResult, *, issued_at: datetime
) -> LicenseIssued | None:
    """The library's entry for a freshly issued e-licence, or None: only an e-licence of an item
    whose result names its `license_type` goes into the library (a later case can only reuse a
    licence whose type a material asks for)."""
    license_type = decision.item.license_type
    if issued.license_id is None or not license_type or issued.document.sha256 is None:
        return None
    return LicenseIssued(
        license_id=issued.license_id,
        license_type=license_type,
        holder_id_number=holder_key(decision.applicant_id_number),
        case_id=decision.case_id,
        item_code=decision.item.code,
        issued_at=issued_at,
        sha256=issued.document.sha256,
    )


def license_revoked(revoked: CaseRevoked, *, license_id: str) -> LicenseRevoked:
    """The library's revocation of the licence a revoked decision issued: it says why and when,
    with the decision's own revocation time."""
    return LicenseRevoked(
        license_id=license_id,
        case_id=revoked.case_id,
        reason=revoked.reason,
        revoked_at=revoked.revoked_at,
    )


def license_status(*, genuine: bool, revoked: bool) -> LicenseStatus:
    """A document that is not the one on record is `invalid` whatever became of the licence;
    a genuine one is `revoked` once its decision is."""
    if not genuine:
        return LicenseStatus.invalid
    return LicenseStatus.revoked if revoked else LicenseStatus.valid


# -- how it is delivered ----------------------------------------------------------------------


class UndeliverableError(ValueError):
    """The delivery chosen at intake cannot be carried out (e.g. postal with no address)."""


@dataclass(frozen=True)
class DeliveryPlan:
    """The events a delivery method emits, in order.

    `on_issue` is emitted in the transaction that issues the result; `on_pickup` in the one
    that records the pickup at the counter (empty unless the method is `counter_pickup`).
    """

    method: DeliveryMethod
    on_issue: tuple[Step, ...]
    on_pickup: tuple[Step, ...]
    needs_tracking_number: bool

    @property
    def status_after_issue(self) -> CaseStatus:
        return _status_after(self.on_issue)

    @property
    def status_after_pickup(self) -> CaseStatus:
        return _status_after(self.on_issue + self.on_pickup)


_STATUS_OF: dict[Step, CaseStatus] = {
    CaseResultIssued: CaseStatus.result_issued,
    CaseDelivered: CaseStatus.delivered,
    CaseClosed: CaseStatus.closed,
}


def _status_after(events: tuple[Step, ...]) -> CaseStatus:
    return _STATUS_OF[events[-1]]


def plan_delivery(
    method: DeliveryMethod, *, address: str | None = None, held: bool = False
) -> DeliveryPlan:
    """electronic: issued, delivered and closed at once; postal: the same, with a tracking
    number (handed to the post); counter_pickup: issued, then delivered and closed when the
    applicant collects it at the intake office.

    `held`: a bundle's member (DESIGN.md §8), whatever the method: issued now, delivered and
    closed when its bundle goes out (the bundle's parcel has the tracking number)."""
    if held:
        if method is DeliveryMethod.postal and not (address and address.strip()):
            raise UndeliverableError("postal delivery needs an address; the case has none")
        return DeliveryPlan(method, (CaseResultIssued,), (CaseDelivered, CaseClosed), False)
    if method is DeliveryMethod.electronic:
        return DeliveryPlan(method, (CaseResultIssued, CaseDelivered, CaseClosed), (), False)
    if method is DeliveryMethod.postal:
        if not (address and address.strip()):
            raise UndeliverableError("postal delivery needs an address; the case has none")
        return DeliveryPlan(method, (CaseResultIssued, CaseDelivered, CaseClosed), (), True)
    return DeliveryPlan(method, (CaseResultIssued,), (CaseDelivered, CaseClosed), False)


@dataclass(frozen=True)
class DeliveryFacts:
    """What the delivery events of one case say."""

    case_id: str
    outcome: str
    document: ResultDocument
    method: DeliveryMethod
    issued_at: datetime
    tracking_number: str | None = None
    office_code: str | None = None
    bundle_id: str | None = None  # a member's events name its bundle (DESIGN.md §8)


def delivery_events(
    steps: tuple[Step, ...], facts: DeliveryFacts, *, at: datetime
) -> list[CaseEvent]:
    """The events of `steps` (a plan's `on_issue` or `on_pickup`), in order, all at `at`."""
    events: list[CaseEvent] = []
    for step in steps:
        event: CaseEvent
        if step is CaseResultIssued:
            event = CaseResultIssued(
                case_id=facts.case_id,
                bundle_id=facts.bundle_id,
                result=facts.document,
                issued_at=facts.issued_at,
            )
        elif step is CaseDelivered:
            event = CaseDelivered(
                case_id=facts.case_id,
                bundle_id=facts.bundle_id,
                method=facts.method,
                delivered_at=at,
                tracking_number=facts.tracking_number,
                office_code=facts.office_code,
            )
        elif step is CaseClosed:
            event = CaseClosed(
                case_id=facts.case_id,
                bundle_id=facts.bundle_id,
                outcome=facts.outcome,
                closed_at=at,
            )
        else:
            raise ValueError(f"no delivery step {step.__name__}")
        events.append(event)
    return events
