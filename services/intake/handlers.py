"""intake's unit-of-work functions: create a case, add materials, withdraw, and follow every
case topic into the counter's view of the case (status, route, deadline, timeline)."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.common import Application, CaseStatus, Channel, Handover, Material
from contracts.events import (
    CaseAccepted,
    CaseDeadlineChanged,
    CaseHandoverRefused,
    CaseNotified,
    CaseRouted,
    CaseRouteFailed,
    CaseSubmitted,
    CaseSupplemented,
    CaseSupplementRequested,
    CaseWithdrawn,
)
from contracts.rest import SubmissionResponse
from services.common.db import inbox_key
from services.common.envelope import Envelope
from services.common.handover import HandoverKeyError, HandoverKeys, sign_handover
from services.common.service import ServiceRuntime
from services.common.web import Problem
from services.intake import models
from services.intake.lifecycle import RANK, WITHDRAWABLE, next_status


def new_case_id(city_code: str, today: date) -> str:
    return f"{city_code}-{today:%Y%m%d}-{secrets.token_hex(5).upper()}"


def request_hash(application: Application) -> str:
    canonical = json.dumps(
        application.model_dump(mode="json"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def case_row(
    case_id: str,
    application: Application,
    status: CaseStatus,
    missing: list[str],
    at: datetime,
) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "status": status.value,
        "status_rank": RANK[status],
        "item_code": application.item_code,
        "channel": application.channel.value,
        "office_code": application.office_code,
        "application": application.model_dump(mode="json"),
        "missing_materials": missing,
        "created_at": at,
        "updated_at": at,
    }


def submission_handover(
    *, case_id: str, application: Application, submitted_at: datetime, keys: HandoverKeys
) -> Handover | None:
    """A counter submission carries its office's signed handover (DESIGN.md §1); the online
    channel has none. No key for the office: refused, nothing unsigned leaves a counter."""
    if application.channel is not Channel.counter or application.office_code is None:
        return None
    try:
        return sign_handover(
            case_id=case_id,
            application=application,
            office_code=application.office_code,
            signed_at=submitted_at,
            keys=keys,
        )
    except HandoverKeyError as exc:
        raise Problem(
            503,
            "handover_key_missing",
            "This office cannot sign handovers yet",
            f"Office {application.office_code} has no handover signing key; an administrator "
            "must install it (tongban handover-keys generate).",
            retry_after=60,  # an administrator's step, not a passing moment
        ) from exc


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
        raise Problem(
            409,
            "idempotency_key_reused",
            "Idempotency-Key already used for another submission",
            f"The key was first used for case {row.case_id} with a different body. Send a new "
            "key for a new submission, or resend the original body to get that case back.",
            errors=[{"field": "Idempotency-Key", "message": "reused with a different body"}],
        )
    return SubmissionResponse.model_validate(row.response)


async def create_case(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    application: Application,
    case_id: str,
    missing: list[str],
    route_preview: Any,
    idempotency_key: str | None,
    digest: str,
    handover_keys: HandoverKeys,
    traceparent: str | None = None,
) -> SubmissionResponse:
    now = datetime.now(UTC)
    status = CaseStatus.awaiting_supplement if missing else CaseStatus.submitted
    handover = (
        None
        if missing
        else submission_handover(
            case_id=case_id, application=application, submitted_at=now, keys=handover_keys
        )
    )
    await session.execute(
        models.cases.insert().values(case_row(case_id, application, status, missing, now))
    )
    if missing:
        await runtime.emit(
            session,
            CaseNotified(
                case_id=case_id,
                application=application,
                missing_materials=missing,
                notified_at=now,
            ),
            traceparent=traceparent,
        )
    else:
        await runtime.emit(
            session,
            CaseSubmitted(
                case_id=case_id,
                application=application,
                submitted_at=now,
                handover=handover,
            ),
            traceparent=traceparent,
        )
    response = SubmissionResponse(
        case_id=case_id, status=status, missing_materials=missing, route_preview=route_preview
    )
    if idempotency_key is not None:
        stored = await session.execute(
            pg_insert(models.idempotency_keys)
            .values(
                key=idempotency_key,
                request_hash=digest,
                case_id=case_id,
                response=response.model_dump(mode="json"),
            )
            .on_conflict_do_nothing()
            .returning(models.idempotency_keys.c.key)
        )
        if stored.scalar() is None:
            raise KeyAlreadyUsed(idempotency_key)
    return response


class KeyAlreadyUsed(Exception):
    """The Idempotency-Key belongs to a submission already taken (a retry, or a retry that
    raced this one): roll this transaction back and answer with the stored submission."""


async def load_case(session: AsyncSession, case_id: str, *, lock: bool = False) -> Any:
    query = select(models.cases).where(models.cases.c.case_id == case_id)
    row = (await session.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise case_not_found(case_id)
    return row


def case_not_found(case_id: str) -> Problem:
    """A case that does not exist, or not for this caller: the two answers are the same."""
    return Problem(
        404,
        "case_not_found",
        "No such case",
        f"There is no case {case_id!r}. Check the id from the 201 answer.",
    )


async def add_materials(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    case_id: str,
    materials: list[Material],
    required_codes: list[str] | None,
    handover_keys: HandoverKeys,
) -> tuple[CaseStatus, list[str]]:
    """Counter supplement (awaiting_supplement) or an answer to a review's request."""
    case = await load_case(session, case_id, lock=True)
    status = CaseStatus(case.status)
    now = datetime.now(UTC)
    application = Application.model_validate(case.application)
    merged = {m.code: m for m in application.materials} | {m.code: m for m in materials}
    application = application.model_copy(update={"materials": list(merged.values())})
    given = {m.code for m in materials}
    if status is CaseStatus.awaiting_supplement:
        needed = required_codes if required_codes is not None else list(case.missing_materials)
        missing = [code for code in needed if code not in merged]
        await runtime.emit(
            session,
            CaseSupplemented(case_id=case_id, materials=materials, supplemented_at=now),
        )
        new_status: CaseStatus = status
        if not missing:
            new_status = CaseStatus.submitted
            handover = submission_handover(
                case_id=case_id, application=application, submitted_at=now, keys=handover_keys
            )
            await runtime.emit(
                session,
                CaseSubmitted(
                    case_id=case_id,
                    application=application,
                    submitted_at=now,
                    handover=handover,
                ),
            )
    elif status is CaseStatus.supplement_requested:
        missing = [code for code in case.missing_materials if code not in given]
        if missing:
            raise Problem(
                422,
                "materials_incomplete",
                "Every requested material is needed at once",
                f"Still missing: {', '.join(missing)}. Send them together.",
                errors=[{"field": "materials", "message": f"missing {code}"} for code in missing],
                missing_materials=missing,
            )
        new_status = CaseStatus.accepted
        await runtime.emit(
            session,
            CaseSupplemented(case_id=case_id, materials=materials, supplemented_at=now),
        )
    else:
        raise Problem(
            409,
            "invalid_state",
            "This case is not waiting for materials",
            f"Case {case_id} is {status.value}; materials are taken while it is "
            "awaiting_supplement or supplement_requested.",
            status_now=status.value,
        )
    await session.execute(
        update(models.cases)
        .where(models.cases.c.case_id == case_id)
        .values(
            status=new_status.value,
            status_rank=RANK[new_status],
            missing_materials=missing,
            application=application.model_dump(mode="json"),
            updated_at=now,
        )
    )
    return new_status, missing


async def withdraw(
    session: AsyncSession, *, runtime: ServiceRuntime, case_id: str, reason: str | None
) -> CaseStatus:
    case = await load_case(session, case_id, lock=True)
    status = CaseStatus(case.status)
    if status not in WITHDRAWABLE:
        raise Problem(
            409,
            "invalid_state",
            "The case can no longer be withdrawn",
            f"Case {case_id} is {status.value}; withdrawal is possible only before a decision.",
            status_now=status.value,
        )
    now = datetime.now(UTC)
    await runtime.emit(
        session,
        CaseWithdrawn(case_id=case_id, reason=reason, withdrawn_at=now),
    )
    await session.execute(
        update(models.cases)
        .where(models.cases.c.case_id == case_id)
        .values(
            status=CaseStatus.withdrawn.value,
            status_rank=RANK[CaseStatus.withdrawn],
            updated_at=now,
        )
    )
    return CaseStatus.withdrawn


async def follow_case_event(session: AsyncSession, envelope: Envelope, payload: Any) -> None:
    """Any event of a case, from any case topic: timeline entry and the counter's view."""
    await follow_case_events(session, [(envelope, payload)])


ADOPTABLE = (CaseSubmitted.TYPE, CaseNotified.TYPE)
HANDOVER_REFUSED = "handover_refused"  # the failure code of a refused entrusted handover


async def follow_case_events(session: AsyncSession, events: Sequence[tuple[Envelope, Any]]) -> None:
    """A batch of case events, in offset order: one statement for the timeline, one to lock
    the cases, then each changed case updated once with its events folded in order (the hot
    path of intake: every event of every case passes here)."""
    if not events:
        return
    # executemany form: one compiled statement whatever the batch size (SQLAlchemy sends
    # the rows as multi-row VALUES), where `.values([...])` would compile anew per size.
    await session.execute(
        pg_insert(models.timeline).on_conflict_do_nothing(),
        [
            {
                "event_id": inbox_key(e.id),
                "case_id": e.subject,
                "type": e.type,
                "time": e.time,
                "source": e.source,
                "data": e.data,
            }
            for e, _ in events
        ],
    )
    rows = await session.execute(
        select(models.cases.c.case_id, models.cases.c.status, models.cases.c.failure)
        .where(models.cases.c.case_id.in_(sorted({e.subject for e, _ in events})))
        .order_by(models.cases.c.case_id)  # one lock order: no deadlock between batches
        .with_for_update()
    )
    status: dict[str, CaseStatus] = {}
    failure: dict[str, dict[str, Any] | None] = {}
    for r in rows:
        status[r.case_id], failure[r.case_id] = CaseStatus(r.status), r.failure
    pending: dict[str, dict[str, Any]] = {}
    adopted: set[str] = set()
    for envelope, _payload in events:
        case_id = envelope.subject
        if case_id in adopted:
            continue  # the adoption replayed the whole timeline, this event included
        if case_id in status:
            changes = case_changes(status[case_id], envelope.type, envelope.data, failure[case_id])
            if changes:
                pending.setdefault(case_id, {}).update(changes)
                status[case_id] = CaseStatus(changes.get("status", status[case_id]))
                failure[case_id] = changes.get("failure", failure[case_id])
        elif "application" in envelope.data and envelope.type in ADOPTABLE:
            await _adopt_case(session, envelope)
            adopted.add(case_id)
    for case_id, changes in pending.items():
        await _update(session, case_id, changes)


def case_changes(
    status: CaseStatus,
    event_type: str,
    data: dict[str, Any],
    failure: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The columns an event changes in the counter's view of a case whose status and failure
    are as given (pure)."""
    changes: dict[str, Any] = {}
    new_status = next_status(status, event_type)
    if new_status is not None:
        changes |= {"status": new_status.value, "status_rank": RANK[new_status]}
    if event_type == CaseRouted.TYPE:
        changes["route"] = data["route"]
        # A route clears a routing failure (a case retried out of triage), not a refused
        # handover: approval's refusal of the routed case may be applied here before the
        # routed event itself, since topics are not ordered among themselves.
        if (failure or {}).get("code") != HANDOVER_REFUSED:
            changes["failure"] = None
    elif event_type == CaseRouteFailed.TYPE:
        changes["failure"] = data["failure"]
    elif event_type in (CaseAccepted.TYPE, CaseDeadlineChanged.TYPE):
        # The deadline as it stands: set at acceptance, moved by supplements and calendar
        # extensions; None while unknown (past the calendar).
        changes["deadline"] = date.fromisoformat(data["deadline"]) if data.get("deadline") else None
    elif event_type == CaseHandoverRefused.TYPE:
        changes["failure"] = {"code": HANDOVER_REFUSED, "explanation": data["reason"]}
    elif event_type == CaseSupplementRequested.TYPE and new_status is not None:
        changes["missing_materials"] = data["missing_materials"]
    return changes


async def _update(session: AsyncSession, case_id: str, changes: dict[str, Any]) -> None:
    await session.execute(
        update(models.cases)
        .where(models.cases.c.case_id == case_id)
        .values(**changes, updated_at=datetime.now(UTC))
    )


async def _adopt_case(session: AsyncSession, envelope: Envelope) -> None:
    """A case submitted straight to Kafka by another intake system (a portal, another city
    system): intake answers for it too. Events of other topics may have come first (topics
    are not ordered among themselves), so replay what the timeline already holds."""
    application = Application.model_validate(envelope.data["application"])
    status = CaseStatus.awaiting_supplement
    row = case_row(
        envelope.subject,
        application,
        status,
        envelope.data.get("missing_materials", []),
        envelope.time,
    )
    await session.execute(pg_insert(models.cases).values(row).on_conflict_do_nothing())
    events = await session.execute(
        select(models.timeline.c.type, models.timeline.c.data)
        .where(models.timeline.c.case_id == envelope.subject)
        .order_by(models.timeline.c.time, models.timeline.c.event_id)
    )
    changes: dict[str, Any] = {}
    for event_type, data in events:
        changes |= case_changes(status, event_type, data or {}, changes.get("failure"))
        status = CaseStatus(changes.get("status", status))
    if changes:
        await _update(session, envelope.subject, changes)
