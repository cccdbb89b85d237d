"""Value types shared by events and REST bodies (DESIGN.md §1, §4). Field names are pinned."""

from __future__ import annotations

from datetime import date
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


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


TERMINAL_STATUSES = frozenset({CaseStatus.closed, CaseStatus.withdrawn})


class Applicant(Contract):
    category: Category
    name: str = Field(min_length=1, max_length=200)
    id_number: str = Field(
        min_length=1,
        max_length=32,
        description="18-char resident ID (GB 11643) or unified social credit code (GB 32100)",
    )
    phone: str | None = Field(default=None, max_length=32)
    division_code: str = Field(
        min_length=1,
        max_length=32,
        description="jurisdiction: domicile street (individual), registered street or district",
    )


class Material(Contract):
    code: str = Field(min_length=1, max_length=64)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    e_license_id: str | None = Field(default=None, max_length=128)


class Delivery(Contract):
    method: DeliveryMethod
    address: str | None = Field(default=None, max_length=500)


class Application(Contract):
    """What a counter (or the online channel) submits: `POST /v1/cases` body."""

    item_code: str = Field(min_length=1, max_length=64)
    channel: Channel
    office_code: str | None = Field(default=None, max_length=64, description="counter only")
    applicant: Applicant
    materials: list[Material] = Field(default_factory=list, max_length=200)
    delivery: Delivery


class Route(Contract):
    """Where a case is handled, and why (DESIGN.md §3)."""

    path: Mode
    level: Level
    handled_by: str
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


class ResultDocument(Contract):
    kind: str = Field(description="licence | decision_letter | ...")
    license_id: str | None = None
    sha256: str | None = None
    title: str


DateOrNone = date | None
