"""Routing rules (DESIGN.md §3): where a submitted case is decided, and why.

Rules run in order and the first match wins; every outcome names its rule id:

  R1  item unknown / not in force on the submission date     -> unknown_item, item_not_effective
      (read in the catalog of the applicant's region: this city's, or a partner's, see below)
  R2  applicant's jurisdiction not in the city               -> out_of_jurisdiction
      in a partner region, the item `cross_region` there     -> the partner (R2-cross-region),
                                                                the office checked as by R3
  R3  intake office (or channel) not allowed for the item    -> office_not_allowed, unknown_office
      (for a member of a bundle the catalog knows: for the bundle, its one window, §8)
  R4  online     -> the owner (municipal)
  R5  delegated  -> the owner's line at `delegated_to` in the applicant's district / street,
                    else no_receiving_department
  R6  entrusted  -> the owner (municipal); the intake office is the entrusted receiver
  R7  municipal  -> the owner (municipal)

One function per rule (`r1_item_in_force` ... `r7_municipal`), in `RULES` in this order;
`route_case` applies them. A rule returns its outcome when it decides, or None to pass the case
on; R1-R3 also resolve the facts later rules read (the item, the jurisdiction, the office).

Every outcome, failures too, carries `inputs`: the facts the rules had resolved when the
outcome was decided (see `route_case`), and an explanation in Chinese and English ("zh / en").

Jurisdiction (the applicant's `division_code`): a street implies its district. An individual's
jurisdiction is the domicile street; an individual known only by a district (or an applicant
known only by the city code) is still in the city, so R2 does not fail them: routing proceeds
and only a delegated item that needs the finer division fails (R5, no_receiving_department).

Across regions (DESIGN.md §9): the applicant's jurisdiction also decides which catalog the
item code is read in (codes may be the same in two regions): this city's when the division is
in the city, else the partner's whose catalog holds it (`partners`: city code -> that
partner's newest catalog), else this city's as before (R2 then fails it out_of_jurisdiction).
A partner applicant's case is never routed by R3-R7 here: R2 forwards it (path cross_region,
level partner, handled_by = the partner's city code, the partner's catalog version and time
limit) when the partner's item is `cross_region` and this city's counter (any office of the
city; never the online channel) took it, and fails it out_of_jurisdiction otherwise. Every
outcome about a partner applicant carries the partner's catalog version and names the partner.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date

from contracts.catalog import Department, Item, Office, Scope
from contracts.common import (
    Application,
    Channel,
    Failure,
    ItemSnapshot,
    Level,
    Mode,
    Path,
    Route,
    RouteLevel,
)
from services.policy.bundle_rules import bundle_office_allowed
from services.policy.catalog_index import CatalogIndex
from services.policy.intake_rules import (
    LEVEL_ZH,
    item_in_force,
    office_allowed,
    unknown_office_reason,
)

R1_UNKNOWN_ITEM = "R1-unknown-item"
R1_ITEM_NOT_EFFECTIVE = "R1-item-not-effective"
R2_OUT_OF_JURISDICTION = "R2-out-of-jurisdiction"
R2_CROSS_REGION = "R2-cross-region"
R3_OFFICE_NOT_ALLOWED = "R3-office-not-allowed"
R3_UNKNOWN_OFFICE = "R3-unknown-office"
R4_ONLINE = "R4-online"
R5_DELEGATED = "R5-delegated"
R5_NO_RECEIVING_DEPARTMENT = "R5-no-receiving-department"
R6_ENTRUSTED = "R6-entrusted"
R7_MUNICIPAL = "R7-municipal"


@dataclass(frozen=True, slots=True)
class RouteOutcome:
    """Exactly one of `route` / `failure`. `item` is set whenever the item is known; `inputs`
    (the facts the rules used) always, and equal to `route.inputs` on a route."""

    rule: str
    catalog_version: int
    route: Route | None = None
    failure: Failure | None = None
    item: ItemSnapshot | None = None
    inputs: Mapping[str, str | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.route is not None


@dataclass(frozen=True, slots=True)
class Jurisdiction:
    """Where the applicant belongs, as finely as their division code tells."""

    division: str
    level: Level  # of the code given: municipal (city only), district or street
    district: str | None
    street: str | None


# A partner region's newest catalog: (its version, its index), by the partner's city code.
PartnerIndexes = Mapping[str, tuple[int, CatalogIndex]]


def applicant_region(
    index: CatalogIndex, partners: PartnerIndexes, division_code: str
) -> str | None:
    """The partner region (its city code) whose catalog holds the applicant's division, or None:
    in this city, or in no region known (this city first, then the partners by city code)."""
    if index.division_level(division_code) is not None:
        return None
    for city in sorted(partners):
        if city != index.city_code and partners[city][1].division_level(division_code) is not None:
            return city
    return None


def jurisdiction(index: CatalogIndex, division_code: str) -> Jurisdiction | None:
    """The applicant's jurisdiction in this city, or None when the code is not in the city."""
    level = index.division_level(division_code)
    if level is None:
        return None
    return Jurisdiction(
        division=division_code,
        level=level,
        district=index.district_of(division_code),
        street=division_code if level is Level.street else None,
    )


def item_snapshot(item: Item) -> ItemSnapshot:
    return ItemSnapshot(
        code=item.code,
        name=item.name,
        instant=item.instant,
        time_limit_days=item.time_limit_days,
        result_kind=item.result.kind,
        e_license=item.result.e_license,
        license_type=item.result.license_type,
        defer_days=item.defer_days,
        verify_days=item.verify_days,
    )


def _named(dept: Department | None, code: str) -> str:
    return f"{dept.name}（{code}）" if dept is not None and dept.name else code


@dataclass(slots=True)
class Routing:
    """One case on its way through the rules: what it was submitted with, and the facts the
    rules have resolved so far (`inputs` grows with them)."""

    index: CatalogIndex
    catalog_version: int
    application: Application
    submitted_on: date
    inputs: dict[str, str | None]
    resolved_item: Item | None = None  # by R1
    owner: Department | None = None  # by R1: the item's owner department
    resolved_where: Jurisdiction | None = None  # by R2
    bundle_code: str | None = None  # the bundle the case is a member of (§8), if any
    office: Office | None = None  # by R3: the intake office (None on the online channel)
    # §9: the partner region whose catalog the item is read in (None: this city's), and that
    # catalog's version and index
    partner: str | None = None
    partner_catalog: tuple[int, CatalogIndex] | None = None

    @property
    def read_in(self) -> tuple[int, CatalogIndex]:
        """The catalog (version, index) the item code is read in: the applicant's region's."""
        return self.partner_catalog or (self.catalog_version, self.index)

    @property
    def in_partner(self) -> str:
        """The partner region's name and code, for explanations ("" for this city)."""
        if self.partner is None or self.partner_catalog is None:
            return ""
        city = self.partner_catalog[1].catalog.city
        return f"{city.name or city.code}（{city.code}）"

    @property
    def item(self) -> Item:
        """The item, for the rules after R1 (which stops the case when it is unknown)."""
        if self.resolved_item is None:
            raise RuntimeError("the item is resolved by R1, before this rule")
        return self.resolved_item

    @property
    def where(self) -> Jurisdiction:
        """The applicant's jurisdiction, for the rules after R2."""
        if self.resolved_where is None:
            raise RuntimeError("the jurisdiction is resolved by R2, before this rule")
        return self.resolved_where

    def fail(self, rule: str, code: str, explanation: str) -> RouteOutcome:
        return RouteOutcome(
            rule=rule,
            catalog_version=self.read_in[0],
            failure=Failure(code=code, explanation=explanation),
            item=item_snapshot(self.resolved_item) if self.resolved_item is not None else None,
            inputs=dict(self.inputs),
        )

    def routed(
        self,
        rule: str,
        *,
        path: Path,
        level: RouteLevel,
        handled_by: str,
        explanation: str,
        same_city: bool = False,
        entrusted_receiver: str | None = None,
    ) -> RouteOutcome:
        item = self.item
        route = Route(
            path=path,
            level=level,
            handled_by=handled_by,
            same_city=same_city,
            rule=rule,
            catalog_version=self.read_in[0],
            explanation=explanation,
            time_limit_days=item.time_limit_days,
            instant=item.instant,
            intake_office=self.office.code if self.office is not None else None,
            entrusted_receiver=entrusted_receiver,
            inputs=dict(self.inputs),
        )
        return RouteOutcome(
            rule=rule,
            catalog_version=route.catalog_version,
            route=route,
            item=item_snapshot(item),
            inputs=route.inputs,
        )


def r1_item_in_force(case: Routing) -> RouteOutcome | None:
    """R1: the item exists and is in force on the submission date (in the catalog of the
    applicant's region)."""
    code = case.application.item_code
    version, index = case.read_in
    item = index.items.get(code)
    if item is None:
        if case.partner is not None:
            return case.fail(
                R1_UNKNOWN_ITEM,
                "unknown_item",
                f"事项 {code} 不在申请人所在地{case.in_partner}的目录（第 {version} 版）中 / "
                f"item {code!r} is not in partner region {case.partner}'s catalog version "
                f"{version} (the applicant's jurisdiction)",
            )
        return case.fail(
            R1_UNKNOWN_ITEM,
            "unknown_item",
            f"事项 {code} 不在目录（第 {version} 版）中 / item {code!r} is not in catalog "
            f"version {version}",
        )
    owner = index.departments.get(item.owner)
    case.resolved_item, case.owner = item, owner
    case.inputs |= {
        "item_mode": item.mode.value,
        "item_category": item.category.value,
        "delegated_to": item.delegated_to.value if item.delegated_to is not None else None,
        "owner": item.owner,
        "owner_line": owner.line if owner is not None else None,
        "effective_from": item.effective_from.isoformat() if item.effective_from else None,
        "effective_to": item.effective_to.isoformat() if item.effective_to else None,
    }
    on = case.submitted_on
    if not item_in_force(item, on):
        window = f"{item.effective_from or '…'} ~ {item.effective_to or '…'}"
        if case.partner is not None:
            return case.fail(
                R1_ITEM_NOT_EFFECTIVE,
                "item_not_effective",
                f"{case.in_partner}事项 {item.code}（{item.name}）在 {on} 不在有效期内（{window}）"
                f" / item {item.code} of partner region {case.partner} is not in force on {on} "
                f"(effective {window})",
            )
        return case.fail(
            R1_ITEM_NOT_EFFECTIVE,
            "item_not_effective",
            f"事项 {item.code}（{item.name}）在 {on} 不在有效期内（{window}） / item "
            f"{item.code} is not in force on {on} (effective {window})",
        )
    return None


def r2_in_jurisdiction(case: Routing) -> RouteOutcome | None:
    """R2: the applicant belongs to this city; or to a partner region, for an item that region
    takes across regions (§9)."""
    if case.partner is not None:
        return _cross_region(case)
    division = case.application.applicant.division_code
    where = jurisdiction(case.index, division)
    if where is None:
        city = case.index.catalog.city
        return case.fail(
            R2_OUT_OF_JURISDICTION,
            "out_of_jurisdiction",
            f"申请人所在地 {division} 不属于{city.name or city.code}（{city.code}） / the "
            f"applicant's jurisdiction {division!r} is not in the city {city.code}",
        )
    case.resolved_where = where
    case.inputs |= {"applicant_district": where.district, "applicant_street": where.street}
    return None


def _cross_region(case: Routing) -> RouteOutcome:
    """R2 for a partner applicant (§9): forwarded to the partner when its item is cross_region
    and a counter of this city took it; else refused as out of jurisdiction."""
    partner, item, application = case.partner, case.item, case.application
    assert partner is not None  # by route_case
    version, index = case.read_in
    division = application.applicant.division_code
    where = jurisdiction(index, division)
    assert where is not None  # applicant_region found the division in this catalog
    case.resolved_where = where
    case.inputs |= {
        "applicant_district": where.district,
        "applicant_street": where.street,
        "item_scope": item.scope.value,
    }
    region = case.in_partner
    if item.scope is not Scope.cross_region:
        return case.fail(
            R2_OUT_OF_JURISDICTION,
            "out_of_jurisdiction",
            f"申请人所在地 {division} 属于{region}，事项 {item.code} 不在其跨省通办范围内：请到"
            f"{region}办理或使用其网上渠道 / the applicant's jurisdiction {division!r} is in "
            f"partner region {partner}, where item {item.code} is not cross_region: apply in "
            f"{partner} or on its online channel",
        )
    if application.channel is Channel.online:
        return case.fail(
            R3_OFFICE_NOT_ALLOWED,
            "office_not_allowed",
            f"跨省通办事项须在窗口收件，网上申请请使用{region}的网上渠道 / a cross-region "
            f"application is taken at a counter; online, apply on {partner}'s own online channel",
        )
    office = case.index.offices.get(application.office_code) if application.office_code else None
    if office is None:
        return case.fail(
            R3_UNKNOWN_OFFICE, "unknown_office", unknown_office_reason(application.office_code)
        )
    case.office = office
    case.inputs |= {
        "intake_office_kind": office.kind.value,
        "intake_office_district": case.index.district_of(office.division),
    }
    own = case.index.catalog.city
    return case.routed(
        R2_CROSS_REGION,
        path=Path.cross_region,
        level=RouteLevel.partner,
        handled_by=partner,
        explanation=(
            f"跨省通办（异地代收代办）：{own.name or own.code} {office.code} 收件，转申请人所在地"
            f"{region}按其目录（第 {version} 版）办理 / Across regions: taken at {office.code} "
            f"in {own.code}, forwarded to the applicant's region {partner} and decided there "
            f"by its catalog version {version}"
        ),
    )


def r3_intake_office(case: Routing) -> RouteOutcome | None:
    """R3: the intake channel/office may take the item (intake's own `office_allowed`)."""
    application = case.application
    bundle = case.index.bundles.get(case.bundle_code) if case.bundle_code else None
    if bundle is not None and any(m.item == case.item.code for m in bundle.members):
        # A bundle is taken at one window for all its members (§8): its window decides.
        case.inputs["bundle_code"] = bundle.code
        decision = bundle_office_allowed(
            case.index,
            bundle,
            [case.item],
            channel=application.channel,
            office_code=application.office_code,
            applicant_division=application.applicant.division_code,
        )
    else:
        decision = office_allowed(
            case.index,
            case.item,
            channel=application.channel,
            office_code=application.office_code,
            applicant_division=application.applicant.division_code,
        )
    if decision.office is not None:
        case.inputs |= {
            "intake_office_kind": decision.office.kind.value,
            "intake_office_district": case.index.district_of(decision.office.division),
        }
    if not decision.allowed:
        code = decision.code or "office_not_allowed"
        rule = R3_UNKNOWN_OFFICE if code == "unknown_office" else R3_OFFICE_NOT_ALLOWED
        return case.fail(rule, code, decision.message)
    case.office = decision.office
    return None


def _owner_decides(
    case: Routing,
    rule: str,
    path: Path,
    *,
    explanation: str,
    entrusted_receiver: str | None = None,
) -> RouteOutcome:
    """R4, R6, R7: the item's municipal owner department decides."""
    return case.routed(
        rule,
        path=path,
        level=RouteLevel.municipal,
        handled_by=case.item.owner,
        explanation=explanation,
        entrusted_receiver=entrusted_receiver,
    )


def r4_online(case: Routing) -> RouteOutcome | None:
    """R4: fully online, decided by the owner."""
    item, office = case.item, case.office
    if item.mode is not Mode.online:
        return None
    assisted = f"，由 {office.code} 帮办" if office is not None else ""
    assisted_en = f", assisted at {office.code}" if office is not None else ""
    return _owner_decides(
        case,
        R4_ONLINE,
        Path.online,
        explanation=(
            f"全程网办：由事项主管部门 {_named(case.owner, item.owner)} 在线办理{assisted} / "
            f"Fully online: decided by the owner department {item.owner}{assisted_en}"
        ),
    )


def r5_delegated(case: Routing) -> RouteOutcome | None:
    """R5: delegated to the owner's line at the district or street of the applicant."""
    item, owner, where, office, index = case.item, case.owner, case.where, case.office, case.index
    if item.mode is not Mode.delegated:
        return None
    level = item.delegated_to or Level.district
    division = where.street if level is Level.street else where.district
    case.inputs["receiving_division"] = division
    dept = (
        index.department(line=owner.line, level=level, division=division)
        if owner is not None and division is not None
        else None
    )
    if dept is None:
        if division is None:
            finer = "街镇" if level is Level.street else "区"
            zh = f"申请人所在地 {where.division} 未细化到{finer}"
            en = (
                f"the applicant is known only by {where.division!r} ({where.level.value}), "
                f"not by {level.value}"
            )
        else:
            line = owner.line if owner is not None else "?"
            zh = f"{division} 没有 {line} 条线的{LEVEL_ZH[level]}部门"
            en = f"no {level.value}-level department of the {line!r} line in {division!r}"
        return case.fail(
            R5_NO_RECEIVING_DEPARTMENT,
            "no_receiving_department",
            f"下放{LEVEL_ZH[level]}实施的事项 {item.code} 无承办部门：{zh} / item {item.code} "
            f"is delegated to {level.value} but has no receiving department: {en}",
        )
    intake_district = index.district_of(office.division) if office is not None else None
    handler_district = index.district_of(dept.division)
    same_city = (
        intake_district is not None
        and handler_district is not None
        and intake_district != handler_district
    )
    across = (
        f"；同城通办：{office.code} 收件，{handler_district} 办理 / same-city: taken at "
        f"{office.code} in {intake_district}, decided in {handler_district}"
        if same_city and office is not None
        else ""
    )
    return case.routed(
        R5_DELEGATED,
        path=Path.delegated,
        level=RouteLevel(level.value),
        handled_by=dept.code,
        same_city=same_city,
        explanation=(
            f"下放{LEVEL_ZH[level]}实施：由申请人所在地 {division} 的 "
            f"{_named(dept, dept.code)} 办理 / Delegated to {level.value}: decided by "
            f"{dept.code} in the applicant's {level.value} {division}{across}"
        ),
    )


def r6_entrusted(case: Routing) -> RouteOutcome | None:
    """R6: entrusted intake; the municipal owner decides, the intake office gets the result
    back."""
    item = case.item
    if item.mode is not Mode.entrusted:
        return None
    receiver = case.office.code if case.office is not None else None
    return _owner_decides(
        case,
        R6_ENTRUSTED,
        Path.entrusted,
        entrusted_receiver=receiver,
        explanation=(
            f"委托基层收件：{receiver or '线上'} 收件，由市级主管部门 "
            f"{_named(case.owner, item.owner)} 审批，结果回到收件机构 / Entrusted intake: "
            f"taken at {receiver or 'online'}, decided by the municipal owner "
            f"{item.owner}; the result returns to the intake office for pickup"
        ),
    )


def r7_municipal(case: Routing) -> RouteOutcome:
    """R7: municipal window; decides every case the rules before it passed on."""
    item = case.item
    return _owner_decides(
        case,
        R7_MUNICIPAL,
        Path.municipal,
        explanation=(
            f"市级窗口办理：由市级主管部门 {_named(case.owner, item.owner)} 办理 / Municipal: "
            f"decided by the owner department {item.owner}"
        ),
    )


Rule = Callable[[Routing], RouteOutcome | None]

# The rule table of the module docstring, in its order: the first outcome wins.
RULES: tuple[Rule, ...] = (
    r1_item_in_force,
    r2_in_jurisdiction,
    r3_intake_office,
    r4_online,
    r5_delegated,
    r6_entrusted,
    r7_municipal,
)


def route_case(
    index: CatalogIndex,
    *,
    catalog_version: int,
    application: Application,
    submitted_on: date,
    bundle_code: str | None = None,
    partners: PartnerIndexes | None = None,
) -> RouteOutcome:
    """Apply rules R1-R7 in order; the first that matches decides. `bundle_code`: the
    bundle the case is a member of (R3 checks the bundle's window when the catalog knows it).
    `partners`: the partner regions' newest catalogs by city code (§9); an applicant of one of
    them has the item read in that catalog.

    `inputs` grows as the rules resolve facts, so an outcome names what it was decided on:

      always              item_code, catalog_version, submitted_on, channel, intake_office,
                          applicant_category, applicant_division
      item known          item_mode, item_category, delegated_to, owner, owner_line,
                          effective_from, effective_to
      in the city (R2)    applicant_district, applicant_street
      office known (R3)   intake_office_kind, intake_office_district
      delegated (R5)      receiving_division (the district/street whose unit decides)
      partner applicant   partner_city, partner_catalog_version; item_scope (R2)
    """
    applicant = application.applicant
    partners = partners or {}
    partner = applicant_region(index, partners, applicant.division_code)
    case = Routing(
        index=index,
        catalog_version=catalog_version,
        application=application,
        submitted_on=submitted_on,
        bundle_code=bundle_code,
        inputs={
            "item_code": application.item_code,
            "catalog_version": str(catalog_version),
            "submitted_on": submitted_on.isoformat(),
            "channel": application.channel.value,
            "intake_office": application.office_code,
            "applicant_category": applicant.category.value,
            "applicant_division": applicant.division_code,
        },
    )
    if partner is not None:
        case.partner, case.partner_catalog = partner, partners[partner]
        case.inputs |= {
            "partner_city": partner,
            "partner_catalog_version": str(partners[partner][0]),
        }
    for rule in RULES:
        outcome = rule(case)
        if outcome is not None:
            return outcome
    raise AssertionError("R7 decides every case that reaches it")  # pragma: no cover
