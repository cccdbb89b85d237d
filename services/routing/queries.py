"""routing's reads: the triage queue and the catalog version in force. No writes here."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.rest import CatalogVersion, CatalogWarning, TriageEntry
from services.common.catalog import catalog_warnings
from services.common.catalog_follower import CatalogFollower
from services.common.refusals import refused
from services.policy.catalog_index import CatalogIndex
from services.routing import models


async def triage(session: AsyncSession, *, limit: int) -> list[TriageEntry]:
    """Cases that could not be routed, newest first: they wait here, never dropped."""
    routes = models.routes
    rows = await session.execute(
        select(routes)
        .where(routes.c.status == "route_failed")
        .order_by(routes.c.decided_at.desc())
        .limit(limit)
    )
    return [
        TriageEntry(
            case_id=r.case_id,
            item_code=r.item_code,
            failure=r.failure,
            rule=r.rule,
            catalog_version=r.catalog_version,
            failed_at=r.decided_at,
        )
        for r in rows
    ]


def catalog_version(
    catalogs: CatalogFollower[tuple[int, CatalogIndex]], version: int | None = None
) -> CatalogVersion:
    """The version `version` (by default the latest) of the catalog this process holds."""
    version = catalogs.latest_version if version is None else version
    if version is None:
        raise refused(404, "no_catalog", "No catalog loaded", "Load one: POST /v1/catalog")
    published = catalogs.published[version]
    catalog = published.catalog
    built = catalogs.at(version)
    warnings = catalog_warnings(built[1].catalog) if built is not None else []
    return CatalogVersion(
        version=version,
        loaded_at=published.loaded_at,
        city=str(catalog["city"]["code"]),
        items=len(catalog["items"]),
        warnings=[CatalogWarning(field=w.path, message=w.message) for w in warnings],
    )
