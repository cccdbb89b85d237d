"""delivery's event handlers and commands: issue and deliver a decision's result (announcing a
typed e-licence in the licence library, `license.v1`), revoke it when its decision is revoked,
record a counter pickup and a rating. Each runs in the caller's transaction and writes its
events to the outbox in that same transaction; a refused command raises `Refused`
(services.common.refusals). Reads are in `queries`."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.common import CaseStatus, DeliveryMethod, ResultDocument
from contracts.events import (
    CaseApproved,
    CaseDelivered,
    CaseDenied,
    CaseRated,
    CaseRevoked,
    Rating,
)
from contracts.rest import ResultView
from services.common.city import CITY_TZ
from services.common.consumer import PermanentError
from services.common.envelope import Envelope
from services.common.logs import get_logger
from services.common.refusals import FieldError, refused
from services.common.service import ServiceRuntime
from services.delivery import models
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
    try:
        plan = plan_delivery(decision.delivery_method, address=decision.delivery_address)
    except UndeliverableError as exc:
        raise PermanentError(f"case {decision.case_id}: {exc}") from None
    issued_at = _now(delivery.runtime)
    issued = issue_result(decision, issued_at=issued_at, license_token=secrets.token_hex(8))
    tracking: str | None = None
    if plan.needs_tracking_number:
        serial = (await session.execute(select(models.tracking_serial.next_value()))).scalar_one()
        tracking = tracking_number(int(serial))
    inserted = await session.execute(
        pg_insert(models.results)
        .values(_result_row(decision, issued, plan, issued_at=issued_at, tracking=tracking))
        # Only the case id: a clash of licence id or tracking number must fail loudly.
        .on_conflict_do_nothing(index_elements=[models.results.c.case_id])
        .returning(models.results.c.case_id)
    )
    if inserted.scalar() is None:
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


def _check_pickup(row: Any, case_id: str, office_code: str | None) -> DeliveryMethod:
    """The result's delivery method, once the result waits at the counter `office_code` (when
    given) names; refused otherwise."""
    method = DeliveryMethod(row.delivery_method)
    if method is not DeliveryMethod.counter_pickup:
        raise refused(
            409,
            "not_counter_pickup",
            "This result is not collected at a counter",
            f"Case {case_id} is delivered by {method.value}"
            + (f" (tracking number {row.tracking_number})" if row.tracking_number else "")
            + "; nothing waits at a counter.",
            delivery_method=method.value,
        )
    if row.status != CaseStatus.result_issued.value:
        raise refused(
            409,
            "invalid_state",
            "The result was already collected",
            f"Case {case_id} is {row.status}; it was collected at "
            f"{row.delivered_at.astimezone(CITY_TZ).isoformat() if row.delivered_at else '?'}.",
            status_now=row.status,
        )
    if office_code and row.pickup_office and office_code != row.pickup_office:
        raise refused(
            409,
            "wrong_office",
            "The result waits at another office",
            f"The result of case {case_id} waits at office {row.pickup_office}, where the "
            f"application was taken, not at {office_code}. Send the applicant there.",
            errors=(FieldError("office_code", f"must be {row.pickup_office}"),),
            pickup_office=row.pickup_office,
        )
    return method


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
    method = _check_pickup(row, case_id, office_code)
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
