"""intake's reads: a case as its caller may see it, its timeline, the stored answer of an
Idempotency-Key, the catalog items in force, and the licence library (what a submission may
reuse, what a holder holds). No writes here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.common import (
    Applicant,
    Application,
    CaseStatus,
    Failure,
    Material,
    Route,
    TimelineEntry,
)
from contracts.rest import CaseView, HeldLicense, ItemView, LicenseStatus, SubmissionResponse
from services.common.catalog_follower import CatalogFollower
from services.common.city import CITY_TZ
from services.common.logs import mask_id_number, mask_personal_data
from services.common.principals import Principal
from services.common.refusals import FieldError, Refusal, Refused, refused
from services.intake import models
from services.intake.domain import access
from services.intake.domain.deferral import deferred_view
from services.intake.domain.licenses import LibraryLicense, holder_key, reuse_note
from services.policy.catalog_index import CatalogIndex
from services.policy.intake_rules import effective_intake_levels

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
        ItemView(
            code=i.code,
            name=i.name,
            category=i.category.value,
            mode=i.mode.value,
            intake_levels=sorted(lvl.value for lvl in effective_intake_levels(i)),
            instant=i.instant,
            time_limit_days=i.time_limit_days,
            materials=[m.model_dump(mode="json") for m in i.materials],
            effective_from=i.effective_from,
            effective_to=i.effective_to,
        )
        for i in index.catalog.items
    ]


async def load_case(session: AsyncSession, case_id: str, *, lock: bool = False) -> Any:
    """The case's row (locked for the transaction with `lock`); 404 when there is none."""
    query = select(models.cases).where(models.cases.c.case_id == case_id)
    row = (await session.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise Refused(access.case_not_found(case_id))
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
    )


async def replay_idempotent(
    session: AsyncSession, key: str, digest: str
) -> SubmissionResponse | None:
    """The stored answer for a key already used with the same body; 409 for another body."""
    row = (
        await session.execute(
            select(models.idempotency_keys).where(models.idempotency_keys.c.key == key)
        )
    ).first()
    if row is None:
        return None
    if row.request_hash != digest:
        raise refused(
            409,
            "idempotency_key_reused",
            "Idempotency-Key already used for another submission",
            f"The key was first used for case {row.case_id} with a different body. Send a new "
            "key for a new submission, or resend the original body to get that case back.",
            errors=(FieldError("Idempotency-Key", "reused with a different body"),),
        )
    return SubmissionResponse.model_validate(row.response)


# -- the licence library -----------------------------------------------------------------------


async def commitment_barred(session: AsyncSession, holder: str) -> bool:
    """Whether the holder (`holder_key`) breached a commitment before (告知承诺)."""
    barred = models.barred_holders.c
    found = await session.execute(
        select(exists().where(barred.holder_id_number == holder_key(holder)))
    )
    return bool(found.scalar())


async def library_for(
    session: AsyncSession, application: Application, materials: Sequence[Material] | None = None
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
