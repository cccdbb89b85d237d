"""approval's reads: a case (as a row, as the review's state, as its REST view), the worklist,
the follow-ups, the refused handovers, the SLA board and the bundles' clocks; and the mapping
between a case's row and the review's state, both ways. No writes here."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import case as sql_case
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.common import Application, CaseStatus, ItemSnapshot, Route
from contracts.events import ClockStep, DecisionKind
from contracts.rest import (
    ApprovalCaseView,
    BundleAtRisk,
    CaseAtRisk,
    FollowupEntry,
    HandoverProblemEntry,
    LicensedMaterial,
    SlaBoardRow,
    VerificationEntry,
    VerificationStatus,
    WorklistEntry,
)
from services.approval import models
from services.approval.domain.clock import MemberClock, open_members
from services.approval.domain.review import (
    LAPSABLE_STATUSES,
    OPEN_STATUSES,
    CaseState,
    Pause,
    Unrouted,
    Verification,
)

cases = models.cases
followups = models.followups

# -- a case's row <-> the review's state -------------------------------------------------------


async def deciding_partner(session: AsyncSession, case_id: str) -> str | None:
    """The partner region's city code if the case was routed here on the path `cross_region`
    (decided there, DESIGN.md §9), else None."""
    t = models.cross_region_cases.c
    found = await session.execute(select(t.partner_city).where(t.case_id == case_id))
    partner: str | None = found.scalar()
    return partner


def case_state(row: Any) -> CaseState | Unrouted:
    if row.route is None:
        return Unrouted(case_id=row.case_id, status=CaseStatus(row.status))
    return CaseState(
        case_id=row.case_id,
        department=row.department,
        status=CaseStatus(row.status),
        item=ItemSnapshot.model_validate(row.item),
        route=Route.model_validate(row.route),
        application=Application.model_validate(row.application),
        accepted_at=row.accepted_at,
        deadline=row.deadline,
        time_limit_days=row.time_limit_days,
        missing_materials=tuple(row.missing_materials),
        pauses=tuple(
            Pause(
                requested_at=datetime.fromisoformat(p["requested_at"]),
                supplemented_at=datetime.fromisoformat(p["supplemented_at"])
                if p.get("supplemented_at")
                else None,
            )
            for p in row.pauses
        ),
        decision=DecisionKind(row.decision) if row.decision else None,
        reason=row.reason,
        legal_basis=row.legal_basis,
        decided_at=row.decided_at,
        withdrawn_at=row.withdrawn_at,
        handover_problem=row.handover_problem,
        deferred=tuple(row.deferred),
        deferred_due=row.deferred_due,
        bundle_id=row.bundle_id,
    )


def case_values(state: CaseState, now: datetime) -> dict[str, Any]:
    """The row's columns of a review state (the handlers save them)."""
    return {
        "case_id": state.case_id,
        "department": state.department,
        "status": state.status.value,
        "item": state.item.model_dump(mode="json"),
        "route": state.route.model_dump(mode="json"),
        "application": state.application.model_dump(mode="json"),
        "accepted_at": state.accepted_at,
        "deadline": state.deadline,
        "time_limit_days": state.time_limit_days,
        "missing_materials": list(state.missing_materials),
        "pauses": [
            {
                "requested_at": p.requested_at.isoformat(),
                "supplemented_at": p.supplemented_at.isoformat() if p.supplemented_at else None,
            }
            for p in state.pauses
        ],
        "decision": state.decision.value if state.decision else None,
        "reason": state.reason,
        "legal_basis": state.legal_basis,
        "decided_at": state.decided_at,
        "withdrawn_at": state.withdrawn_at,
        "handover_problem": state.handover_problem,
        "deferred": list(state.deferred),
        "deferred_due": state.deferred_due,
        "bundle_id": state.bundle_id,
        "updated_at": now,
    }


# -- one case ----------------------------------------------------------------------------------


async def load_row(session: AsyncSession, case_id: str, *, lock: bool = False) -> Any:
    """The case's row, or None; `lock`: held (FOR UPDATE) until the transaction ends."""
    query = select(cases).where(cases.c.case_id == case_id)
    return (await session.execute(query.with_for_update() if lock else query)).first()


async def load_case(
    session: AsyncSession, case_id: str, *, lock: bool = False
) -> CaseState | Unrouted | None:
    row = await load_row(session, case_id, lock=lock)
    return None if row is None else case_state(row)


def licensed_materials(application: Any) -> list[LicensedMaterial]:
    """The materials that came from e-licences (reused by intake or named by the applicant),
    and which licence: the reviewer need not ask for them (电子证照免提交)."""
    materials = (application or {}).get("materials") or []
    return [
        LicensedMaterial(material=m["code"], license_id=m["e_license_id"])
        for m in materials
        if m.get("e_license_id")
    ]


def case_view(row: Any, verification: Verification | None = None) -> ApprovalCaseView:
    return ApprovalCaseView(
        case_id=row.case_id,
        status=CaseStatus(row.status),
        department=row.department,
        item_code=row.item["code"] if row.item else None,
        accepted_at=row.accepted_at,
        deadline=row.deadline,
        time_limit_days=row.time_limit_days,
        missing_materials=list(row.missing_materials),
        supplement_rounds=len(row.pauses),
        decision=DecisionKind(row.decision) if row.decision else None,
        reason=row.reason,
        legal_basis=row.legal_basis,
        decided_at=row.decided_at,
        withdrawn_at=row.withdrawn_at,
        handover_problem=row.handover_problem,
        deferred_outstanding=list(row.deferred),
        deferred_due=row.deferred_due,
        licensed_materials=licensed_materials(row.application),
        verification=verification_entry(verification) if verification is not None else None,
        bundle_id=row.bundle_id,
    )


# -- lists -------------------------------------------------------------------------------------


async def worklist(
    session: AsyncSession, *, department: str, status: CaseStatus | None, limit: int
) -> list[WorklistEntry]:
    """A department's undecided cases (or those in `status`), oldest deadline first; a case
    without a known deadline last."""
    statuses = [status.value] if status else [s.value for s in OPEN_STATUSES]
    rows = await session.execute(
        select(cases)
        .where(cases.c.department == department, cases.c.status.in_(statuses))
        .order_by(cases.c.deadline.asc().nulls_last(), cases.c.accepted_at, cases.c.case_id)
        .limit(limit)
    )
    return [
        WorklistEntry(
            case_id=r.case_id,
            item_code=r.item["code"],
            item_name=r.item["name"],
            status=CaseStatus(r.status),
            path=r.route["path"],
            level=r.route["level"],
            instant=bool(r.route.get("instant") or r.item["instant"]),
            accepted_at=r.accepted_at,
            deadline=r.deadline,
            applicant_name=r.application["applicant"]["name"],
            licensed_materials=licensed_materials(r.application),
            bundle_id=r.bundle_id,
        )
        for r in rows
        if r.route is not None
    ]


def _followup_entry(row: Any) -> FollowupEntry:
    return FollowupEntry(
        case_id=row.case_id,
        department=row.department,
        rating=row.rating,
        comment=row.comment,
        opened_at=row.opened_at,
        deadline=row.deadline,
    )


async def followup(session: AsyncSession, case_id: str) -> FollowupEntry:
    """The case's follow-up (there is one: the caller just answered it)."""
    row = (await session.execute(select(followups).where(followups.c.case_id == case_id))).one()
    return _followup_entry(row)


async def open_followups(
    session: AsyncSession, *, department: str, limit: int
) -> list[FollowupEntry]:
    """A department's unanswered follow-ups, nearest deadline first."""
    rows = await session.execute(
        select(followups)
        .where(followups.c.department == department, followups.c.answered_at.is_(None))
        .order_by(followups.c.deadline.asc().nulls_last(), followups.c.opened_at)
        .limit(limit)
    )
    return [_followup_entry(r) for r in rows]


async def handover_problems(session: AsyncSession, *, limit: int) -> list[HandoverProblemEntry]:
    """Entrusted cases held because their handover did not verify, latest first."""
    rows = await session.execute(
        select(cases)
        .where(cases.c.handover_problem.is_not(None))
        .order_by(cases.c.updated_at.desc())
        .limit(limit)
    )
    return [
        HandoverProblemEntry(
            case_id=r.case_id,
            department=r.department,
            office_code=(r.route or {}).get("entrusted_receiver"),
            problem=r.handover_problem,
            updated_at=r.updated_at,
        )
        for r in rows
    ]


# -- verifications of commitments (告知承诺) ----------------------------------------------------

verifications = models.verifications


def verification_values(verification: Verification) -> dict[str, Any]:
    """The row's columns of a verification (the handlers save them)."""
    return {
        "case_id": verification.case_id,
        "department": verification.department,
        "item_code": verification.item_code,
        "committed": list(verification.committed),
        "approved_at": verification.approved_at,
        "due": verification.due,
        "status": verification.status.value,
        "note": verification.note,
        "verified_at": verification.verified_at,
    }


def verification_of(row: Any) -> Verification:
    return Verification(
        case_id=row.case_id,
        department=row.department,
        item_code=row.item_code,
        committed=tuple(row.committed),
        approved_at=row.approved_at,
        due=row.due,
        status=VerificationStatus(row.status),
        note=row.note,
        verified_at=row.verified_at,
    )


def verification_entry(verification: Verification) -> VerificationEntry:
    return VerificationEntry(
        case_id=verification.case_id,
        department=verification.department,
        item_code=verification.item_code,
        committed_materials=list(verification.committed),
        approved_at=verification.approved_at,
        due=verification.due,
        status=verification.status,
        note=verification.note,
        verified_at=verification.verified_at,
    )


async def load_verification(
    session: AsyncSession, case_id: str, *, lock: bool = False
) -> Verification | None:
    """The case's verification, or None (no commitments, or not approved yet)."""
    query = select(verifications).where(verifications.c.case_id == case_id)
    row = (await session.execute(query.with_for_update() if lock else query)).first()
    return None if row is None else verification_of(row)


async def open_verifications(
    session: AsyncSession, *, department: str, limit: int
) -> list[VerificationEntry]:
    """A department's open verifications, nearest due day first (an unknown one last)."""
    rows = await session.execute(
        select(verifications)
        .where(
            verifications.c.department == department,
            verifications.c.status == VerificationStatus.open.value,
        )
        .order_by(verifications.c.due.asc().nulls_last(), verifications.c.case_id)
        .limit(limit)
    )
    return [verification_entry(verification_of(r)) for r in rows]


# -- the SLA board (operators) -----------------------------------------------------------------


async def sla_board(
    session: AsyncSession, *, today: date, department: str | None
) -> list[SlaBoardRow]:
    """Per department: open cases, those warned, overdue (deadline day over), with an unknown
    deadline, and the nearest deadline; most pressing first."""
    timers = models.clock_timers
    open_ = cases.c.status.in_([s.value for s in OPEN_STATUSES])
    warned = (
        select(timers.c.case_id)
        .where(
            timers.c.case_id == cases.c.case_id,
            timers.c.step == ClockStep.decision.value,
            timers.c.fired_at.is_not(None),
            timers.c.point < 1,
        )
        .exists()
    )
    overdue = func.count().filter(cases.c.deadline < today)
    query = (
        select(
            cases.c.department,
            func.count().label("open"),
            func.count().filter(warned).label("warned"),
            overdue.label("overdue"),
            func.count()
            .filter(cases.c.deadline.is_(None), cases.c.time_limit_days > 0)
            .label("unknown_deadline"),
            func.min(cases.c.deadline).label("next_deadline"),
        )
        .where(open_, cases.c.department.is_not(None))
        .group_by(cases.c.department)
        .order_by(overdue.desc(), func.count().filter(warned).desc(), cases.c.department)
    )
    if department is not None:
        query = query.where(cases.c.department == department)
    return [SlaBoardRow.model_validate(dict(r._mapping)) for r in await session.execute(query)]


async def cases_at_risk(
    session: AsyncSession, *, until: date, department: str | None, limit: int
) -> list[CaseAtRisk]:
    """Open cases whose deadline falls by `until` (overdue ones included), or is unknown; cases
    whose deferred materials are due by `until` (容缺受理: they lapse); and approved cases whose
    open verification of commitments is due by `until` (告知承诺); nearest first."""
    open_verification = (verifications.c.status == "open") & (verifications.c.due <= until)
    deferral_due = (
        cases.c.status.in_([s.value for s in LAPSABLE_STATUSES])
        & (func.jsonb_array_length(cases.c.deferred) > 0)
        & (cases.c.deferred_due <= until)
    )
    verification_due = sql_case((open_verification, verifications.c.due), else_=None)
    query = (
        select(
            cases.c.case_id,
            cases.c.department,
            cases.c.status,
            cases.c.deadline,
            cases.c.accepted_at,
            cases.c.item,
            cases.c.deferred,
            cases.c.deferred_due,
            verifications.c.committed,
            verification_due.label("verification_due"),
        )
        .select_from(cases.outerjoin(verifications, verifications.c.case_id == cases.c.case_id))
        .where(
            (
                cases.c.status.in_([s.value for s in OPEN_STATUSES])
                & (
                    (cases.c.deadline <= until)
                    | (cases.c.deadline.is_(None) & (cases.c.time_limit_days > 0))
                )
            )
            | deferral_due
            | open_verification
        )
        .order_by(
            func.least(cases.c.deadline, cases.c.deferred_due, verification_due)
            .asc()
            .nulls_first(),
            cases.c.case_id,
        )
        .limit(limit)
    )
    if department is not None:
        query = query.where(cases.c.department == department)
    return [
        CaseAtRisk(
            case_id=r.case_id,
            department=r.department,
            status=r.status,
            deadline=r.deadline,
            accepted_at=r.accepted_at,
            item_code=(r.item or {}).get("code"),
            deferred_outstanding=list(r.deferred or []),
            deferred_due=r.deferred_due if r.deferred else None,
            committed_materials=list(r.committed or []) if r.verification_due else [],
            verification_due=r.verification_due,
        )
        for r in await session.execute(query)
    ]


# -- bundles' clocks (一件事, DESIGN.md §8) ----------------------------------------------------

bundles = models.bundles
bundle_members = models.bundle_members


async def bundle_member_clocks(
    session: AsyncSession, bundle_id: str
) -> tuple[list[MemberClock], int | None]:
    """The bundle's members in its order, each with its status and acceptance here (none:
    not routed here yet), and the catalog version of the first one accepted (its calendar
    counts the bundle's days)."""
    m = bundle_members.c
    rows = (
        await session.execute(
            select(m.case_id, cases.c.status, cases.c.accepted_at, cases.c.route)
            .select_from(bundle_members.outerjoin(cases, cases.c.case_id == m.case_id))
            .where(m.bundle_id == bundle_id)
            .order_by(m.position)
        )
    ).all()
    members = [
        MemberClock(
            case_id=r.case_id,
            status=CaseStatus(r.status) if r.status else None,
            accepted_at=r.accepted_at,
        )
        for r in rows
    ]
    accepted = [r for r in rows if r.accepted_at is not None and r.route]
    first = min(accepted, key=lambda r: r.accepted_at, default=None)
    return members, (int(first.route["catalog_version"]) if first is not None else None)


async def bundles_at_risk(
    session: AsyncSession, *, today: date, until: date, lead: str | None, limit: int
) -> list[BundleAtRisk]:
    """Running bundle clocks whose deadline falls by `until` (overdue ones included) or is
    unknown past the calendar, nearest first, each with its members not decided yet."""
    b = bundles.c
    warned = (
        select(models.clock_timers.c.case_id)
        .where(
            models.clock_timers.c.case_id == b.bundle_id,
            models.clock_timers.c.step == ClockStep.bundle.value,
            models.clock_timers.c.fired_at.is_not(None),
        )
        .exists()
    )
    query = (
        select(
            b.bundle_id,
            b.bundle_code,
            b.lead,
            b.time_limit_days,
            b.first_accepted_at,
            b.deadline,
            warned.label("warned"),
        )
        .where(
            b.decided_at.is_(None),
            b.withdrawn_at.is_(None),
            b.first_accepted_at.is_not(None),
            (b.deadline <= until) | (b.deadline.is_(None) & (b.time_limit_days > 0)),
        )
        .order_by(b.deadline.asc().nulls_first(), b.bundle_id)
        .limit(limit)
    )
    if lead is not None:
        query = query.where(b.lead == lead)
    out = []
    for r in (await session.execute(query)).all():
        members, _version = await bundle_member_clocks(session, r.bundle_id)
        out.append(
            BundleAtRisk(
                bundle_id=r.bundle_id,
                bundle_code=r.bundle_code,
                lead=r.lead,
                time_limit_days=r.time_limit_days,
                first_accepted_at=r.first_accepted_at,
                deadline=r.deadline,
                overdue=r.deadline is not None and r.deadline < today,
                warned=bool(r.warned),
                open_members=open_members(members),
            )
        )
    return out
