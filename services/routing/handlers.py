"""routing's event handlers and commands: plain functions over a session and the process's
parts (`Routing`). A refused command raises `Refused` (services.common.refusals); reads are in
`queries`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, null, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.catalog import Catalog
from contracts.common import Application, Failure, Handover
from contracts.events import CaseRouted, CaseRouteFailed, CaseSubmitted, CatalogPublished
from services.common.catalog import validate_catalog
from services.common.catalog_follower import CatalogFollower
from services.common.city import CITY_TZ
from services.common.department_topics import DepartmentTopics, department_copy_rows
from services.common.envelope import Envelope
from services.common.refusals import FieldError, Refusal, Refused, refused
from services.common.service import ServiceRuntime
from services.policy.catalog_index import CatalogIndex
from services.policy.routing_rules import RouteOutcome, route_case
from services.routing import models
from services.routing.domain.versions import VersionTimeline

Catalogs = CatalogFollower[tuple[int, CatalogIndex]]


@dataclass(frozen=True)
class Routing:
    """The parts of one routing process (built by `app.create_app`): its runtime, its copy of
    the catalog versions, and the keeper of the departments' topics."""

    runtime: ServiceRuntime
    catalogs: Catalogs
    topics: DepartmentTopics
    timeline: VersionTimeline = field(default_factory=VersionTimeline)


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
) -> RouteOutcome | None:
    """Route by `version`, by default the version in force at the submission (see
    services.routing.domain.versions); None when no catalog has been loaded."""
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
    )


NO_CATALOG = Failure(
    code="no_catalog", explanation="尚未加载事项目录 / No catalog has been loaded yet"
)


@dataclass(frozen=True, slots=True)
class Effect:
    """What one routing decision changes: the routes row's decision columns and the event."""

    values: dict[str, Any]
    event: CaseRouted | CaseRouteFailed
    handled_by: str | None


def effect_of(submitted: CaseSubmitted, outcome: RouteOutcome | None) -> Effect:
    if outcome is not None and outcome.route is not None and outcome.item is not None:
        route = outcome.route
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
                item=outcome.item,
                application=submitted.application,
                submitted_at=submitted.submitted_at,
                handover=submitted.handover,
            ),
            handled_by=route.handled_by,
        )
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
    caller's transaction (services.routing.topics)."""
    topic, envelope = runtime.envelope(
        effect.event, handledby=effect.handled_by, traceparent=traceparent
    )
    department = effect.handled_by if isinstance(effect.event, CaseRouted) else None
    if department is not None:
        topics.want(department)  # no I/O: queues the topic's creation if not seen yet
    await session.execute(
        insert(runtime.outbox.table), department_copy_rows(topic, envelope, department)
    )
    return envelope


async def route_submission(
    session: AsyncSession, envelope: Envelope, submitted: CaseSubmitted, *, routing: Routing
) -> None:
    """Route a submitted case by the catalog version in force at its submission; a routed case
    is also written to its department's topic."""
    effect = effect_of(submitted, decide(routing.catalogs, submitted, timeline=routing.timeline))
    row: dict[str, Any] = {
        "case_id": submitted.case_id,
        "item_code": submitted.application.item_code,
        "application": submitted.application.model_dump(mode="json"),
        "submitted_at": submitted.submitted_at,
        "bundle_id": submitted.bundle_id,
        "bundle_code": submitted.bundle_code,
        "handover": (
            submitted.handover.model_dump(mode="json") if submitted.handover is not None else null()
        ),
        "decided_at": routing.runtime.clock.now(),
        **effect.values,
    }
    inserted = await session.execute(
        pg_insert(models.routes)
        .values(row)
        .on_conflict_do_nothing()
        .returning(models.routes.c.case_id)
    )
    if inserted.scalar() is None:
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
    outcome = decide(routing.catalogs, submitted, version=version)
    assert outcome is not None  # the version exists
    effect = effect_of(submitted, outcome)
    await session.execute(
        update(routes)
        .where(routes.c.case_id == case_id)
        .values(
            **effect.values, decided_at=routing.runtime.clock.now(), retries=routes.c.retries + 1
        )
    )
    await emit_effect(session, effect, runtime=routing.runtime, topics=routing.topics)
    return outcome


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
