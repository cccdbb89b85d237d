"""delivery's event handlers and commands: issue and deliver a decision's result (announcing a
typed e-licence in the licence library, `license.v1`), revoke it when its decision is revoked,
record a counter pickup and a rating. Each runs in the caller's transaction and writes its
events to the outbox in that same transaction; a refused command raises `Refused`
(services.common.refusals). Reads are in `queries`.

Bundles (一件事, DESIGN.md §8): a member's result is issued as any other but held until its
bundle goes out once (`domain.bundles`). The bundle event, each member's result and each
member's end arrive on different topics and consumers, in any order, and pickups and ratings
come by REST: every one of them first upserts the bundle's row and locks it (FOR UPDATE), then
looks at the whole bundle. So the check "every member has a result or has ended" runs under one
lock, sees every committed fact, and delivers the bundle exactly once.

Cases across regions (跨省通办, DESIGN.md §9; `domain.cross_region`): the origin holds the
partner's result of a counter_pickup case at its office and hands it over with its own events;
the handling region refuses its own pickup of an adopted case and ends it, silently, on the
origin's imported pickup. Every step is once per case (the inbox, and `ON CONFLICT` / status
guards), however often the link delivers it."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, String, delete, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.catalog import City
from contracts.common import CaseStatus, DeliveryMethod, ResultDocument
from contracts.events import (
    BundleRated,
    BundleSubmitted,
    CaseApproved,
    CaseClosed,
    CaseDelivered,
    CaseDenied,
    CaseRated,
    CaseResultIssued,
    CaseRevoked,
    CaseRouted,
    CaseSubmitted,
    CaseTerminated,
    CaseWithdrawn,
    CatalogPublished,
    Event,
    Rating,
)
from contracts.rest import BundleResultsView, BundleStatus, ResultView
from services.common.city import CITY_TZ
from services.common.consumer import PermanentError
from services.common.db import bundle_of, locked_row
from services.common.envelope import Envelope
from services.common.logs import get_logger
from services.common.refusals import FieldError, Refused, refused
from services.common.rows import insert_rows
from services.common.service import ServiceRuntime
from services.delivery import models, queries
from services.delivery.domain import bundles as bundle_rules
from services.delivery.domain.bundles import Member, OnReady
from services.delivery.domain.cross_region import (
    CrossRegionCase,
    Role,
    adopted_case,
    closed_at_origin,
    forwarded_case,
    held_at_origin,
    pickup_at_origin,
)
from services.delivery.domain.results import (
    DeliveryFacts,
    DeliveryPlan,
    IssuedResult,
    Step,
    UndeliverableError,
    delivery_events,
    issue_result,
    license_issued,
    license_revoked,
    plan_delivery,
    tracking_number,
)
from services.delivery.queries import load_result, result_view

bundles_t = models.bundles
members_t = models.bundle_members

log = get_logger(__name__)


@dataclass(frozen=True)
class Delivery:
    """The parts of one delivery process (built by `app.create_app`): its runtime, which
    writes the events into delivery's outbox and keeps the audit."""

    runtime: ServiceRuntime


DELIVERED_STATUSES = frozenset({CaseStatus.delivered.value, CaseStatus.closed.value})


def _now(runtime: ServiceRuntime) -> datetime:
    """Result times are whole seconds: the hashed content writes them that way."""
    return runtime.clock.now().replace(microsecond=0)


async def _emit_all(
    session: AsyncSession,
    runtime: ServiceRuntime,
    steps: tuple[Step, ...],
    facts: DeliveryFacts,
    *,
    at: datetime,
    traceparent: str | None,
) -> None:
    for event in delivery_events(steps, facts, at=at):
        await runtime.emit(session, event, traceparent=traceparent)


# -- consumer: case.approval.v1 ---------------------------------------------------------------


def _result_row(
    decision: CaseApproved | CaseDenied,
    issued: IssuedResult,
    plan: DeliveryPlan,
    *,
    issued_at: datetime,
    tracking: str | None,
) -> dict[str, Any]:
    """The results row of a freshly issued result, as far as its delivery plan takes it."""
    status = plan.status_after_issue
    return {
        "case_id": decision.case_id,
        "outcome": issued.outcome,
        "status": status.value,
        "item_code": decision.item.code,
        "result": issued.document.model_dump(mode="json"),
        "license_id": issued.license_id,
        "sha256": issued.document.sha256,
        "content": issued.content,
        "delivery_method": plan.method.value,
        "address": decision.delivery_address,
        "tracking_number": tracking,
        "pickup_office": (
            decision.intake_office if plan.method is DeliveryMethod.counter_pickup else None
        ),
        "intake_office": decision.intake_office,
        "department": decision.department,
        "level": decision.level.value if decision.level is not None else None,
        "issued_at": issued_at,
        "delivered_at": issued_at if CaseDelivered in plan.on_issue else None,
        "closed_at": issued_at if status is CaseStatus.closed else None,
        "license_type": decision.item.license_type if issued.license_id else None,
    }


async def issue_and_deliver(
    session: AsyncSession,
    envelope: Envelope,
    decision: CaseApproved | CaseDenied,
    *,
    delivery: Delivery,
) -> None:
    """An approval or a denial: issue its result and deliver it as chosen at intake.

    One result per case: a second decision event for a case (any event id) changes nothing.
    """
    bundle_id = await bundle_of(session, members_t, decision.case_id, decision.bundle_id)
    if bundle_id is not None:
        # The bundle before the result row: the order its pickup takes them in.
        await locked_row(session, bundles_t, bundle_id=bundle_id)
    try:
        plan = plan_delivery(
            decision.delivery_method,
            address=decision.delivery_address,
            held=bundle_id is not None,
        )
    except UndeliverableError as exc:
        raise PermanentError(f"case {decision.case_id}: {exc}") from None
    issued_at = _now(delivery.runtime)
    issued = issue_result(decision, issued_at=issued_at, license_token=secrets.token_hex(8))
    tracking: str | None = None
    if plan.needs_tracking_number:
        serial = (await session.execute(select(models.tracking_serial.next_value()))).scalar_one()
        tracking = tracking_number(int(serial))
    row = _result_row(decision, issued, plan, issued_at=issued_at, tracking=tracking)
    if plan.method is DeliveryMethod.counter_pickup and bundle_id is None:
        adopted = await queries.cross_region_case(session, decision.case_id)
        if adopted is not None and adopted.role is Role.handler:
            # Adopted from a partner region: it waits at the origin office (DESIGN.md §9).
            row["pickup_office"] = adopted.office_code
    inserted = await insert_rows(
        session,
        models.results,
        [{**row, "bundle_id": bundle_id}],
        on_conflict_do_nothing=True,
        # Only the case id: a clash of licence id or tracking number must fail loudly.
        conflict_on=("case_id",),
        returning="case_id",
    )
    if not inserted:
        log.info(
            "result already issued; decision ignored",
            case_id=decision.case_id,
            event_type=envelope.type,
            event_id=envelope.id,
        )
        return
    facts = DeliveryFacts(
        case_id=decision.case_id,
        outcome=issued.outcome,
        document=issued.document,
        method=plan.method,
        issued_at=issued_at,
        tracking_number=tracking,
        bundle_id=bundle_id,
    )
    await _emit_all(
        session,
        delivery.runtime,
        plan.on_issue,
        facts,
        at=issued_at,
        traceparent=envelope.traceparent,
    )
    library_entry = license_issued(decision, issued, issued_at=issued_at)
    if library_entry is not None:  # keyed by the licence: its story stays on one partition
        await delivery.runtime.emit(
            session,
            library_entry,
            subject=library_entry.license_id,
            traceparent=envelope.traceparent,
        )
    if bundle_id is not None:
        await settle_bundle(session, delivery, bundle_id, traceparent=envelope.traceparent)


async def revoke_result(
    session: AsyncSession, envelope: Envelope, revoked: CaseRevoked, *, delivery: Delivery
) -> None:
    """A revoked decision (a breached commitment, 告知承诺): its result is marked revoked, so
    `GET /v1/licenses/{id}/verify` answers `revoked`, and a licence the library announced is
    revoked there too (`gov.license.revoked.v1`, keyed by the licence id).

    Once per case: a second revocation (any event id) changes nothing. A revocation for a case
    without a result changes nothing either; the inbox keeps the event id, the log says so."""
    r = models.results.c
    row = (
        await session.execute(
            update(models.results)
            .where(r.case_id == revoked.case_id, r.revoked_at.is_(None))
            .values(revoked_at=revoked.revoked_at, revoke_reason=revoked.reason)
            .returning(r.license_id, r.license_type)
        )
    ).first()
    if row is None:
        log.info(
            "revocation without a result to revoke (none issued, or revoked before)",
            case_id=revoked.case_id,
            event_id=envelope.id,
        )
        return
    if row.license_id is not None and row.license_type is not None:
        await delivery.runtime.emit(
            session,
            license_revoked(revoked, license_id=row.license_id),
            subject=row.license_id,
            traceparent=envelope.traceparent,
        )


# -- commands: pickup, rating -----------------------------------------------------------------


def _check_pickup(
    row: Any, case_id: str, office_code: str | None, adopted: CrossRegionCase | None = None
) -> DeliveryMethod:
    """The result's delivery method, once the result waits at the counter `office_code` (when
    given) names; refused otherwise. An `adopted` case's result waits at the origin office, in
    the partner region (DESIGN.md §9): never here."""
    method = DeliveryMethod(row.delivery_method)
    if method is not DeliveryMethod.counter_pickup:
        raise _not_at_a_counter("result", f"Case {case_id}", method, row.tracking_number)
    if row.status != CaseStatus.result_issued.value:
        raise refused(
            409,
            "invalid_state",
            "The result was already collected",
            f"Case {case_id} is {row.status}; it was collected at "
            f"{row.delivered_at.astimezone(CITY_TZ).isoformat() if row.delivered_at else '?'}.",
            status_now=row.status,
        )
    if adopted is not None:
        raise Refused(pickup_at_origin(adopted))
    if office_code and row.pickup_office and office_code != row.pickup_office:
        raise _at_another_office(
            "result", f"The result of case {case_id}", row.pickup_office, office_code
        )
    return method


def _not_at_a_counter(
    noun: str, what: str, method: DeliveryMethod, tracking: str | None
) -> Refused:
    return refused(
        409,
        "not_counter_pickup",
        f"This {noun} is not collected at a counter",
        f"{what} is delivered by {method.value}"
        + (f" (tracking number {tracking})" if tracking else "")
        + "; nothing waits at a counter.",
        delivery_method=method.value,
    )


def _at_another_office(noun: str, what: str, waits_at: str, office_code: str) -> Refused:
    return refused(
        409,
        "wrong_office",
        f"The {noun} waits at another office",
        f"{what} waits at office {waits_at}, where the application was taken, not at "
        f"{office_code}. Send the applicant there.",
        errors=(FieldError("office_code", f"must be {waits_at}"),),
        pickup_office=waits_at,
    )


async def pickup(
    session: AsyncSession,
    *,
    delivery: Delivery,
    case_id: str,
    office_code: str | None,
    traceparent: str | None = None,
) -> ResultView:
    """The applicant collects a counter_pickup result at the intake office."""
    row = await load_result(session, case_id, lock=True)
    _not_a_member(row, "pickup")
    adopted = await queries.cross_region_case(session, case_id)
    method = _check_pickup(
        row, case_id, office_code, adopted if adopted and adopted.role is Role.handler else None
    )
    plan = plan_delivery(method)
    now = _now(delivery.runtime)
    status = plan.status_after_pickup
    updated = (
        await session.execute(
            update(models.results)
            .where(models.results.c.case_id == case_id)
            .values(
                status=status.value,
                delivered_at=now,
                closed_at=now if status is CaseStatus.closed else None,
            )
            .returning(*models.results.c)
        )
    ).one()
    facts = DeliveryFacts(
        case_id=case_id,
        outcome=row.outcome,
        document=ResultDocument.model_validate(row.result),
        method=method,
        issued_at=row.issued_at,
        office_code=office_code or row.pickup_office,
    )
    await _emit_all(
        session, delivery.runtime, plan.on_pickup, facts, at=now, traceparent=traceparent
    )
    return result_view(updated)


async def rate(
    session: AsyncSession,
    *,
    delivery: Delivery,
    case_id: str,
    rating: Rating,
    comment: str | None,
    traceparent: str | None = None,
) -> CaseRated:
    """One rating per case (GB/T 39734 一事一评), once the result has reached the applicant.

    The rating is bound to what the result records: the case, the office that took the
    application, the deciding department and its level (the statistics group by these)."""
    row = await load_result(session, case_id)
    _not_a_member(row, "rating")
    if row.status not in DELIVERED_STATUSES:
        raise refused(
            409,
            "not_delivered",
            "The result has not reached the applicant yet",
            f"Case {case_id} is {row.status}; a rating is taken once the result is delivered"
            + (f" (collect it at office {row.pickup_office} first)" if row.pickup_office else "")
            + ".",
            status_now=row.status,
        )
    now = _now(delivery.runtime)
    inserted = await session.execute(
        pg_insert(models.ratings)
        .values(
            case_id=case_id,
            rating=rating.value,
            comment=comment,
            item_code=row.item_code,
            department=row.department,
            intake_office=row.intake_office,
            level=row.level,
            rated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[models.ratings.c.case_id])
        .returning(models.ratings.c.case_id)
    )
    if inserted.scalar() is None:
        raise refused(
            409,
            "already_rated",
            "This case has already been rated",
            f"Case {case_id} was rated before; each case takes one rating (一事一评).",
        )
    event = CaseRated(case_id=case_id, rating=rating, comment=comment, rated_at=now)
    await delivery.runtime.emit(session, event, traceparent=traceparent)
    return event.model_copy(update={"rated_at": now.astimezone(CITY_TZ)})


def _not_a_member(row: Any, what: str) -> None:
    """A bundle's member is picked up and rated with its bundle, never on its own."""
    if row.bundle_id is not None:
        raise refused(
            409,
            "bundle_member",
            f"A bundle's member takes the bundle's {what}",
            f"Case {row.case_id} is a member of bundle {row.bundle_id}: its result goes out "
            f"with the bundle's (POST /v1/bundles/{row.bundle_id}/{what}).",
            bundle_id=row.bundle_id,
        )


# -- bundles (一件事, DESIGN.md §8; see the module docstring) -----------------------------------


async def _emit_events(
    session: AsyncSession,
    runtime: ServiceRuntime,
    events: list[Event],
    traceparent: str | None,
) -> None:
    for event in events:
        await runtime.emit(session, event, traceparent=traceparent)


async def settle_bundle(
    session: AsyncSession,
    delivery: Delivery,
    bundle_id: str,
    *,
    traceparent: str | None = None,
) -> None:
    """Under the bundle's lock (taken by the caller): the bundle became ready, so it goes
    out (electronic, postal), waits for its pickup (counter_pickup) or ends with nothing to
    deliver; or it went out before and a late result follows it."""
    bundle = await locked_row(session, bundles_t, bundle_id=bundle_id)
    if bundle.bundle_code is None:
        return  # its members are not known yet: gov.bundle.submitted.v1 settles it
    members = await queries.bundle_members(session, bundle_id)
    method = DeliveryMethod(bundle.delivery_method)
    now = _now(delivery.runtime)
    if bundle.delivered_at is not None:
        late = bundle_rules.late_member_events(bundle_id, members, method=method, at=now)
        if late:
            held = [m.case_id for m in members if m.held]
            await _close_members(session, held, at=now, tracking=None)
            await _emit_events(session, delivery.runtime, late, traceparent)
        return
    if not bundle_rules.readiness(True, members).ready:
        return
    action = bundle_rules.on_ready(method, members)
    if bundle.ready_at is not None and (
        bundle.status != BundleStatus.withdrawn.value or action is OnReady.nothing
    ):
        # Ready before: waiting for its pickup, or still nothing to deliver. (A bundle that
        # had nothing gets a result late when a withdrawal lost the race with a decision.)
        return
    status = bundle_rules.status_when_ready(action)
    await session.execute(
        update(bundles_t)
        .where(bundles_t.c.bundle_id == bundle_id)
        .values(ready_at=now, status=status.value)
    )
    log.info("bundle ready", bundle_id=bundle_id, then=action.value)
    if action is OnReady.deliver:
        await _deliver_bundle(
            session, delivery, bundle, members, at=now, office_code=None, traceparent=traceparent
        )


async def _close_members(
    session: AsyncSession, case_ids: list[str], *, at: datetime, tracking: str | None
) -> None:
    if case_ids:
        await session.execute(
            update(models.results)
            .where(models.results.c.case_id.in_(case_ids))
            .values(
                status=CaseStatus.closed.value,
                delivered_at=at,
                closed_at=at,
                tracking_number=tracking,
            )
        )


async def _deliver_bundle(
    session: AsyncSession,
    delivery: Delivery,
    bundle: Any,
    members: list[Member],
    *,
    at: datetime,
    office_code: str | None,
    traceparent: str | None,
) -> None:
    """Every held result out together, the members and the bundle closed."""
    method = DeliveryMethod(bundle.delivery_method)
    tracking: str | None = None
    if method is DeliveryMethod.postal:  # one parcel for the whole bundle
        serial = (await session.execute(select(models.tracking_serial.next_value()))).scalar_one()
        tracking = tracking_number(int(serial))
    await _close_members(session, [m.case_id for m in members if m.held], at=at, tracking=tracking)
    await session.execute(
        update(bundles_t)
        .where(bundles_t.c.bundle_id == bundle.bundle_id)
        .values(
            status=BundleStatus.closed.value,
            tracking_number=tracking,
            delivered_at=at,
            closed_at=at,
        )
    )
    events = bundle_rules.bundle_delivery_events(
        bundle.bundle_id,
        members,
        method=method,
        at=at,
        tracking_number=tracking,
        office_code=office_code,
    )
    await _emit_events(session, delivery.runtime, events, traceparent)


async def bundle_submitted(
    session: AsyncSession, envelope: Envelope, submitted: BundleSubmitted, *, delivery: Delivery
) -> None:
    """The bundle's members and how it is delivered: from now on its readiness is known."""
    bundle = await locked_row(session, bundles_t, bundle_id=submitted.bundle_id)
    if bundle.bundle_code is not None:
        log.info("bundle known before; event ignored", bundle_id=submitted.bundle_id)
        return
    method = submitted.delivery_method
    await session.execute(
        update(bundles_t)
        .where(bundles_t.c.bundle_id == submitted.bundle_id)
        .values(
            bundle_code=submitted.bundle_code,
            delivery_method=method.value,
            address=submitted.delivery_address,
            office_code=submitted.office_code,
            channel=submitted.channel.value,
            submitted_at=submitted.submitted_at,
        )
    )
    if submitted.members:
        rows = [
            {
                "case_id": m.case_id,
                "bundle_id": submitted.bundle_id,
                "item_code": m.item_code,
                "position": position,
                "listed": True,
            }
            for position, m in enumerate(submitted.members)
        ]
        insert = pg_insert(members_t).values(rows)
        await session.execute(
            insert.on_conflict_do_update(
                index_elements=[members_t.c.case_id],
                set_={
                    "item_code": insert.excluded.item_code,
                    "position": insert.excluded.position,
                    "listed": True,
                },
            )
        )
        # Results issued before the bundle was known, by an event that did not name it.
        await session.execute(
            update(models.results)
            .where(
                models.results.c.case_id.in_([m.case_id for m in submitted.members]),
                models.results.c.bundle_id.is_(None),
            )
            .values(bundle_id=submitted.bundle_id)
        )
    await settle_bundle(session, delivery, submitted.bundle_id, traceparent=envelope.traceparent)


async def member_ended(
    session: AsyncSession,
    envelope: Envelope,
    ended: CaseWithdrawn | CaseTerminated,
    *,
    delivery: Delivery,
) -> None:
    """A member withdrawn (intake) or terminated (approval): it ends without a result, and
    its bundle no longer waits for it. A single case's end is none of delivery's business."""
    bundle_id = await bundle_of(session, members_t, ended.case_id, ended.bundle_id)
    if bundle_id is None:
        return
    await locked_row(session, bundles_t, bundle_id=bundle_id)
    if isinstance(ended, CaseWithdrawn):
        outcome, at = CaseStatus.withdrawn.value, ended.withdrawn_at
    else:
        outcome, at = CaseStatus.terminated.value, ended.terminated_at
    insert = pg_insert(members_t).values(
        case_id=ended.case_id,
        bundle_id=bundle_id,
        ended=outcome,
        ended_at=at,
        ended_reason=ended.reason,
    )
    await session.execute(
        insert.on_conflict_do_update(
            index_elements=[members_t.c.case_id],
            set_={"ended": outcome, "ended_at": at, "ended_reason": ended.reason},
            where=members_t.c.ended.is_(None),
        )
    )
    await settle_bundle(session, delivery, bundle_id, traceparent=envelope.traceparent)


async def _known_bundle(session: AsyncSession, bundle_id: str) -> Any:
    """The bundle's row, locked; `Refused` 404 while delivery does not know the bundle."""
    row = (
        await session.execute(
            select(bundles_t).where(bundles_t.c.bundle_id == bundle_id).with_for_update()
        )
    ).first()
    if row is None or row.bundle_code is None:
        raise Refused(queries.bundle_not_found(bundle_id))
    return row


async def pickup_bundle(
    session: AsyncSession,
    *,
    delivery: Delivery,
    bundle_id: str,
    office_code: str | None,
    traceparent: str | None = None,
) -> BundleResultsView:
    """The applicant collects every result of a counter_pickup bundle at once, at the office
    that took it: the members and the bundle are delivered and closed."""
    bundle = await _known_bundle(session, bundle_id)
    members = await queries.bundle_members(session, bundle_id)
    _check_bundle_pickup(bundle, members, office_code)
    now = _now(delivery.runtime)
    office = office_code or bundle.office_code
    if bundle.delivered_at is None:
        await _deliver_bundle(
            session, delivery, bundle, members, at=now, office_code=office, traceparent=traceparent
        )
    else:  # late results of a bundle collected before
        held = [m for m in members if m.held]
        await _close_members(session, [m.case_id for m in held], at=now, tracking=None)
        events = bundle_rules.member_deliveries(
            bundle_id, held, method=DeliveryMethod.counter_pickup, at=now, office_code=office
        )
        await _emit_events(session, delivery.runtime, events, traceparent)
    return await queries.bundle_results_view(session, bundle_id)


def _check_bundle_pickup(bundle: Any, members: list[Member], office_code: str | None) -> None:
    """The checks of a case's pickup, for the bundle as a whole, and its readiness."""
    bundle_id = bundle.bundle_id
    method = DeliveryMethod(bundle.delivery_method)
    if method is not DeliveryMethod.counter_pickup:
        raise _not_at_a_counter("bundle", f"Bundle {bundle_id}", method, bundle.tracking_number)
    open_members = bundle_rules.readiness(True, members).open_members
    if open_members:
        raise refused(
            409,
            "bundle_not_ready",
            "Not every member of the bundle has its result yet",
            f"Bundle {bundle_id} is delivered once, when every member has its result or has "
            f"ended; still open: {', '.join(open_members)}.",
            open_members=list(open_members),
        )
    if not any(m.held for m in members):
        raise refused(
            409,
            "invalid_state",
            "Nothing of this bundle waits at the counter",
            f"Bundle {bundle_id} is {bundle.status}"
            + (
                f"; it was collected at {bundle.delivered_at.astimezone(CITY_TZ).isoformat()}."
                if bundle.delivered_at
                else "; none of its members has a result to collect."
            ),
            status_now=bundle.status,
        )
    if office_code and bundle.office_code and office_code != bundle.office_code:
        raise _at_another_office("bundle", f"Bundle {bundle_id}", bundle.office_code, office_code)


async def rate_bundle(
    session: AsyncSession,
    *,
    delivery: Delivery,
    bundle_id: str,
    rating: Rating,
    comment: str | None,
    traceparent: str | None = None,
) -> BundleRated:
    """One rating for the bundle once it was delivered (一事一评: the bundle is one matter),
    counted for each member with a result: a rating row bound to that member's result (its
    department, office and level) and its `gov.case.rated.v1`, then `gov.bundle.rated.v1`."""
    bundle = await _known_bundle(session, bundle_id)
    if bundle.delivered_at is None:
        raise refused(
            409,
            "not_delivered",
            "The bundle has not reached the applicant yet",
            f"Bundle {bundle_id} is {bundle.status}; a rating is taken once its results are "
            "delivered"
            + (f" (collect them at {bundle.office_code} first)" if bundle.office_code else "")
            + ".",
            status_now=bundle.status,
        )
    if bundle.rated_at is not None:
        raise refused(
            409,
            "already_rated",
            "This bundle has already been rated",
            f"Bundle {bundle_id} was rated before; a bundle takes one rating (一事一评).",
        )
    now = _now(delivery.runtime)
    members = await queries.bundle_members(session, bundle_id)
    rated = [m.case_id for m in members if m.has_result]
    r = models.results.c
    rows = (
        await session.execute(
            select(r.case_id, r.item_code, r.department, r.intake_office, r.level).where(
                r.case_id.in_(rated)
            )
        )
    ).all()
    if rows:
        await session.execute(
            pg_insert(models.ratings)
            .values(
                [
                    {
                        "case_id": row.case_id,
                        "rating": rating.value,
                        "comment": comment,
                        "item_code": row.item_code,
                        "department": row.department,
                        "intake_office": row.intake_office,
                        "level": row.level,
                        "rated_at": now,
                    }
                    for row in rows
                ]
            )
            .on_conflict_do_nothing(index_elements=[models.ratings.c.case_id])
        )
    await session.execute(
        update(bundles_t)
        .where(bundles_t.c.bundle_id == bundle_id)
        .values(rating=rating.value, rated_at=now)
    )
    events = bundle_rules.bundle_rating_events(
        bundle_id, members, rating=rating, comment=comment, at=now
    )
    await _emit_events(session, delivery.runtime, events, traceparent)
    bundle_rated = events[-1]
    assert isinstance(bundle_rated, BundleRated)
    return bundle_rated.model_copy(update={"rated_at": now.astimezone(CITY_TZ)})


# -- cases across regions (跨省通办, DESIGN.md §9; domain.cross_region) -------------------------


def city_of(published: CatalogPublished) -> str:
    """This region's city code, read off a catalog version: what the partner regions address
    their records to (`ce_tocity`)."""
    return City.model_validate(published.catalog.get("city")).code


async def _record_cross_region_case(
    session: AsyncSession, delivery: Delivery, case: CrossRegionCase
) -> None:
    await session.execute(
        pg_insert(models.cross_region_cases)
        .values(**asdict(case), recorded_at=_now(delivery.runtime))  # its enums are strings
        .on_conflict_do_nothing()
    )


async def cross_region_routed(
    session: AsyncSession, envelope: Envelope, routed: CaseRouted, *, delivery: Delivery
) -> None:
    """The origin: a case this region routed to a partner region (path `cross_region`) is
    remembered with its origin office and delivery; every other routed case is not
    delivery's business until its decision."""
    case = forwarded_case(routed)
    if case is None:
        return
    await _record_cross_region_case(session, delivery, case)
    # The partner's result may have come first (another topic, another group): hold it now.
    w = models.partner_results_waiting.c
    waiting = (
        await session.execute(
            delete(models.partner_results_waiting)
            .where(w.case_id == case.case_id)
            .returning(w.issued)
        )
    ).first()
    if waiting is not None:
        await _hold_partner_result(session, case, CaseResultIssued.model_validate(waiting.issued))


async def adopted_submitted(
    session: AsyncSession, envelope: Envelope, submitted: CaseSubmitted, *, delivery: Delivery
) -> None:
    """The handler: a case adopted from a partner region (submitted with `origin`) is
    remembered; a counter_pickup result issued before this event (on another topic) moves to
    the origin office."""
    case = adopted_case(submitted)
    if case is None:
        return
    await _record_cross_region_case(session, delivery, case)
    r = models.results.c
    await session.execute(
        update(models.results)
        .where(
            r.case_id == case.case_id,
            r.delivery_method == DeliveryMethod.counter_pickup.value,
            r.status == CaseStatus.result_issued.value,
        )
        .values(pickup_office=case.office_code)
    )


async def result_from_partner(
    session: AsyncSession, envelope: Envelope, issued: CaseResultIssued, *, delivery: Delivery
) -> None:
    """The origin: the partner's issued result of a counter_pickup case becomes this region's
    result row, held at the origin office for `POST /v1/cases/{id}/pickup` (which emits this
    region's delivered and closed). Once per case; nothing is emitted now (intake's timeline
    shows the partner's event)."""
    case = await queries.cross_region_case(session, issued.case_id)
    if case is None:
        # This region's routed event of the case is not applied yet (other topic, other
        # group, maybe a restart behind): keep the result; `cross_region_routed` holds it.
        await session.execute(
            pg_insert(models.partner_results_waiting)
            .values(
                case_id=issued.case_id,
                issued=issued.model_dump(mode="json"),
                received_at=_now(delivery.runtime),
            )
            .on_conflict_do_nothing()
        )
        log.info("partner's result waits for this region's route", case_id=issued.case_id)
        return
    await _hold_partner_result(session, case, issued, event_id=envelope.id)


async def _hold_partner_result(
    session: AsyncSession,
    case: CrossRegionCase,
    issued: CaseResultIssued,
    *,
    event_id: str | None = None,
) -> None:
    row = held_at_origin(case, issued)
    if row is None:
        log.info(
            "partner's result not held here (delivered by the partner)",
            case_id=issued.case_id,
            role=case.role.value,
            method=case.delivery_method.value,
        )
        return
    await session.execute(pg_insert(models.results).values(row).on_conflict_do_nothing())
    log.info(
        "partner's result held at the origin office",
        case_id=issued.case_id,
        partner=case.partner_city,
        office=case.office_code,
        event_id=event_id,
    )


async def picked_up_at_origin(
    session: AsyncSession,
    envelope: Envelope,
    step: CaseDelivered | CaseClosed,
    *,
    delivery: Delivery,
) -> None:
    """The handler: the origin's delivered or closed of an adopted case, imported onto this
    region's case.delivery.v1 (`fromcity` set, DESIGN.md §9), ends the result held for the
    pickup there, with the origin's times and no event of its own (the timeline has the
    origin's). This region's own delivery events (no `fromcity`) are passed over."""
    if not envelope.fromcity:
        return
    applies_to, status, times = closed_at_origin(step)
    r = models.results.c
    values: dict[str, Any] = {"status": status.value, **times}
    if isinstance(step, CaseClosed):  # a closed alone is the delivery too
        values["delivered_at"] = func.coalesce(r.delivered_at, step.closed_at)
    ended = await session.execute(
        update(models.results)
        .where(
            r.case_id == step.case_id,
            r.delivery_method == DeliveryMethod.counter_pickup.value,
            r.status.in_([s.value for s in applies_to]),
        )
        .values(values)
        .returning(r.case_id)
    )
    if ended.scalar() is None:
        log.info(
            "origin's step changes nothing here (no result held for it, or ended before)",
            case_id=step.case_id,
            event_type=envelope.type,
            fromcity=envelope.fromcity,
        )


async def rated_at_origin(
    session: AsyncSession, envelope: Envelope, rated: CaseRated, *, delivery: Delivery
) -> None:
    """The handler: the applicant's rating of an adopted case, taken at the origin's counter
    after the pickup there and imported here (`fromcity` set), counts for this region's
    deciding department too: a rating row bound to this region's result, no event (approval
    opens a bad rating's follow-up from the imported event itself). This region's own ratings
    (no `fromcity`) are written by `rate`."""
    if not envelope.fromcity:
        return
    r = models.results.c
    bound = select(
        r.case_id,
        literal(rated.rating.value),
        literal(rated.comment, String()),
        r.item_code,
        r.department,
        r.intake_office,
        r.level,
        literal(rated.rated_at, DateTime(timezone=True)),
    ).where(r.case_id == rated.case_id)
    t = models.ratings.c
    inserted = await session.execute(
        pg_insert(models.ratings)
        .from_select(
            [
                t.case_id,
                t.rating,
                t.comment,
                t.item_code,
                t.department,
                t.intake_office,
                t.level,
                t.rated_at,
            ],
            bound,
        )
        .on_conflict_do_nothing(index_elements=[t.case_id])
        .returning(t.case_id)
    )
    if inserted.scalar() is None:
        log.info(
            "origin's rating not recorded here (no result here, or rated before)",
            case_id=rated.case_id,
            fromcity=envelope.fromcity,
        )
