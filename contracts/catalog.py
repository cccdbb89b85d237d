"""The catalog file (DESIGN.md §3): city, divisions, offices, departments, calendar, items.

Field names are pinned: loaders and other systems rely on them. The models check shape only;
cross-references (owners, divisions, duplicates, ...) are checked by
`services.common.catalog.validate_catalog`, which lists every problem at once.

Tolerance for hand-written files: surrounding spaces are stripped, numbers are accepted where a
code is expected (YAML `code: 310101`), `name` may be left out, and an instant item may leave
out `time_limit_days` (it is 0). Unknown fields are refused, so a typo never passes silently.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from contracts.common import Category, Code, Contract, Level, Mode, Text


class CatalogModel(Contract):
    model_config = ConfigDict(str_strip_whitespace=True, coerce_numbers_to_str=True)


class OfficeKind(StrEnum):
    municipal_center = "municipal_center"
    district_center = "district_center"
    street_center = "street_center"


# The level an office's counters serve at (an office kind sits at exactly one level).
OFFICE_LEVEL: dict[OfficeKind, Level] = {
    OfficeKind.municipal_center: Level.municipal,
    OfficeKind.district_center: Level.district,
    OfficeKind.street_center: Level.street,
}
LEVEL_OFFICE: dict[Level, OfficeKind] = {level: kind for kind, level in OFFICE_LEVEL.items()}


class City(CatalogModel):
    code: Code = Field(min_length=1, max_length=32)
    name: Text = ""


class Street(CatalogModel):
    code: Code = Field(min_length=1, max_length=32)
    name: Text = ""


class District(CatalogModel):
    code: Code = Field(min_length=1, max_length=32)
    name: Text = ""
    streets: list[Street] = Field(default_factory=list)


class Office(CatalogModel):
    """Where counters are; `division` is the city, district or street the office serves."""

    code: Code = Field(min_length=1, max_length=64)
    kind: OfficeKind
    division: Code = Field(min_length=1, max_length=32)
    name: Text = ""


class Department(CatalogModel):
    """Who decides. `line` is the functional line (market, social, ...): delegation follows it."""

    code: Code = Field(min_length=1, max_length=64)
    name: Text = ""
    line: Code = Field(min_length=1, max_length=64)
    level: Level
    division: Code = Field(min_length=1, max_length=32)


class Calendar(CatalogModel):
    """Working days: Monday to Friday, minus `holidays`, plus make-up `workdays` (调休)."""

    covers_until: date
    holidays: list[date] = Field(default_factory=list)
    workdays: list[date] = Field(default_factory=list)


class MaterialSpec(CatalogModel):
    """One material of an item, and the ways it may be met without paper (DESIGN.md §7)."""

    code: Code = Field(min_length=1, max_length=64)
    name: Text = ""
    required: bool = True
    license_type: Code | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="an e-licence of this type held by the applicant satisfies it (免提交)",
    )
    commitment: bool = Field(
        default=False, description="the applicant may commit in writing instead (告知承诺)"
    )
    deferrable: bool = Field(
        default=False, description="may arrive after acceptance, within defer_days (容缺受理)"
    )


class ResultSpec(CatalogModel):
    kind: Code = Field(min_length=1, max_length=64, description="licence | decision_letter | ...")
    e_license: bool = False
    license_type: Code | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="the type of the e-licence the item issues (needs e_license: true)",
    )


class Scope(StrEnum):
    """Where an item may be applied for (DESIGN.md §9)."""

    city = "city"
    cross_region = "cross_region"


class Item(CatalogModel):
    code: Code = Field(min_length=1, max_length=64)
    name: Text = ""
    category: Category
    owner: Code = Field(min_length=1, max_length=64, description="a municipal department code")
    mode: Mode
    delegated_to: Level | None = Field(default=None, description="delegated only: district|street")
    intake_levels: list[Level] | None = Field(
        default=None,
        description="levels of the offices that may take it at a counter; "
        "absent: enterprise -> [district], individual -> [street] (municipal items: none)",
    )
    instant: bool = False
    time_limit_days: int = Field(description="committed limit in working days")
    materials: list[MaterialSpec] = Field(default_factory=list)
    defer_days: int = Field(
        default=5, ge=1, le=365, description="working days after acceptance for deferred materials"
    )
    verify_days: int = Field(
        default=20, ge=1, le=365, description="working days after approval to verify commitments"
    )
    result: ResultSpec = Field(default_factory=lambda: ResultSpec(kind="decision_letter"))
    effective_from: date | None = None
    effective_to: date | None = Field(default=None, description="inclusive; null: open-ended")
    scope: Scope = Field(
        default=Scope.city,
        description="通办范围 (DESIGN.md §9): cross_region items of this city may be taken at a "
        "partner region's counters for applicants of this city, and are forwarded here",
    )

    @model_validator(mode="before")
    @classmethod
    def _instant_needs_no_time_limit(cls, data: Any) -> Any:
        # An instant item is decided on the spot: a missing time limit means 0, not an error.
        if isinstance(data, dict) and "time_limit_days" not in data and data.get("instant") is True:
            return {**data, "time_limit_days": 0}
        return data


class QuestionType(StrEnum):
    boolean = "boolean"
    choice = "choice"


class Question(CatalogModel):
    """情形引导: a question put to the applicant; its answer decides which members apply."""

    code: Code = Field(min_length=1, max_length=64)
    text: Text = ""
    type: QuestionType = QuestionType.boolean
    options: list[Code] = Field(
        default_factory=list, description="choice only: the answers allowed (at least two)"
    )


Answer = bool | Code
"""An answer to a question: true/false for a boolean one, one of its options for a choice."""


class BundleMember(CatalogModel):
    """One item of a bundle: created when every `when` answer matches, submitted once every
    item of `after` (members of the same bundle) is approved."""

    item: Code = Field(min_length=1, max_length=64)
    when: dict[str, Answer] = Field(
        default_factory=dict, description="question code -> the answer that includes the member"
    )
    after: list[Code] = Field(
        default_factory=list, description="members (item codes) whose approval it waits for"
    )


class Bundle(CatalogModel):
    """一件事一次办 (DESIGN.md §8): several items applied for as one."""

    code: Code = Field(min_length=1, max_length=64)
    name: Text = ""
    category: Category
    lead: Code = Field(min_length=1, max_length=64, description="牵头部门: a department code")
    time_limit_days: int = Field(ge=0, description="committed for the whole bundle, working days")
    intake_levels: list[Level] | None = Field(
        default=None,
        description="levels of the offices that take the bundle at one window; absent: "
        "enterprise -> [district], individual -> [street] (the municipal center takes any)",
    )
    questions: list[Question] = Field(default_factory=list)
    members: list[BundleMember] = Field(min_length=1)
    effective_from: date | None = None
    effective_to: date | None = Field(default=None, description="inclusive; null: open-ended")


class Catalog(CatalogModel):
    """One whole catalog file. Routing assigns the version when it loads one."""

    city: City
    districts: list[District]
    offices: list[Office]
    departments: list[Department]
    calendar: Calendar
    items: list[Item]
    bundles: list[Bundle] = Field(default_factory=list, description="一件事 (DESIGN.md §8)")
