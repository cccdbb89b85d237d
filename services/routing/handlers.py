"""routing's event handlers and commands: plain functions over a session and the process's
parts (`Routing`). A refused command raises `Refused` (services.common.refusals); reads are in
`queries`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, null, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import Null

from contracts.catalog import Catalog
from contracts.common import Application, Failure, Handover, Path
from contracts.events import (
    CaseAdoptionRefused,
    CaseForwarded,
    CaseRouted,
    CaseRouteFailed,
    CaseSubmitted,
    CatalogPublished,
    Event,
)
from services.common.catalog import validate_catalog
from services.common.catalog_follower import CatalogFollower
from services.common.city import CITY_TZ
from services.common.db import Driver
from services.common.department_topics import DepartmentTopics, department_copy_rows
from services.common.envelope import Envelope
from services.common.logs import get_logger
from services.common.partner_catalogs import PartnerCatalogs
from services.common.refusals import FieldError, Refusal, Refused, refused
from services.common.rows import insert_rows
from services.common.service import ServiceRuntime
from services.policy.catalog_index import CatalogIndex
from services.policy.routing_rules import (
    R2_CROSS_REGION,
    R2_OUT_OF_JURISDICTION,
    PartnerIndexes,
    RouteOutcome,
    route_case,
)
from services.routing import models
from services.routing.domain.versions import VersionTimeline
from services.routing.domain.xregion import (
    PartnerCase,
    Role,
    refusal_applies,
    refusal_failure,
    relay_to,
)

log = get_logger(__name__)

Catalogs = CatalogFollower[tuple[int, CatalogIndex]]
Partners = PartnerCatalogs[tuple[int, CatalogIndex]]


@dataclass(frozen=True)
class Routing:
    """The parts of one routing process (built by `app.create_app`): its runtime, its copy of
    the catalog versions, the partner regions' catalogs (DESIGN.md §9; None: no partners), and
    the keeper of the departments' topics."""

    runtime: ServiceRuntime
    catalogs: Catalogs
    topics: DepartmentTopics
    partners: Partners | None = None
    timeline: VersionTimeline = field(default_factory=VersionTimeline)

    def partner_catalogs(self) -> PartnerIndexes:
        return self.partners.partners() if self.partners is not None else {}


def own_city(catalogs: Catalogs) -> str | None:
    """This region's city (DESIGN.md §9): the city code of the catalog in force (the latest)."""
    version = catalogs.latest_version
    built = catalogs.at(version) if version is not None else None
    return built[1].city_code if built is not None else None


def build_index(published: CatalogPublished) -> tuple[int, CatalogIndex]:
    return published.version, CatalogIndex(Catalog.model_validate(published.catalog))


NO_CATALOG_LOADED = Refusal(
    503, "no_catalog", "No catalog loaded", "Load one: POST /v1/catalog", extra={"retry_after": 5}
)


def decide(
    follower: Catalogs,
    submitted: CaseSubmitted,
    *,
    version: int | None = None,
    timeline: VersionTimeline | None = None,
    partners: PartnerIndexes | None = None,
) -> RouteOutcome | None:
    """Route by `version`, by default the version in force at the submission (see
    services.routing.domain.versions), and the partners' newest catalogs (§9); None when no
    catalog has been loaded."""
    if version is None:
        version = (timeline or VersionTimeline()).select(follower.published, submitted.submitted_at)
    built = follower.at(version) if version is not None else None
    if built is None:
        return None
    version, index = built
    return route_case(
        index,
        catalog_version=version,
        application=submitted.application,
        submitted_on=submitted.submitted_at.astimezone(CITY_TZ).date(),
        bundle_code=submitted.bundle_code,
        partners=partners,
    )


NO_CATALOG = Failure(
    code="no_catalog", explanation="尚未加载事项目录 / No catalog has been loaded yet"
)


UNSIGNED_CROSS_REGION = Failure(
    code="handover_missing",
    explanation=(
        "跨省通办案件须附收件机构签名的交接凭证，本案没有 / a case across regions is forwarded "
        "only with the intake office's signed handover, and this one has none"
    ),
)


@dataclass(frozen=True, slots=True)
class Effect:
    """What one routing decision changes: the routes row's decision columns and the event; on
    the cross_region path (§9) also the case forwarded to the partner region."""

    values: dict[str, Any]
    event: CaseRouted | CaseRouteFailed
    handled_by: str | None
    forwarded: CaseForwarded | None = None


def effect_of(
    submitted: CaseSubmitted,
    outcome: RouteOutcome | None,
    *,
    own_city: str | None = None,
    now: datetime | None = None,
) -> Effect:
    """`own_city` and `now`: this region's city and the forwarding time, for a cross_region
    route (§9). The partner adopts a forwarded case by its handover: without one the case fails
    here (`handover_missing`, into triage) instead of going out unsigned."""
    route = outcome.route if outcome is not None else None
    if outcome is not None and route is not None and route.path is Path.cross_region:
        if submitted.handover is None or own_city is None or now is None:
            unsigned = RouteOutcome(
                rule=R2_CROSS_REGION,
                catalog_version=outcome.catalog_version,
                failure=UNSIGNED_CROSS_REGION,
                item=outcome.item,
                inputs=outcome.inputs,
            )
            return _failed(submitted, unsigned)
        forwarded = CaseForwarded(
            case_id=submitted.case_id,
            from_city=own_city,
            to_city=route.handled_by,
            item_code=submitted.application.item_code,
            catalog_version=route.catalog_version,
            application=submitted.application,
            submitted_at=submitted.submitted_at,
            handover=submitted.handover,
            forwarded_at=now,
        )
        return replace(_routed(submitted, outcome), forwarded=forwarded)
    if outcome is not None and route is not None and outcome.item is not None:
        return _routed(submitted, outcome)
    return _failed(submitted, outcome)


def _routed(submitted: CaseSubmitted, outcome: RouteOutcome) -> Effect:
    route, item = outcome.route, outcome.item
    assert route is not None and item is not None
    return Effect(
        values={
            "status": "routed",
            "rule": route.rule,
            "catalog_version": route.catalog_version,
            "route": route.model_dump(mode="json"),
            "failure": null(),
            "inputs": dict(outcome.inputs),
        },
        event=CaseRouted(
            case_id=submitted.case_id,
            bundle_id=submitted.bundle_id,
            bundle_code=submitted.bundle_code,
            route=route,
            item=item,
            application=submitted.application,
            submitted_at=submitted.submitted_at,
            handover=submitted.handover,
        ),
        handled_by=route.handled_by,
    )


def _failed(submitted: CaseSubmitted, outcome: RouteOutcome | None) -> Effect:
    if outcome is None:
        failure, rule, version, inputs = NO_CATALOG, "R0-no-catalog", None, None
    else:
        assert outcome.failure is not None
        failure, rule, version = outcome.failure, outcome.rule, outcome.catalog_version
        inputs = dict(outcome.inputs)
    return Effect(
        values={
            "status": "route_failed",
            "rule": rule,
            "catalog_version": version,
            "route": null(),
            "failure": failure.model_dump(mode="json"),
            "inputs": inputs if inputs is not None else null(),
        },
        event=CaseRouteFailed(
            case_id=submitted.case_id,
            bundle_id=submitted.bundle_id,
            bundle_code=submitted.bundle_code,
            failure=failure,
            rule=rule,
            catalog_version=version,
            application=submitted.application,
            submitted_at=submitted.submitted_at,
        ),
        handled_by=None,
    )


async def emit_effect(
    session: AsyncSession,
    effect: Effect,
    *,
    runtime: ServiceRuntime,
    topics: DepartmentTopics,
    traceparent: str | None = None,
) -> Envelope:
    """Write the effect's event into the outbox; a routed case also goes, as the same record
    (same ce_id and headers, key = case id), to its department's topic, in one INSERT of the
    caller's transaction (services.routing.topics).

    A case forwarded to a partner region (§9) has no department here: its routed event names
    the partner's city (ce_handledby), and in the same transaction `gov.case.forwarded.v1` goes
    on xregion.out.v1 addressed to the partner (ce_tocity, ce_fromcity = this city) and the
    case is recorded in `cross_region_cases` (role 'origin'), so its later steps follow it."""
    topic, envelope = runtime.envelope(
        effect.event, handledby=effect.handled_by, traceparent=traceparent
    )
    forwarded = effect.forwarded
    department = (
        effect.handled_by if isinstance(effect.event, CaseRouted) and forwarded is None else None
    )
    if department is not None:
        topics.want(department)  # no I/O: queues the topic's creation if not seen yet
    await session.execute(
        insert(runtime.outbox.table), department_copy_rows(topic, envelope, department)
    )
    if forwarded is not None:
        sent = await runtime.emit(
            session,
            forwarded,
            traceparent=traceparent,
            tocity=forwarded.to_city,
            fromcity=forwarded.from_city,
        )
        await record_partner_case(
            session,
            forwarded.case_id,
            partner_city=forwarded.to_city,
            role=Role.origin,
            forwarded_id=sent.id,
        )
    return envelope


async def record_partner_case(
    session: AsyncSession,
    case_id: str,
    *,
    partner_city: str,
    role: Role,
    forwarded_id: str | None = None,
) -> None:
    """A case across regions (§9), once: the first row stays (a case has one partner); a
    forwarding sent again (a triage retry) becomes the one a refusal must answer."""
    insert_row = pg_insert(models.cross_region_cases).values(
        case_id=case_id, partner_city=partner_city, role=role.value, forwarded_id=forwarded_id
    )
    if forwarded_id is None:
        await session.execute(insert_row.on_conflict_do_nothing())
        return
    await session.execute(
        insert_row.on_conflict_do_update(
            index_elements=[models.cross_region_cases.c.case_id],
            set_={"forwarded_id": forwarded_id},
        )
    )


async def route_submission(
    session: AsyncSession, envelope: Envelope, submitted: CaseSubmitted, *, routing: Routing
) -> None:
    """Route a submitted case by the catalog version in force at its submission; a routed case
    is also written to its department's topic, a case of a partner's applicant forwarded there
    (§9). A case adopted from a partner (`origin`) is recorded for the relay to its origin."""
    if submitted.origin is not None:
        await record_partner_case(
            session, submitted.case_id, partner_city=submitted.origin.city_code, role=Role.handler
        )
    outcome = decide(
        routing.catalogs,
        submitted,
        timeline=routing.timeline,
        partners=routing.partner_catalogs(),
    )
    if (
        outcome is not None
        and outcome.rule == R2_OUT_OF_JURISDICTION
        and routing.partners is not None
        and await routing.partners.look_again()
    ):
        # A partner linked since the last periodic look (intake may have seen it first).
        outcome = decide(
            routing.catalogs,
            submitted,
            timeline=routing.timeline,
            partners=routing.partner_catalogs(),
        )
    effect = effect_of(
        submitted,
        outcome,
        own_city=own_city(routing.catalogs),
        now=routing.runtime.clock.now(),
    )
    row: dict[str, Any] = {
        "case_id": submitted.case_id,
        "item_code": submitted.application.item_code,
        "application": submitted.application.model_dump(mode="json"),
        "submitted_at": submitted.submitted_at,
        "bundle_id": submitted.bundle_id,
        "bundle_code": submitted.bundle_code,
        "handover": (
            submitted.handover.model_dump(mode="json") if submitted.handover is not None else None
        ),
        "decided_at": routing.runtime.clock.now(),
        # SQL NULL for SQLAlchemy's null() (a JSONB column's None would be JSON null there).
        **{name: None if isinstance(v, Null) else v for name, v in effect.values.items()},
    }
    inserted = await insert_rows(
        session, models.routes, [row], on_conflict_do_nothing=True, returning="case_id"
    )
    if not inserted:
        return  # routed before (a resubmission of the same case id): one route per case
    await emit_effect(
        session,
        effect,
        runtime=routing.runtime,
        topics=routing.topics,
        traceparent=envelope.traceparent,
    )


async def retry_route(session: AsyncSession, case_id: str, *, routing: Routing) -> RouteOutcome:
    """An operator re-routes a failed case from triage (`POST /v1/triage/{case_id}/retry`).

    The case is routed again from its stored application and `submitted_at` (R1 still checks
    the items' effective dates against the submission date), but by the catalog version in
    force NOW, not the one in force at the submission: an operator retries after fixing the
    catalog, and routing by the old version would only fail the same way again.

    The row is locked (SELECT ... FOR UPDATE) for the transaction, so two concurrent retries
    cannot both route the case: the second waits, then sees it routed (`NotInTriage`), or
    retries a still-failed case once more. The row's decision, `decided_at` and `retries`
    change, and `gov.case.routed.v1` (with ce_handledby; also to the department's topic) or
    `gov.case.route_failed.v1` is written to the outbox, all in the caller's transaction.

    A partner region's applicant's case (one the partner refused, `partner_refused`, §9) is
    routed by the partner's newest catalog and, routed cross_region again, forwarded again
    under the same case id.

    Refused: `case_not_found` (routing has no such case), `not_in_triage` (it is not
    route_failed), `no_catalog` (nothing loaded to route by).
    """
    routes = models.routes
    row = (
        await session.execute(select(routes).where(routes.c.case_id == case_id).with_for_update())
    ).one_or_none()
    if row is None:
        raise refused(404, "case_not_found", "No such case", f"routing has no case {case_id!r}")
    if row.status != "route_failed":
        raise refused(
            409,
            "not_in_triage",
            "The case is not in triage",
            f"case {case_id!r} is {row.status}; only a route_failed case can be retried",
        )
    version = routing.catalogs.latest_version
    if version is None:
        raise Refused(NO_CATALOG_LOADED)
    submitted = CaseSubmitted(
        case_id=row.case_id,
        application=Application.model_validate(row.application),
        submitted_at=row.submitted_at,
        handover=Handover.model_validate(row.handover) if row.handover is not None else None,
        # A member stays a member out of triage: its bundle's window and id go with it (§8).
        bundle_id=row.bundle_id,
        bundle_code=row.bundle_code,
    )
    outcome = decide(
        routing.catalogs, submitted, version=version, partners=routing.partner_catalogs()
    )
    assert outcome is not None  # the version exists
    effect = effect_of(
        submitted, outcome, own_city=own_city(routing.catalogs), now=routing.runtime.clock.now()
    )
    await session.execute(
        update(routes)
        .where(routes.c.case_id == case_id)
        .values(
            **effect.values, decided_at=routing.runtime.clock.now(), retries=routes.c.retries + 1
        )
    )
    await emit_effect(session, effect, runtime=routing.runtime, topics=routing.topics)
    return outcome


async def relay_case_event(
    session: AsyncSession, envelope: Envelope, payload: Event, *, routing: Routing
) -> None:
    """`routing-xregion` (§9), one event (a batch's events one by one after a failure)."""
    await relay_case_events(session, [(envelope, payload)], routing=routing)


async def relay_case_events(
    session: AsyncSession, events: Sequence[tuple[Envelope, Event]], *, routing: Routing
) -> None:
    """`routing-xregion` (§9): this region's case events about cases across regions go,
    unchanged, to the partner region (domain.xregion.relay_to says which, and where), in
    offset order. Only the events `concern_partners` kept come here."""
    cases = await _partner_cases(session, events)
    city = own_city(routing.catalogs)
    for envelope, payload in events:
        case_id = envelope_case_id(envelope)
        origin = payload.origin if isinstance(payload, CaseSubmitted) else None
        if origin is not None and case_id not in cases:
            # An adopted case's own submission: its row may not be written yet (routing-intake).
            await record_partner_case(
                session, case_id, partner_city=origin.city_code, role=Role.handler
            )
            cases[case_id] = PartnerCase(origin.city_code, Role.handler)
        to_city = relay_to(
            envelope.type,
            fromcity=envelope.fromcity,
            own_city=city,
            case=cases.get(case_id),
            adopted_from=origin.city_code if origin is not None else None,
        )
        if to_city is None:
            continue
        if city is None:  # no catalog: this region has no name yet (retried, then a dead letter)
            raise RuntimeError(f"cannot relay {envelope.type} of {case_id}: no catalog loaded")
        await routing.runtime.relay_to_partner(session, envelope, to_city=to_city, from_city=city)


async def concern_partners(driver: Driver, events: Sequence[Envelope]) -> list[bool]:
    """`routing-xregion`'s filter: every case event of the region passes that group, and
    nearly all are about cases of this region alone. Those (no `cross_region_cases` row, not
    an adopted submission) are passed over with one read per batch, with no transaction and
    no inbox row, and their payloads are never validated: the filter reads the envelopes."""
    case_ids = [envelope_case_id(envelope) for envelope in events]
    rows = await driver.fetch(
        f"SELECT case_id FROM {models.cross_region_cases.fullname} WHERE case_id = ANY($1::text[])",
        sorted(set(case_ids)),
    )
    # An adopted case's submission makes its row as it is applied: the case's later events
    # in the same batch concern the partner too (the handler relays them after it).
    adopted = {
        case_id
        for envelope, case_id in zip(events, case_ids, strict=True)
        if envelope.type == CaseSubmitted.TYPE
        and isinstance(envelope.data, dict)
        and envelope.data.get("origin") is not None
    }
    partner_cases = {row[0] for row in rows} | adopted
    return [case_id in partner_cases for case_id in case_ids]


def envelope_case_id(envelope: Envelope) -> str:
    """The case an event is about, read before its payload is validated: the payload's
    `case_id` when it is a string, else the event's subject. The relay reads it so too, so
    the filter and the relay never disagree on a case."""
    data = envelope.data
    case_id = data.get("case_id") if isinstance(data, dict) else None
    return case_id if isinstance(case_id, str) and case_id else str(envelope.subject or "")


async def _partner_cases(
    session: AsyncSession, events: Sequence[tuple[Envelope, Event]]
) -> dict[str, PartnerCase]:
    table = models.cross_region_cases
    case_ids = {envelope_case_id(envelope) for envelope, _payload in events}
    return {
        row.case_id: PartnerCase(row.partner_city, Role(row.role))
        for row in await session.execute(select(table).where(table.c.case_id.in_(case_ids)))
    }


async def partner_refused(
    session: AsyncSession, envelope: Envelope, refused: CaseAdoptionRefused, *, routing: Routing
) -> None:
    """`routing-partners` (§9): the partner region refused a case forwarded to it. The case
    fails routing here (`partner_refused`, rule R2-cross-region) and waits in triage, where an
    operator may retry it (forwarding it again) once the cause is mended."""
    routes = models.routes
    row = (
        await session.execute(
            select(routes).where(routes.c.case_id == refused.case_id).with_for_update()
        )
    ).one_or_none()
    sent = (
        await session.execute(
            select(models.cross_region_cases.c.forwarded_id).where(
                models.cross_region_cases.c.case_id == refused.case_id
            )
        )
    ).scalar()
    if row is None or not refusal_applies(
        refused, status=row.status, route=row.route, forwarded_id=sent
    ):
        log.warning(
            "partner refusal ignored: no such case routed to that partner",
            case_id=refused.case_id,
            partner=refused.from_city,
            code=refused.code,
        )
        return
    log.warning(
        "partner refused a forwarded case",
        case_id=refused.case_id,
        partner=refused.from_city,
        code=refused.code,
    )
    failure = refusal_failure(refused)
    await session.execute(
        update(routes)
        .where(routes.c.case_id == refused.case_id)
        .values(
            status="route_failed",
            rule=R2_CROSS_REGION,
            route=null(),
            failure=failure.model_dump(mode="json"),
            decided_at=routing.runtime.clock.now(),
        )
    )
    await routing.runtime.emit(
        session,
        CaseRouteFailed(
            case_id=row.case_id,
            bundle_id=row.bundle_id,
            bundle_code=row.bundle_code,
            failure=failure,
            rule=R2_CROSS_REGION,
            catalog_version=row.catalog_version,
            application=Application.model_validate(row.application),
            submitted_at=row.submitted_at,
        ),
        traceparent=envelope.traceparent,
    )


async def load_catalog(
    session: AsyncSession, raw: dict[str, Any], *, runtime: ServiceRuntime
) -> CatalogPublished:
    """Validate a whole catalog; store it as the next version and publish it, or refuse it
    whole with every problem listed (the version in force stays)."""
    catalog, problems = validate_catalog(raw)
    if catalog is None or problems:
        raise refused(
            422,
            "invalid_catalog",
            "The catalog is refused whole",
            f"{len(problems)} problem(s); the version in force stays. Fix them all and load again.",
            errors=tuple(FieldError(p.path, p.message) for p in problems),
        )
    # Serialise loads: versions are consecutive and never collide.
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('routing-catalog'))"))
    current = (await session.execute(select(func.max(models.catalog_versions.c.version)))).scalar()
    version = (current or 0) + 1
    now = runtime.clock.now()  # from `now` the version is in force (domain.versions)
    body = catalog.model_dump(mode="json")
    await session.execute(
        models.catalog_versions.insert().values(
            version=version, city=catalog.city.code, catalog=body, loaded_at=now
        )
    )
    published = CatalogPublished(version=version, loaded_at=now, catalog=body)
    await runtime.emit(session, published, subject=f"{catalog.city.code}/catalog/{version}")
    return published


def department_codes(published: CatalogPublished) -> list[str]:
    """The codes of every department of a catalog version (their topics are created)."""
    return [str(d["code"]) for d in published.catalog.get("departments", [])]


async def ensure_department_topics(routing: Routing) -> None:
    """At start-up, the topics of the latest catalog version's departments (a restart heals a
    creation that failed); best effort, the background task retries."""
    version = routing.catalogs.latest_version
    if version is not None:
        await routing.topics.ensure(
            department_codes(routing.catalogs.published[version]), reason="startup"
        )
