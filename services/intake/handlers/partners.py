"""Cases across regions (跨省通办, DESIGN.md §9) at intake: what the partner regions' mirrored
`xregion.out.v1` addresses to this city (consumer group `intake-partners`).

- `gov.case.forwarded.v1`: adopted under the same case id, as if taken at this region's
  municipal center (a fresh handover signed by that office, `gov.case.submitted.v1` with its
  `origin`), or refused with `gov.case.adoption_refused.v1` addressed back to the origin, a
  warning, the metric `tongban_xregion_refused_total{code}` and a row for operators
  (`GET /v1/xregion/refused`). A second forwarded of an adopted case is a no-op.
- The origin's relayed steps of a case adopted here (withdrawn, supplemented, delivered,
  closed, rated): imported, unchanged (same `ce_id`, type, source, data; `ce_fromcity` = the
  origin), onto this region's topic of their type through the outbox, so this region's
  services apply them with their usual handlers.
- The handling region's events of a case taken here: into the counter's view of the case by
  the timeline consumer's own code (`follow_case_events`), the entry's source
  `<city>:<ce_source>`, the route left as this region routed it.

Everything is at least once on the link and idempotent by event id (the group's inbox).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.common import CaseStatus, CrossRegionOrigin, Path
from contracts.events import (
    CASE_TOPICS,
    EVENT_TYPES,
    CaseAdoptionRefused,
    CaseForwarded,
    CaseSubmitted,
    Event,
)
from services.common.city import CITY_TZ
from services.common.consumer import HandlerFn, PermanentError
from services.common.db import inbox_key
from services.common.envelope import Envelope
from services.common.handover import HandoverKeyError, load_keys, load_trust, sign_handover
from services.common.handover import verify_handover as check_handover
from services.common.logs import get_logger
from services.common.metrics import XREGION_REFUSED
from services.intake import models, queries
from services.intake.domain.xregion import (
    CASE_ID_IN_USE,
    IMPORTED_TYPES,
    NO_MUNICIPAL_CENTER,
    AdoptionRefusal,
    adopted_application,
    adoption_refusal,
    import_outbox_id,
    municipal_center,
)
from services.intake.handlers.case_events import follow_case_events
from services.intake.handlers.cases import case_row
from services.intake.handlers.parts import Intake
from services.policy.catalog_index import CatalogIndex

log = get_logger(__name__)


def partner_subscriptions(intake: Intake) -> dict[type[Event], HandlerFn]:
    """The types `intake-partners` applies: forwarded cases, and every case event (relayed by
    a partner about a case of the two regions)."""
    subscriptions: dict[type[Event], HandlerFn] = {
        spec.model: partial(follow_partner_event, intake=intake)
        for spec in EVENT_TYPES.values()
        if spec.topic in CASE_TOPICS
    }
    subscriptions[CaseForwarded] = partial(take_forwarded, intake=intake)
    return subscriptions


async def take_forwarded(
    session: AsyncSession, envelope: Envelope, payload: CaseForwarded, *, intake: Intake
) -> None:
    """Adopt a case a partner region forwarded here, or refuse it (see the module)."""
    index = queries.catalog_in_force(intake.catalogs)
    adopted = await _adoption_of(session, payload.case_id)
    if adopted is not None and adopted.origin_city == payload.from_city:
        return  # forwarded again (a retry out of the origin's triage, a replay): adopted once
    refusal = adoption_refusal(
        payload,
        index,
        handover_problem=_handover_problem(intake, payload),
        submitted_on=payload.submitted_at.astimezone(CITY_TZ).date(),
    )
    if refusal is None and (adopted is not None or await _case_exists(session, payload.case_id)):
        refusal = AdoptionRefusal(
            CASE_ID_IN_USE,
            f"案件编号 {payload.case_id} 已被本地案件使用 / case id {payload.case_id} is "
            f"already a case of {index.city_code}",
        )
    if refusal is None:
        center = municipal_center(index)
        if center is not None:
            await _adopt(session, intake, envelope, payload, center.code)
            return
        refusal = AdoptionRefusal(
            NO_MUNICIPAL_CENTER,
            f"{index.city_code} 的目录没有市级行政服务中心 / the catalog of {index.city_code} "
            "has no municipal center to take the case",
        )
    await _refuse(session, intake, envelope, payload, index, refusal)


def _handover_problem(intake: Intake, forwarded: CaseForwarded) -> str | None:
    """What is wrong with the origin office's handover (None: it verifies), checked against
    the partner office keys this region trusts (dev/test: derived from the shared seed)."""
    try:
        trust = load_trust(intake.runtime.settings)
    except HandoverKeyError as exc:
        return f"no partner office keys are configured here ({exc})"
    check = check_handover(
        forwarded.handover,
        case_id=forwarded.case_id,
        application=forwarded.application,
        trust=trust,
        now=intake.runtime.clock.now(),
    )
    return None if check.ok else check.describe()


async def _adopt(
    session: AsyncSession,
    intake: Intake,
    envelope: Envelope,
    forwarded: CaseForwarded,
    office_code: str,
) -> None:
    """The case taken here under its own id, at this region's municipal center, with a
    handover signed by that office: this region's rules and checks apply unchanged."""
    runtime = intake.runtime
    now = runtime.clock.now()
    application = adopted_application(forwarded.application, office_code)
    row = case_row(forwarded.case_id, application, CaseStatus.submitted, [], now)
    await session.execute(models.cases.insert().values(row))
    await session.execute(
        models.adopted_cases.insert().values(
            case_id=forwarded.case_id,
            origin_city=forwarded.from_city,
            origin_office=forwarded.application.office_code,
            forwarded_event_id=envelope.id,
            adopted_at=now,
        )
    )
    handover = sign_handover(
        case_id=forwarded.case_id,
        application=application,
        office_code=office_code,
        signed_at=now,
        keys=load_keys(runtime.settings),
    )
    await runtime.emit(
        session,
        CaseSubmitted(
            case_id=forwarded.case_id,
            application=application,
            submitted_at=forwarded.submitted_at,
            handover=handover,
            origin=CrossRegionOrigin(
                city_code=forwarded.from_city,
                office_code=forwarded.application.office_code,
                catalog_version=forwarded.catalog_version,
                forwarded_at=forwarded.forwarded_at,
            ),
        ),
        traceparent=envelope.traceparent,
    )
    log.info(
        "cross-region case adopted",
        case_id=forwarded.case_id,
        origin=forwarded.from_city,
        item_code=forwarded.item_code,
    )


async def _refuse(
    session: AsyncSession,
    intake: Intake,
    envelope: Envelope,
    forwarded: CaseForwarded,
    index: CatalogIndex,
    refusal: AdoptionRefusal,
) -> None:
    """`gov.case.adoption_refused.v1` back to the origin (its routing puts the case in its
    triage queue), a warning, the metric and the operators' row."""
    runtime = intake.runtime
    now = runtime.clock.now()
    await runtime.emit(
        session,
        CaseAdoptionRefused(
            case_id=forwarded.case_id,
            from_city=index.city_code,
            to_city=forwarded.from_city,
            code=refusal.code,
            reason=refusal.reason,
            refused_at=now,
            forwarded_id=envelope.id,
        ),
        tocity=forwarded.from_city,
        fromcity=index.city_code,
        traceparent=envelope.traceparent,
    )
    await session.execute(
        pg_insert(models.adoption_refusals)
        .values(
            event_id=inbox_key(envelope.id),
            case_id=forwarded.case_id,
            from_city=forwarded.from_city,
            item_code=forwarded.item_code,
            code=refusal.code,
            reason=refusal.reason,
            refused_at=now,
        )
        .on_conflict_do_nothing()
    )
    log.warning(
        "forwarded case refused",
        case_id=forwarded.case_id,
        origin=forwarded.from_city,
        code=refusal.code,
        reason=refusal.reason,
    )
    XREGION_REFUSED.labels(refusal.code).inc()


async def follow_partner_event(
    session: AsyncSession, envelope: Envelope, payload: Any, *, intake: Intake
) -> None:
    """A case event a partner region relayed here: imported when the case was adopted from
    that region, into the counter's view when the case was taken here and forwarded there."""
    partner = envelope.fromcity
    if not partner:
        raise PermanentError(f"{envelope.type} relayed without ce_fromcity: whose step is it?")
    adopted = await _adoption_of(session, envelope.subject)
    if adopted is not None:
        if adopted.origin_city == partner and envelope.type in IMPORTED_TYPES:
            await _import(intake, session, envelope, partner)
        elif adopted.origin_city != partner:
            log.warning(
                "relayed event of a case adopted from another region passed over",
                case_id=envelope.subject,
                event_type=envelope.type,
                from_city=partner,
                origin=adopted.origin_city,
            )
        return
    route = await _route_of_case_taken_here(session, envelope.subject)
    if route is None or not _forwarded_to(route, partner):
        log.warning(
            "relayed event of a case not forwarded there passed over",
            case_id=envelope.subject,
            event_type=envelope.type,
            from_city=partner,
        )
        return
    await follow_case_events(
        session, [(envelope, payload)], clock=intake.runtime.clock, intake=intake
    )


async def _import(intake: Intake, session: AsyncSession, envelope: Envelope, origin: str) -> None:
    """The origin's step, unchanged, on this region's topic of its type (the outbox row's id
    is its own: the event keeps its `ce_id`)."""
    imported = dataclasses.replace(envelope, tocity=None, fromcity=origin)
    await intake.runtime.outbox.add(
        session,
        EVENT_TYPES[envelope.type].topic,
        imported,
        outbox_id=import_outbox_id(envelope.id, origin),
    )


def _forwarded_to(route: dict[str, Any], partner: str) -> bool:
    """A route not yet known here (`{}`: the routed event not applied yet) is taken on trust:
    only a case forwarded there can have steps there; a known one must name the partner."""
    if not route:
        return True
    return route.get("path") == Path.cross_region.value and route.get("handled_by") == partner


async def _route_of_case_taken_here(session: AsyncSession, case_id: str) -> dict[str, Any] | None:
    """The case's route as the counter sees it (`{}` while none); None: no case of that id."""
    row = (
        await session.execute(select(models.cases.c.route).where(models.cases.c.case_id == case_id))
    ).first()
    if row is None:
        return None
    route: dict[str, Any] = row.route or {}
    return route


async def _adoption_of(session: AsyncSession, case_id: str) -> Any:
    return (
        await session.execute(
            select(models.adopted_cases).where(models.adopted_cases.c.case_id == case_id)
        )
    ).first()


async def _case_exists(session: AsyncSession, case_id: str) -> bool:
    found = await session.execute(
        select(models.cases.c.case_id).where(models.cases.c.case_id == case_id)
    )
    return found.first() is not None
