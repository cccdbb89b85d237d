"""Bundles at the counter (一件事一次办, DESIGN.md §8): take one application for several items,
each member created as an ordinary case (`cases.create_case`); one set of materials spread over
the members; withdraw the bundle; read it on the audit trail; release or end the members that
wait for others (`settle_bundle`, under the bundle's row lock, so a member is released once);
and follow the bundle's own events (`bundle.v1`) into its status and timeline."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.catalog import Bundle, Item
from contracts.common import Application, CaseStatus, Material
from contracts.events import (
    BundleClosed,
    BundleDelivered,
    BundleMemberRef,
    BundleSubmitted,
    BundleWithdrawn,
)
from contracts.rest import (
    BundleApplication,
    BundleMemberPreview,
    BundleStatus,
    BundleSubmissionResponse,
    BundleView,
    BundleWithdrawResponse,
    LicensedMaterial,
)
from services.common.clock import ServiceClock
from services.common.db import inbox_key, unit_of_work
from services.common.envelope import Envelope
from services.common.handover import HandoverKeys, load_keys
from services.common.principals import Principal
from services.common.refusals import Refused, refused
from services.common.service import ServiceRuntime
from services.intake import models, queries
from services.intake.domain import access, bundles
from services.intake.domain.licenses import holder_key, reuse_licenses
from services.intake.domain.lifecycle import RANK
from services.intake.domain.validation import ValidationResult, submission_refusal
from services.intake.handlers.cases import (
    BundleMembership,
    add_materials,
    create_case,
    emit_first_event,
    library_and_bar,
    new_case_id,
    replay_answer,
    request_hash,
    route_preview,
    store_key,
    take_once,
    update_case,
    withdraw_case,
)
from services.intake.handlers.parts import Intake
from services.policy.catalog_index import CatalogIndex
from services.policy.intake_rules import missing_materials


def new_bundle_id(city_code: str, today: date) -> str:
    return f"{city_code}-B{today:%Y%m%d}-{secrets.token_hex(5).upper()}"


async def submit_bundle(
    intake: Intake,
    application: BundleApplication,
    *,
    idempotency_key: str | None,
    traceparent: str | None = None,
) -> BundleSubmissionResponse:
    """Take a bundle: refused whole, every fault listed (`domain.bundles`), or stored in one
    transaction: the bundle, each member the answers create as an ordinary case (its first
    event, or `waiting` for its prerequisites), `gov.bundle.submitted.v1` and the
    Idempotency-Key. The key works as for a case: the same body answers the same bundle, even
    after a catalog change; another body is 409 `idempotency_key_reused`."""
    digest = request_hash(application)
    index = queries.catalog_in_force(intake.catalogs)
    today = intake.runtime.clock.today()
    bundle = index.bundles.get(application.bundle_code)
    items = [index.items[m.item] for m in bundle.members if m.item in index.items] if bundle else []
    library, barred = await library_and_bar(intake, application, items)
    holder = holder_key(application.applicant.id_number)
    plan = bundles.plan_bundle(
        index, application, today=today, library=library, barred=barred, holder=holder
    )
    if not plan.ok or plan.bundle is None:
        replay = await replay_answer(intake, idempotency_key, digest, queries.replay_bundle)
        if replay is not None:
            return replay
        raise Refused(submission_refusal(ValidationResult(refusals=plan.refusals)))
    # Held e-licences satisfy each member's materials before anything is found missing.
    reused: dict[tuple[str, str], LicensedMaterial] = {}
    members = []
    for member in plan.members:
        reuse = reuse_licenses(member.item, member.application, library)
        members.append(replace(member, application=reuse.application))
        reused |= {(r.material, r.license_id): r for r in reuse.reused}
    plan = bundles.with_members_missing(replace(plan, members=tuple(members)), index)
    return await take_once(
        intake,
        idempotency_key,
        digest,
        queries.replay_bundle,
        lambda session: create_bundle(
            session,
            intake=intake,
            index=index,
            application=application,
            plan=plan,
            today=today,
            idempotency_key=idempotency_key or None,
            digest=digest,
            reused=list(reused.values()),
            traceparent=traceparent,
        ),
    )


async def create_bundle(
    session: AsyncSession,
    *,
    intake: Intake,
    index: CatalogIndex,
    application: BundleApplication,
    plan: bundles.BundlePlan,
    today: date,
    idempotency_key: str | None,
    digest: str,
    reused: Sequence[LicensedMaterial],
    traceparent: str | None,
) -> BundleSubmissionResponse:
    """The bundle row, its members (each by `create_case`), `gov.bundle.submitted.v1` and the
    stored answer of the key, in the caller's transaction."""
    runtime = intake.runtime
    bundle = plan.bundle
    assert bundle is not None
    now = runtime.clock.now()
    bundle_id = new_bundle_id(index.city_code, today)
    await session.execute(
        models.bundles.insert().values(_bundle_row(bundle_id, bundle, application, plan, now))
    )
    created = await _create_members(
        session,
        intake=intake,
        index=index,
        membership=BundleMembership(bundle_id, bundle.code),
        plan=plan,
        today=today,
        digest=digest,
        traceparent=traceparent,
    )
    refs = [ref for ref, _preview in created]
    previews = [preview for _ref, preview in created]
    await runtime.emit(
        session,
        BundleSubmitted(
            bundle_id=bundle_id,
            bundle_code=bundle.code,
            bundle_name=bundle.name,
            lead=bundle.lead,
            time_limit_days=bundle.time_limit_days,
            channel=application.channel,
            office_code=application.office_code,
            answers=dict(application.answers),
            members=refs,
            excluded=list(plan.excluded),
            delivery_method=application.delivery.method,
            delivery_address=application.delivery.address,
            submitted_at=now,
        ),
        traceparent=traceparent,
    )
    response = BundleSubmissionResponse(
        bundle_id=bundle_id,
        status=BundleStatus.in_progress,
        members=previews,
        missing_materials=plan.missing_materials,
        excluded=list(plan.excluded),
        reused_licenses=list(reused),
    )
    if idempotency_key is not None:
        store_key(
            session, models.bundle_keys, idempotency_key, digest, response, bundle_id=bundle_id
        )
    return response


def _bundle_row(
    bundle_id: str,
    bundle: Bundle,
    application: BundleApplication,
    plan: bundles.BundlePlan,
    at: datetime,
) -> dict[str, Any]:
    return {
        "bundle_id": bundle_id,
        "bundle_code": bundle.code,
        "bundle_name": bundle.name,
        "status": BundleStatus.in_progress.value,
        "channel": application.channel.value,
        "office_code": application.office_code,
        "applicant": application.applicant.model_dump(mode="json"),
        "answers": dict(application.answers),
        "delivery": application.delivery.model_dump(mode="json"),
        "excluded": list(plan.excluded),
        "time_limit_days": bundle.time_limit_days,
        "lead": bundle.lead,
        "created_at": at,
        "updated_at": at,
    }


async def _create_members(
    session: AsyncSession,
    *,
    intake: Intake,
    index: CatalogIndex,
    membership: BundleMembership,
    plan: bundles.BundlePlan,
    today: date,
    digest: str,
    traceparent: str | None,
) -> list[tuple[BundleMemberRef, BundleMemberPreview]]:
    """Each member the answers created, as an ordinary case of its own (`create_case`)
    carrying its bundle and the case ids it waits for (`after`); a member that goes ahead at
    once gets its route preview, as a single case does."""
    case_ids = {m.item.code: new_case_id(index.city_code, today) for m in plan.members}
    keys = load_keys(intake.runtime.settings)
    created = []
    for member in plan.members:
        case_id = case_ids[member.item.code]
        after = tuple(case_ids[code] for code in member.after if code in case_ids)
        route = (
            None
            if member.missing
            else route_preview(
                intake, index, member.application, today, bundle_code=membership.bundle_code
            )
        )
        answer = await create_case(
            session,
            runtime=intake.runtime,
            application=member.application,
            case_id=case_id,
            missing=list(member.missing),
            route_preview=route,
            idempotency_key=None,
            digest=digest,
            handover_keys=keys,
            traceparent=traceparent,
            member=replace(membership, after=after),
        )
        ref = BundleMemberRef(
            case_id=case_id, item_code=member.item.code, status=answer.status, after=list(after)
        )
        shown = BundleMemberPreview(
            case_id=case_id,
            item_code=member.item.code,
            status=answer.status,
            route_preview=answer.route_preview,
        )
        created.append((ref, shown))
    return created


async def withdraw_bundle(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    principal: Principal,
    bundle_id: str,
    reason: str | None,
) -> BundleWithdrawResponse:
    """Withdraw the bundle, by a clerk of the office that took it: every undecided member
    (waiting ones included) is withdrawn; decided ones are kept, their results still come
    (and go out together). `gov.bundle.withdrawn.v1` lists the members withdrawn now."""
    bundle = await queries.bundle_of_the_office(session, bundle_id, principal, lock=True)
    status = BundleStatus(bundle.status)
    if status is not BundleStatus.in_progress:
        raise refused(
            409,
            "invalid_state",
            "The bundle can no longer be withdrawn",
            f"Bundle {bundle_id} is {status.value}; withdrawal is possible while it is in "
            "progress.",
            status_now=status.value,
        )
    now = runtime.clock.now()
    withdrawn: list[str] = []
    kept: list[str] = []
    for member in await queries.bundle_members(session, bundle_id, lock=True):
        member_status = CaseStatus(member.status)
        if bundles.withdrawable(member_status):
            await withdraw_case(
                session, runtime, member.case_id, bundle_id=bundle_id, reason=reason, now=now
            )
            withdrawn.append(member.case_id)
        elif member_status in bundles.KEPT:
            kept.append(member.case_id)
    new_status = bundles.status_after_withdrawal(kept)
    await runtime.emit(
        session,
        BundleWithdrawn(
            bundle_id=bundle_id, withdrawn_members=withdrawn, reason=reason, withdrawn_at=now
        ),
    )
    await session.execute(
        update(models.bundles)
        .where(models.bundles.c.bundle_id == bundle_id)
        .values(status=new_status.value, updated_at=now)
    )
    return BundleWithdrawResponse(
        bundle_id=bundle_id, status=new_status, withdrawn=withdrawn, kept=kept
    )


async def add_bundle_materials(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    principal: Principal,
    bundle_id: str,
    materials: list[Material],
    index: CatalogIndex,
) -> BundleSubmissionResponse:
    """One set of materials for the bundle: each material goes to every member still waiting
    for materials whose item takes it (`awaiting_supplement` members are completed as a case
    is, `waiting` ones keep it for their submission). Refused whole, as a case's materials are:
    a code no member takes (`unknown_material`), or nobody waiting for materials
    (`invalid_state`)."""
    await queries.bundle_of_the_office(session, bundle_id, principal, lock=True)
    members = await queries.bundle_members(session, bundle_id, lock=True)
    items = {m.case_id: i for m in members if (i := index.items.get(m.item_code)) is not None}
    takers = {
        m.case_id: items[m.case_id]
        for m in members
        if m.case_id in items and CaseStatus(m.status) in bundles.TAKE_MATERIALS
    }
    refusal = bundles.bundle_materials_refusal(
        bundle_id, items.values(), [m.code for m in materials], any_taker=bool(takers)
    )
    if refusal is not None:
        raise Refused(refusal)
    now = runtime.clock.now()
    previews = []
    for member in members:
        item = takers.get(member.case_id)
        given = bundles.member_materials(item, materials) if item is not None else []
        status = CaseStatus(member.status)
        if given and status is CaseStatus.awaiting_supplement:
            answer = await add_materials(
                session,
                runtime=runtime,
                principal=principal,
                case_id=member.case_id,
                materials=given,
                index=index,
            )
            status = answer.status
        elif given and item is not None:  # waiting: kept for its submission
            await _keep_for_submission(session, member, item, given, members, index, now=now)
        previews.append(
            BundleMemberPreview(
                case_id=member.case_id,
                item_code=member.item_code,
                status=status,
                route_preview=None,
            )
        )
    missing = await queries.bundle_missing(session, bundle_id)
    return BundleSubmissionResponse(
        bundle_id=bundle_id,
        status=BundleStatus.in_progress,
        members=previews,
        missing_materials=missing,
    )


async def _keep_for_submission(
    session: AsyncSession,
    member: Any,
    item: Item,
    given: Sequence[Material],
    members: Sequence[Any],
    index: CatalogIndex,
    *,
    now: datetime,
) -> None:
    """A waiting member keeps the materials given now for its submission; what it still
    lacks is counted again, less what its prerequisites' licences will bring."""
    application = Application.model_validate(member.application)
    merged = {m.code: m for m in application.materials} | {m.code: m for m in given}
    application = application.model_copy(update={"materials": list(merged.values())})
    prerequisites = [
        i
        for m in members
        if m.case_id in (member.after or []) and (i := index.items.get(m.item_code))
    ]
    brought = bundles.brought_by_prerequisites(item, merged, prerequisites)
    await update_case(
        session,
        member.case_id,
        {
            "application": application.model_dump(mode="json"),
            "missing_materials": list(missing_materials(item, [*merged, *brought])),
        },
        now=now,
    )


async def read_bundle(intake: Intake, bundle_id: str, principal: Principal) -> BundleView:
    """The bundle as the caller may see it (as a case: its office's clerks, the reviewers of a
    member's department, operators and admins masked), on the audit trail."""
    index = intake.catalogs.latest
    async with intake.runtime.sessions() as session:
        bundle, members, timeline = await queries.readable_bundle(session, bundle_id, principal)
    clear = access.sees_personal_data(principal)
    async with unit_of_work(intake.runtime.sessions) as session:
        await intake.runtime.audit(
            session,
            principal,
            "bundle.read",
            bundle_id,
            {"personal_data": "clear" if clear else "masked"},
        )
    return queries.bundle_view(bundle, members, timeline, index=index, clear=clear)


# -- waiting members: released or ended (flow step 4) ------------------------------------------


async def settle_bundles(
    session: AsyncSession, intake: Intake | None, bundle_ids: Iterable[str]
) -> None:
    """`settle_bundle` each of these bundles, in one order, by the newest catalog; nothing
    without the process's parts (a consumer built without them) or before any catalog."""
    index = intake.catalogs.latest if intake is not None else None
    if intake is None or index is None:
        return
    for bundle_id in sorted(set(bundle_ids)):
        await settle_bundle(session, runtime=intake.runtime, index=index, bundle_id=bundle_id)


async def settle_bundle(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    index: CatalogIndex,
    bundle_id: str,
) -> None:
    """Release or end the bundle's waiting members, as their prerequisites now stand: each is
    submitted once every prerequisite is approved and the licences they issue for it are in
    intake's library (attached to its materials), or withdrawn (`prerequisite_ended`) when one
    ended without approval; repeated until nothing changes, so an ending travels down the
    chain in one go. The bundle row is locked first: the consumers and requests touching one
    bundle take turns, and a member is released once."""
    if not await queries.lock_bundles(session, [bundle_id]):
        return
    members = {m.case_id: m for m in await queries.bundle_members(session, bundle_id, lock=True)}
    status = {c: bundles.standing(CaseStatus(m.status), m.decision) for c, m in members.items()}
    licences = await queries.licences_of_cases(session, list(members))
    keys = load_keys(runtime.settings)
    now = runtime.clock.now()
    changed = True
    while changed:
        changed = False
        for case_id, member in members.items():
            if status[case_id] is not CaseStatus.waiting:
                continue
            item = index.items.get(member.item_code)
            if item is None:
                continue
            application = Application.model_validate(member.application)
            prerequisites = [
                (c, status[c], index.items.get(members[c].item_code))
                for c in member.after or []
                if c in members
            ]
            decision = bundles.release_decision(
                item, [m.code for m in application.materials], prerequisites, licences
            )
            if decision.action is bundles.Release.end:
                await withdraw_case(
                    session,
                    runtime,
                    case_id,
                    bundle_id=bundle_id,
                    reason=bundles.PREREQUISITE_ENDED,
                    now=now,
                )
                status[case_id] = CaseStatus.withdrawn
                changed = True
            elif decision.action is bundles.Release.submit:
                status[case_id] = await _release(
                    session,
                    runtime=runtime,
                    member=member,
                    item=item,
                    application=application,
                    licences=decision.licences,
                    keys=keys,
                    now=now,
                )
                changed = True


async def _release(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    member: Any,
    item: Item,
    application: Application,
    licences: Mapping[str, str],
    keys: HandoverKeys,
    now: datetime,
) -> CaseStatus:
    """A waiting member's prerequisites are approved: submitted with their licences attached,
    or notified of what it still lacks (as a case taken with materials missing)."""
    application = application.model_copy(
        update={"materials": bundles.attach_licences(application.materials, licences)}
    )
    missing = list(missing_materials(item, (m.code for m in application.materials)))
    new_status = CaseStatus.awaiting_supplement if missing else CaseStatus.submitted
    await emit_first_event(
        session,
        runtime=runtime,
        case_id=member.case_id,
        application=application,
        missing=missing,
        member=BundleMembership.of(member),
        keys=keys,
    )
    await update_case(
        session,
        member.case_id,
        {
            "status": new_status.value,
            "status_rank": RANK[new_status],
            "application": application.model_dump(mode="json"),
            "missing_materials": missing,
        },
        now=now,
    )
    return new_status


# -- consumer: bundle.v1 (the bundle's own story) ------------------------------------------------


BUNDLE_STATUS_OF_EVENT = {
    BundleDelivered.TYPE: BundleStatus.delivered,
    BundleClosed.TYPE: BundleStatus.closed,
}


async def follow_bundle_events(
    session: AsyncSession, events: Sequence[tuple[Envelope, Any]], *, clock: ServiceClock
) -> None:
    """A batch of bundle events: the bundles they name locked first, all in one order (the
    order of the timeline and of every request on a bundle), then each event followed. Locked
    event by event, two bundles in the opposite order to a timeline batch deadlocked."""
    await queries.lock_bundles(session, sorted({envelope.subject for envelope, _ in events}))
    for envelope, payload in events:
        await follow_bundle_event(session, envelope, payload, clock=clock)


async def follow_bundle_event(
    session: AsyncSession, envelope: Envelope, payload: Any, *, clock: ServiceClock
) -> None:
    """Any bundle event: into the bundle's timeline; delivered and closed (delivery) move its
    status forward."""
    await session.execute(
        pg_insert(models.bundle_timeline)
        .values(
            event_id=inbox_key(envelope.id),
            bundle_id=envelope.subject,
            type=envelope.type,
            time=envelope.time,
            source=envelope.source,
            data=envelope.data,
        )
        .on_conflict_do_nothing()
    )
    target = BUNDLE_STATUS_OF_EVENT.get(envelope.type)
    if target is None:
        return
    row = (
        await session.execute(
            select(models.bundles.c.status)
            .where(models.bundles.c.bundle_id == envelope.subject)
            .with_for_update()
        )
    ).first()
    if row is None:
        return  # a bundle taken by another intake system: its timeline is kept all the same
    new_status = bundles.next_bundle_status(BundleStatus(row.status), target)
    if new_status is not None:
        await session.execute(
            update(models.bundles)
            .where(models.bundles.c.bundle_id == envelope.subject)
            .values(status=new_status.value, updated_at=clock.now())
        )
