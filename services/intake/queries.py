"""intake's reads: a case as its caller may see it, its timeline, the stored answer of an
Idempotency-Key, the catalog items in force, the licence library (what a submission may
reuse, what a holder holds), bundles (those offered today with their questions and
materials; a bundle with its members, deadline and one timeline), and across regions the
partners, their items a counter here takes and the forwarded cases refused. No writes here."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import Select, Table, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.catalog import Item
from contracts.common import (
    Applicant,
    Application,
    CaseStatus,
    Failure,
    Level,
    Material,
    Route,
    TimelineEntry,
)
from contracts.rest import (
    AdoptionRefusalView,
    BundleApplication,
    BundleCatalogMember,
    BundleCatalogView,
    BundleMaterialView,
    BundleMemberView,
    BundleQuestionView,
    BundleStatus,
    BundleSubmissionResponse,
    BundleTimelineEntry,
    BundleView,
    CaseView,
    HeldLicense,
    ItemView,
    LicenseStatus,
    PartnerView,
    SubmissionResponse,
)
from services.common import workdays
from services.common.catalog_follower import CatalogFollower
from services.common.city import CITY_TZ
from services.common.logs import mask_id_number, mask_personal_data
from services.common.principals import Principal
from services.common.refusals import FieldError, Refusal, Refused, refused
from services.intake import models
from services.intake.domain import access
from services.intake.domain.deferral import deferred_view
from services.intake.domain.licenses import LibraryLicense, holder_key, reuse_note
from services.policy.bundle_rules import bundle_in_force, bundle_intake_levels
from services.policy.catalog_index import CatalogIndex
from services.policy.intake_rules import effective_intake_levels
from services.policy.partner_rules import cross_region_items

NO_CATALOG_IN_FORCE = Refusal(
    503,
    "no_catalog",
    "No catalog is in force yet",
    "An administrator must load the catalog (tongban catalog load FILE).",
    extra={"retry_after": 5},
)


def catalog_in_force(catalogs: CatalogFollower[CatalogIndex]) -> CatalogIndex:
    """The newest catalog version this process holds; 503 until an administrator loads one."""
    index = catalogs.latest
    if index is None:
        raise Refused(NO_CATALOG_IN_FORCE)
    return index


def items(index: CatalogIndex) -> list[ItemView]:
    """The catalog items in force, as `GET /v1/items` lists them."""
    return [
        item_view(i, sorted(lvl.value for lvl in effective_intake_levels(i)))
        for i in index.catalog.items
    ]


def partner_items(partner: CatalogIndex, today: date) -> list[ItemView]:
    """A partner region's items a counter here takes today (`GET /v1/items?city=`, §9): its
    cross_region items in force, at any level of office here."""
    every_level = sorted(level.value for level in Level)
    return [item_view(i, every_level) for i in cross_region_items(partner, today)]


def item_view(item: Item, intake_levels: list[str]) -> ItemView:
    return ItemView(
        code=item.code,
        name=item.name,
        category=item.category.value,
        mode=item.mode.value,
        intake_levels=intake_levels,
        instant=item.instant,
        time_limit_days=item.time_limit_days,
        materials=[m.model_dump(mode="json") for m in item.materials],
        effective_from=item.effective_from,
        effective_to=item.effective_to,
        scope=item.scope.value,
    )


def partner_of(intake_partners: dict[str, CatalogIndex], city: str) -> CatalogIndex:
    """The partner region of city code `city`; 404 `unknown_partner` when none is known."""
    partner = intake_partners.get(city)
    if partner is None:
        known = ", ".join(sorted(intake_partners)) or "none yet"
        raise refused(
            404,
            "unknown_partner",
            "Unknown partner region",
            f"{city} is neither this region's city nor a partner region's (partners: {known}); "
            "GET /v1/partners lists them",
        )
    return partner


def partners(
    intake_partners: dict[str, CatalogIndex], versions: dict[str, int], today: date
) -> list[PartnerView]:
    """`GET /v1/partners`: the partner regions known here, by city code."""
    return [
        PartnerView(
            city_code=city,
            name=partner.catalog.city.name,
            catalog_version=versions.get(city, 0),
            cross_region_items=len(cross_region_items(partner, today)),
        )
        for city, partner in sorted(intake_partners.items())
    ]


async def load_case(session: AsyncSession, case_id: str, *, lock: bool = False) -> Any:
    """The case's row (locked for the transaction with `lock`); 404 when there is none."""
    query = select(models.cases).where(models.cases.c.case_id == case_id)
    return await _row_or_refused(session, query, lock=lock, refusal=access.case_not_found(case_id))


async def _row_or_refused(
    session: AsyncSession, query: Select[Any], *, lock: bool, refusal: Refusal
) -> Any:
    """The row `query` finds (locked for the transaction with `lock`), or `refusal` raised."""
    row = (await session.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise Refused(refusal)
    return row


async def case_of_the_office(
    session: AsyncSession, case_id: str, principal: Principal, *, lock: bool = False
) -> Any:
    """The case, when the caller's office took it; else 404 as for a case that does not exist."""
    case = await load_case(session, case_id, lock=lock)
    if not access.acts_for(principal, case.office_code, case.channel):
        raise Refused(access.case_not_found(case_id))
    return case


async def readable_case(
    session: AsyncSession, case_id: str, principal: Principal
) -> tuple[Any, list[TimelineEntry]]:
    """The case and its timeline, when the caller may read it (else 404 as for a case that
    does not exist)."""
    # The case row and its timeline from one snapshot: under READ COMMITTED each statement
    # sees its own, and a timeline batch committing between the two reads showed a status
    # older than the events listed (an `accepted` case as `routed`).
    await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    case = await load_case(session, case_id)
    if not access.reads(
        principal, case.office_code, case.channel, (case.route or {}).get("handled_by")
    ):
        raise Refused(access.case_not_found(case_id))
    entries = await session.execute(
        select(models.timeline)
        .where(models.timeline.c.case_id == case_id)
        .order_by(models.timeline.c.time, models.timeline.c.event_id)
    )
    timeline = [
        TimelineEntry(
            type=e.type,
            time=e.time.astimezone(CITY_TZ),
            source=e.source,
            note=reuse_note(e.type, e.data),
        )
        for e in entries
    ]
    return case, timeline


def case_view(case: Any, timeline: list[TimelineEntry], *, clear: bool) -> CaseView:
    """The REST view of a case row; the applicant's personal data masked unless `clear`."""
    applicant = case.application["applicant"]
    return CaseView(
        case_id=case.case_id,
        status=CaseStatus(case.status),
        item_code=case.item_code,
        channel=case.channel,
        office_code=case.office_code,
        route=Route.model_validate(case.route) if case.route else None,
        failure=Failure.model_validate(case.failure) if case.failure else None,
        deadline=case.deadline,
        missing_materials=list(case.missing_materials),
        timeline=timeline,
        applicant=Applicant.model_validate(applicant if clear else mask_personal_data(applicant)),
        deferred_materials=deferred_view(case.deferred_materials, case.deferred_due),
        bundle_id=case.bundle_id,
    )


async def replay_idempotent(
    session: AsyncSession, key: str, digest: str
) -> SubmissionResponse | None:
    """The stored answer for a key already used with the same body; 409 for another body."""
    response = await _stored_answer(session, models.idempotency_keys, key, digest, "case")
    return None if response is None else SubmissionResponse.model_validate(response)


async def _stored_answer(
    session: AsyncSession, keys: Table, key: str, digest: str, what: str
) -> dict[str, Any] | None:
    """The answer stored with an Idempotency-Key (of a case, or a bundle: `what`) for the same
    body; None for a key not used yet; 409 `idempotency_key_reused` for another body."""
    row = (await session.execute(select(keys).where(keys.c.key == key))).first()
    if row is None:
        return None
    if row.request_hash != digest:
        first = getattr(row, f"{what}_id")
        raise refused(
            409,
            "idempotency_key_reused",
            "Idempotency-Key already used for another submission",
            f"The key was first used for {what} {first} with a different body. Send a new "
            f"key for a new submission, or resend the original body to get that {what} back.",
            errors=(FieldError("Idempotency-Key", "reused with a different body"),),
        )
    response: dict[str, Any] = row.response
    return response


# -- the licence library -----------------------------------------------------------------------


async def commitment_barred(session: AsyncSession, holder: str) -> bool:
    """Whether the holder (`holder_key`) breached a commitment before (告知承诺)."""
    barred = models.barred_holders.c
    found = await session.execute(
        select(exists().where(barred.holder_id_number == holder_key(holder)))
    )
    return bool(found.scalar())


async def library_for(
    session: AsyncSession,
    application: Application | BundleApplication,
    materials: Sequence[Material] | None = None,
) -> list[LibraryLicense]:
    """What a submission may reuse or names: the applicant's licences and those its materials
    (or the supplement's `materials`) name, another holder's included so they can be refused
    for it."""
    lic = models.licenses.c
    given = application.materials if materials is None else materials
    named = sorted({m.e_license_id for m in given if m.e_license_id})
    holder = holder_key(application.applicant.id_number)
    rows = await session.execute(
        select(
            lic.license_id, lic.license_type, lic.holder_id_number, lic.issued_at, lic.revoked_at
        ).where(or_(lic.holder_id_number == holder, lic.license_id.in_(named)))
    )
    return [
        LibraryLicense(
            license_id=r.license_id,
            license_type=r.license_type,
            holder_id_number=r.holder_id_number,
            issued_at=r.issued_at,
            revoked=r.revoked_at is not None,
        )
        for r in rows
    ]


def _applicant_of_a_case_at(holder: str, scope: str) -> Any:
    """A case of `scope` (an office, or `online`) whose applicant is `holder`."""
    c = models.cases.c
    at_scope = c.channel == "online" if scope == access.ONLINE_SCOPE else c.office_code == scope
    return exists().where(
        func.upper(func.btrim(c.application["applicant"]["id_number"].astext)) == holder,
        at_scope,
    )


async def held_licenses(
    session: AsyncSession, holder: str, principal: Principal
) -> list[HeldLicense]:
    """`GET /v1/licenses?holder=`: the holder's licences, newest first, as `principal` may see
    them (`access.library_scope`): a clerk only a holder who is the applicant of a case of
    their office (or channel), and otherwise an empty list, the same answer as for a holder
    with no licence; operators and admins every holder, the ID number masked."""
    lic = models.licenses.c
    query = (
        select(models.licenses)
        .where(lic.holder_id_number == holder, lic.license_type.is_not(None))
        .order_by(lic.issued_at.desc(), lic.license_id)
    )
    scope = access.library_scope(principal)
    if scope is not None:
        query = query.where(_applicant_of_a_case_at(holder, scope))
    clear = access.sees_personal_data(principal)
    return [
        HeldLicense(
            license_id=r.license_id,
            license_type=r.license_type,
            holder_id_number=r.holder_id_number if clear else mask_id_number(r.holder_id_number),
            item_code=r.item_code,
            issued_at=r.issued_at.astimezone(CITY_TZ),
            status=LicenseStatus.revoked if r.revoked_at is not None else LicenseStatus.valid,
            revoked_at=r.revoked_at.astimezone(CITY_TZ) if r.revoked_at is not None else None,
        )
        for r in await session.execute(query)
    ]


# -- bundles (一件事一次办, DESIGN.md §8) ----------------------------------------------------------


def bundle_catalog(index: CatalogIndex, today: date) -> list[BundleCatalogView]:
    """`GET /v1/bundles`: the bundles offered today, each with its questions, its members and
    the union of their materials (which items take each), so a counter terminal renders the
    one form. A bundle without a start is offered while its unconditional members are all in
    force (a conditional one is checked once the answers create it)."""
    out = []
    for bundle in index.catalog.bundles:
        items = {m.item: index.items.get(m.item) for m in bundle.members}
        unconditional = [items[m.item] for m in bundle.members if not m.when]
        if not bundle_in_force(bundle, unconditional, today):
            continue
        materials: dict[str, BundleMaterialView] = {}
        for member in bundle.members:
            item = items[member.item]
            for spec in item.materials if item is not None else []:
                seen = materials.get(spec.code)
                if seen is None:
                    materials[spec.code] = BundleMaterialView(
                        code=spec.code,
                        name=spec.name,
                        required=spec.required,
                        items=[member.item],
                        license_type=spec.license_type,
                        commitment=spec.commitment,
                        deferrable=spec.deferrable,
                    )
                else:  # taken by several members: allowed only as all of them allow it
                    materials[spec.code] = seen.model_copy(
                        update={
                            "required": seen.required or spec.required,
                            "items": [*seen.items, member.item],
                            "license_type": seen.license_type or spec.license_type,
                            "commitment": seen.commitment and spec.commitment,
                            "deferrable": seen.deferrable and spec.deferrable,
                        }
                    )
        out.append(
            BundleCatalogView(
                code=bundle.code,
                name=bundle.name,
                category=bundle.category.value,
                lead=bundle.lead,
                time_limit_days=bundle.time_limit_days,
                intake_levels=sorted(lvl.value for lvl in bundle_intake_levels(bundle)),
                questions=[
                    BundleQuestionView(
                        code=q.code, text=q.text, type=q.type.value, options=list(q.options)
                    )
                    for q in bundle.questions
                ],
                members=[
                    BundleCatalogMember(
                        item=m.item,
                        name=item.name if (item := items[m.item]) is not None else "",
                        when=dict(m.when),
                        after=list(m.after),
                    )
                    for m in bundle.members
                ],
                materials=list(materials.values()),
                effective_from=bundle.effective_from,
                effective_to=bundle.effective_to,
            )
        )
    return out


def bundle_not_found(bundle_id: str) -> Refusal:
    """A bundle that does not exist, or not for this caller: the two answers are the same."""
    return Refusal(
        404,
        "bundle_not_found",
        "No such bundle",
        f"There is no bundle {bundle_id!r}. Check the id from the 201 answer.",
    )


async def load_bundle(session: AsyncSession, bundle_id: str, *, lock: bool = False) -> Any:
    """The bundle's row (locked for the transaction with `lock`); 404 when there is none."""
    query = select(models.bundles).where(models.bundles.c.bundle_id == bundle_id)
    return await _row_or_refused(session, query, lock=lock, refusal=bundle_not_found(bundle_id))


async def bundle_of_the_office(
    session: AsyncSession, bundle_id: str, principal: Principal, *, lock: bool = False
) -> Any:
    """The bundle, when the caller's office took it; else 404 as for one that does not exist."""
    bundle = await load_bundle(session, bundle_id, lock=lock)
    if not access.acts_for(principal, bundle.office_code, bundle.channel):
        raise Refused(bundle_not_found(bundle_id))
    return bundle


async def lock_bundles(session: AsyncSession, bundle_ids: Sequence[str]) -> list[str]:
    """Lock these bundles' rows, in one order (bundles before their members' cases); the ids
    of those intake holds."""
    locked = await session.execute(
        select(models.bundles.c.bundle_id)
        .where(models.bundles.c.bundle_id.in_(sorted(bundle_ids)))
        .order_by(models.bundles.c.bundle_id)
        .with_for_update()
    )
    return list(locked.scalars())


async def bundle_members(session: AsyncSession, bundle_id: str, *, lock: bool = False) -> list[Any]:
    """The member case rows, in the order they were created (locked with `lock`)."""
    query = (
        select(models.cases)
        .where(models.cases.c.bundle_id == bundle_id)
        .order_by(models.cases.c.case_id)
    )
    rows = list(await session.execute(query.with_for_update() if lock else query))
    return sorted(rows, key=lambda r: (r.created_at, r.case_id))


async def bundle_of_case(session: AsyncSession, case_id: str) -> str | None:
    found = await session.execute(
        select(models.cases.c.bundle_id).where(models.cases.c.case_id == case_id)
    )
    return found.scalar()


async def bundle_missing(session: AsyncSession, bundle_id: str) -> list[str]:
    """Every material the bundle's members still miss, each code once."""
    members = await bundle_members(session, bundle_id)
    return list(dict.fromkeys(code for m in members for code in m.missing_materials))


async def licences_of_cases(
    session: AsyncSession, case_ids: Sequence[str]
) -> dict[tuple[str, str], str]:
    """(case id, license_type) -> the valid licence the case issued (intake's library)."""
    lic = models.licenses.c
    rows = await session.execute(
        select(lic.case_id, lic.license_type, lic.license_id)
        .where(
            lic.case_id.in_(list(case_ids)),
            lic.license_type.is_not(None),
            lic.revoked_at.is_(None),
        )
        .order_by(lic.issued_at)
    )
    return {(r.case_id, r.license_type): r.license_id for r in rows}


async def replay_bundle(
    session: AsyncSession, key: str, digest: str
) -> BundleSubmissionResponse | None:
    """The stored answer for a bundle key already used with the same body; 409 for another."""
    response = await _stored_answer(session, models.bundle_keys, key, digest, "bundle")
    return None if response is None else BundleSubmissionResponse.model_validate(response)


async def readable_bundle(
    session: AsyncSession, bundle_id: str, principal: Principal
) -> tuple[Any, list[Any], list[BundleTimelineEntry]]:
    """The bundle, its members and its one timeline (its own events and its members', in time
    order), when the caller may read it: as a case, by its office's clerks, by the reviewers
    of a member's department, by operators and admins (else 404 as for none)."""
    await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    bundle = await load_bundle(session, bundle_id)
    members = await bundle_members(session, bundle_id)
    handlers = [(m.route or {}).get("handled_by") for m in members] or [None]
    if not any(access.reads(principal, bundle.office_code, bundle.channel, h) for h in handlers):
        raise Refused(bundle_not_found(bundle_id))
    own = await session.execute(
        select(models.bundle_timeline).where(models.bundle_timeline.c.bundle_id == bundle_id)
    )
    of_members = await session.execute(
        select(models.timeline).where(models.timeline.c.case_id.in_([m.case_id for m in members]))
    )
    entries = [
        (
            e.time,
            e.event_id,
            BundleTimelineEntry(
                type=e.type, time=e.time.astimezone(CITY_TZ), source=e.source, case_id=None
            ),
        )
        for e in own
    ] + [
        (
            e.time,
            e.event_id,
            BundleTimelineEntry(
                type=e.type,
                time=e.time.astimezone(CITY_TZ),
                source=e.source,
                note=reuse_note(e.type, e.data) or _ending_note(e.type, e.data),
                case_id=e.case_id,
            ),
        )
        for e in of_members
    ]
    entries.sort(key=lambda t: (t[0], t[1]))
    return bundle, members, [entry for _t, _id, entry in entries]


def _ending_note(event_type: str, data: dict[str, Any] | None) -> str | None:
    """A member withdrawn with a reason (a prerequisite that ended, §8) says so."""
    if event_type == "gov.case.withdrawn.v1" and data and data.get("reason"):
        return f"reason: {data['reason']}"
    return None


def bundle_deadline(
    bundle: Any,
    members: Sequence[Any],
    timeline: Sequence[BundleTimelineEntry],
    index: CatalogIndex | None,
) -> date | None:
    """The first member acceptance's date + the bundle's time_limit_days working days (on the
    catalog copy's calendar); None before any acceptance, or past the calendar."""
    accepted = [
        e.time for e in timeline if e.case_id is not None and e.type == "gov.case.accepted.v1"
    ]
    if not accepted or index is None:
        return None
    first = min(accepted).astimezone(CITY_TZ).date()
    return workdays.deadline(index.calendar, first, bundle.time_limit_days)


def bundle_view(
    bundle: Any,
    members: Sequence[Any],
    timeline: list[BundleTimelineEntry],
    *,
    index: CatalogIndex | None,
    clear: bool,
) -> BundleView:
    """The REST view of a bundle; the applicant's personal data masked unless `clear`."""
    applicant = bundle.applicant
    return BundleView(
        bundle_id=bundle.bundle_id,
        bundle_code=bundle.bundle_code,
        bundle_name=bundle.bundle_name,
        status=BundleStatus(bundle.status),
        deadline=bundle_deadline(bundle, members, timeline, index),
        office_code=bundle.office_code,
        members=[
            BundleMemberView(
                case_id=m.case_id,
                item_code=m.item_code,
                status=CaseStatus(m.status),
                route=Route.model_validate(m.route) if m.route else None,
                after=list(m.after or []),
                failure=Failure.model_validate(m.failure) if m.failure else None,
                deadline=m.deadline,
            )
            for m in members
        ],
        excluded=list(bundle.excluded),
        missing_materials=list(dict.fromkeys(c for m in members for c in m.missing_materials)),
        timeline=timeline,
        applicant=Applicant.model_validate(applicant if clear else mask_personal_data(applicant)),
    )


# -- across regions (DESIGN.md §9) ---------------------------------------------------------------


async def refused_adoptions(session: AsyncSession, *, limit: int) -> list[AdoptionRefusalView]:
    """`GET /v1/xregion/refused`: the cases partners forwarded here and this region did not
    adopt, newest first."""
    refusals = models.adoption_refusals.c
    rows = await session.execute(
        select(models.adoption_refusals)
        .order_by(refusals.refused_at.desc(), refusals.event_id)
        .limit(limit)
    )
    return [AdoptionRefusalView.model_validate(dict(r._mapping)) for r in rows]
