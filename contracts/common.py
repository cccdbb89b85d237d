"""Value types shared by events and REST bodies (DESIGN.md §1, §4). Field names are pinned."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

# What no text field may hold: NUL (PostgreSQL's text and jsonb cannot store it). A code also
# holds no other control character (C0, DEL, C1): codes go into log lines, topic names and
# record headers, where a line break or an escape sequence is an injection. Patterns rather
# than validator functions, so that they show in the JSON Schemas and length limits keep
# their own messages. Unpaired UTF-16 surrogates (a JSON "\ud800" escape decodes into one;
# no UTF-8 form, so neither PostgreSQL nor Kafka can carry it) never pass pydantic's string
# check of a constrained string (error type `string_unicode`).
TEXT_PATTERN = r"^[^\x00]*$"
CODE_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"

Text = Annotated[str, StringConstraints(pattern=TEXT_PATTERN)]
"""Free text (names, addresses, reasons, notes, comments): any characters PostgreSQL and
Kafka can carry. A NUL or an unpaired surrogate is refused (REST: 422 `invalid_value` naming
the field, `services.common.web`) before anything is written. Lengths stay with each field
(`Field(max_length=...)`)."""

Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN)]
"""A code or identifier (item, office, department, division, material, case and licence ids,
ID numbers, phones): like `Text`, and no control characters at all."""

UNSTORABLE_MESSAGE = (
    "holds a character tongban cannot store: NUL, an unpaired surrogate, or (in a code) "
    "another control character"
)


def is_unstorable(error: Mapping[str, Any]) -> bool:
    """Whether a pydantic error (an item of `ValidationError.errors()`) is `Text` or `Code`
    refusing a value: their pattern, or `string_unicode` (an unpaired surrogate)."""
    if error.get("type") == "string_unicode":
        return True
    ctx = error.get("ctx") or {}
    return error.get("type") == "string_pattern_mismatch" and ctx.get("pattern") in (
        TEXT_PATTERN,
        CODE_PATTERN,
    )


class Contract(BaseModel):
    """Base of every contract model: frozen, and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Category(StrEnum):
    enterprise = "enterprise"
    individual = "individual"


class Mode(StrEnum):
    online = "online"
    delegated = "delegated"
    entrusted = "entrusted"
    municipal = "municipal"


class Level(StrEnum):
    municipal = "municipal"
    district = "district"
    street = "street"


class Path(StrEnum):
    """A route's path: the item's mode, or `cross_region` (异地代收代办, DESIGN.md §9): taken
    here for an applicant of a partner region, forwarded there to be decided."""

    online = "online"
    delegated = "delegated"
    entrusted = "entrusted"
    municipal = "municipal"
    cross_region = "cross_region"


class RouteLevel(StrEnum):
    """The level that handles a routed case: the catalog's levels, or `partner` (another
    region, DESIGN.md §9)."""

    municipal = "municipal"
    district = "district"
    street = "street"
    partner = "partner"


class Channel(StrEnum):
    counter = "counter"
    online = "online"


class DeliveryMethod(StrEnum):
    counter_pickup = "counter_pickup"
    postal = "postal"
    electronic = "electronic"


class CaseStatus(StrEnum):
    awaiting_supplement = "awaiting_supplement"
    submitted = "submitted"
    routed = "routed"
    route_failed = "route_failed"
    accepted = "accepted"
    supplement_requested = "supplement_requested"
    approved = "approved"
    denied = "denied"
    result_issued = "result_issued"
    delivered = "delivered"
    closed = "closed"
    withdrawn = "withdrawn"
    waiting = "waiting"  # a bundle member waiting for its prerequisites (§8)
    approval_held = "approval_held"  # approved, held until the deferred materials arrive (§7)
    terminated = "terminated"  # deferred materials lapsed (§7)
    revoked = "revoked"  # the decision was revoked: a commitment was breached (§7)


TERMINAL_STATUSES = frozenset(
    {CaseStatus.closed, CaseStatus.withdrawn, CaseStatus.terminated, CaseStatus.revoked}
)


class Applicant(Contract):
    category: Category
    name: Text = Field(min_length=1, max_length=200)
    id_number: Code = Field(
        min_length=1,
        max_length=32,
        description="18-char resident ID (GB 11643) or unified social credit code (GB 32100)",
    )
    phone: Code | None = Field(default=None, max_length=32)
    division_code: Code = Field(
        min_length=1,
        max_length=32,
        description="jurisdiction: domicile street (individual), registered street or district",
    )


class Material(Contract):
    """One material of a submission: a document (`sha256`), an e-licence the applicant holds
    (`e_license_id`), a written commitment instead of proof (`commitment`, 告知承诺) or a promise
    to bring it after acceptance (`deferred`, 容缺受理); DESIGN.md §7."""

    code: Code = Field(min_length=1, max_length=64)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    e_license_id: Code | None = Field(default=None, max_length=128)
    commitment: bool = Field(
        default=False, description="the applicant commits in writing instead (告知承诺)"
    )
    deferred: bool = Field(
        default=False, description="brought after acceptance, within the item's defer_days"
    )


class Delivery(Contract):
    method: DeliveryMethod
    address: Text | None = Field(default=None, max_length=500)


class Application(Contract):
    """What a counter (or the online channel) submits: `POST /v1/cases` body."""

    item_code: Code = Field(min_length=1, max_length=64)
    channel: Channel
    office_code: Code | None = Field(default=None, max_length=64, description="counter only")
    applicant: Applicant
    materials: list[Material] = Field(default_factory=list, max_length=200)
    delivery: Delivery


class Route(Contract):
    """Where a case is handled, and why (DESIGN.md §3)."""

    path: Path
    level: RouteLevel
    handled_by: str = Field(
        description="a department code; on `cross_region`: the partner's city code"
    )
    same_city: bool
    rule: str
    catalog_version: int
    explanation: str
    time_limit_days: int
    instant: bool = False
    intake_office: str | None = None
    entrusted_receiver: str | None = None
    inputs: dict[str, str | None] = Field(
        default_factory=dict,
        description="the facts the rule used (item mode, jurisdiction, intake office...)",
    )


class CrossRegionOrigin(Contract):
    """Where a case adopted from a partner region was taken (DESIGN.md §9)."""

    city_code: str = Field(description="the origin region's city code")
    office_code: str | None = Field(description="the origin intake office (null: online)")
    catalog_version: int = Field(description="this region's catalog version the origin used")
    forwarded_at: AwareDatetime


class Failure(Contract):
    code: str
    explanation: str


class ItemSnapshot(Contract):
    """The catalog facts downstream services need, carried so they never re-read the catalog."""

    code: str
    name: str
    instant: bool
    time_limit_days: int
    result_kind: str
    e_license: bool
    license_type: str | None = Field(
        default=None, description="the type of the e-licence the item issues"
    )
    defer_days: int = Field(default=5, description="working days to bring deferred materials")
    verify_days: int = Field(default=20, description="working days to verify commitments")


class Handover(Contract):
    """Entrusted intake (委托收件): the basic-level office's signed, time-stamped evidence of
    what it took, which anchors the legal clock and lets the municipal department detect any
    change on the way."""

    office_code: str
    signed_at: AwareDatetime
    digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the signed payload")
    algorithm: str = Field(description="ed25519")
    key_id: str
    signature: str = Field(description="base64 signature over the digest")


class TimelineEntry(Contract):
    type: str
    time: AwareDatetime
    source: str
    note: str | None = Field(
        default=None, description="what the event did beyond its type (e.g. e-licences reused)"
    )


class ResultDocument(Contract):
    kind: str = Field(description="licence | decision_letter | ...")
    license_id: str | None = None
    sha256: str | None = None
    title: str


DateOrNone = date | None
