"""routing's event handlers and catalog loading: plain functions over a session."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.catalog import Catalog
from contracts.common import Failure
from contracts.events import CaseRouted, CaseRouteFailed, CaseSubmitted, CatalogPublished
from services.common.catalog import CatalogIndex, validate_catalog
from services.common.catalog_follower import CatalogFollower
from services.common.envelope import Envelope
from services.common.service import ServiceRuntime
from services.routing import models
from services.routing.rules import RouteOutcome, route_case

CITY_TZ = ZoneInfo("Asia/Shanghai")


class CatalogRefused(Exception):
    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the catalog")
        self.problems = problems


def build_index(published: CatalogPublished) -> tuple[int, CatalogIndex]:
    return published.version, CatalogIndex(Catalog.model_validate(published.catalog))


def decide(
    follower: CatalogFollower[tuple[int, CatalogIndex]], submitted: CaseSubmitted
) -> RouteOutcome | None:
    latest = follower.latest
    if latest is None:
        return None
    version, index = latest
    return route_case(
        index,
        catalog_version=version,
        application=submitted.application,
        submitted_on=submitted.submitted_at.astimezone(CITY_TZ).date(),
    )


async def route_submission(
    session: AsyncSession,
    envelope: Envelope,
    submitted: CaseSubmitted,
    *,
    runtime: ServiceRuntime,
    follower: CatalogFollower[tuple[int, CatalogIndex]],
) -> None:
    outcome = decide(follower, submitted)
    row: dict[str, Any] = {
        "case_id": submitted.case_id,
        "item_code": submitted.application.item_code,
        "application": submitted.application.model_dump(mode="json"),
        "submitted_at": submitted.submitted_at,
    }
    if outcome is not None and outcome.route is not None and outcome.item is not None:
        route = outcome.route
        row |= {
            "status": "routed",
            "rule": route.rule,
            "catalog_version": route.catalog_version,
            "route": route.model_dump(mode="json"),
        }
        event: CaseRouted | CaseRouteFailed = CaseRouted(
            case_id=submitted.case_id,
            route=route,
            item=outcome.item,
            application=submitted.application,
            submitted_at=submitted.submitted_at,
        )
        handled_by: str | None = route.handled_by
    else:
        if outcome is None:
            failure = Failure(
                code="no_catalog", explanation="尚未加载事项目录 / No catalog has been loaded yet"
            )
            rule, version = "R0-no-catalog", None
        else:
            assert outcome.failure is not None
            failure, rule, version = outcome.failure, outcome.rule, outcome.catalog_version
        row |= {
            "status": "route_failed",
            "rule": rule,
            "catalog_version": version,
            "failure": failure.model_dump(mode="json"),
        }
        event = CaseRouteFailed(
            case_id=submitted.case_id,
            failure=failure,
            rule=rule,
            catalog_version=version,
            application=submitted.application,
            submitted_at=submitted.submitted_at,
        )
        handled_by = None
    inserted = await session.execute(
        pg_insert(models.routes)
        .values(row)
        .on_conflict_do_nothing()
        .returning(models.routes.c.case_id)
    )
    if inserted.scalar() is None:
        return  # routed before (a resubmission of the same case id): one route per case
    event_type = (
        "gov.case.routed.v1" if isinstance(event, CaseRouted) else "gov.case.route_failed.v1"
    )
    await runtime.emit(
        session, event_type, event, handledby=handled_by, traceparent=envelope.traceparent
    )


async def load_catalog(
    session: AsyncSession, raw: dict[str, Any], *, runtime: ServiceRuntime
) -> CatalogPublished:
    """Validate a whole catalog; store it as the next version and publish it, or refuse it
    whole with every problem listed (the version in force stays)."""
    catalog, problems = validate_catalog(raw)
    if catalog is None or problems:
        raise CatalogRefused([{"field": p.path, "message": p.message} for p in problems])
    # Serialise loads: versions are consecutive and never collide.
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('routing-catalog'))"))
    current = (await session.execute(select(func.max(models.catalog_versions.c.version)))).scalar()
    version = (current or 0) + 1
    now = datetime.now(UTC)
    body = catalog.model_dump(mode="json")
    await session.execute(
        models.catalog_versions.insert().values(
            version=version, city=catalog.city.code, catalog=body, loaded_at=now
        )
    )
    published = CatalogPublished(version=version, loaded_at=now, catalog=body)
    await runtime.emit(
        session,
        "gov.catalog.published.v1",
        published,
        subject=f"{catalog.city.code}/catalog/{version}",
    )
    return published
