"""The parts of one intake process, which every handler of intake is given: its runtime, its
copy of the catalog (followed from `catalog.v1`), the partner regions' catalogs (followed from
their mirrored `<alias>.catalog.v1`, DESIGN.md §9) and the rate limiter of submissions."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.catalog import Catalog
from contracts.events import CatalogPublished
from services.common.catalog_follower import CatalogFollower
from services.common.handover import load_keys
from services.common.limits import RateLimiter
from services.common.partner_catalogs import PartnerCatalogs
from services.common.service import ServiceRuntime
from services.policy.catalog_index import CatalogIndex


@dataclass(frozen=True)
class Intake:
    """The parts of one intake process (built by `app.create_app`): its runtime, its copy of
    the catalog, the per-client rate limiter of submissions, and the partner regions'
    catalogs (none in a process that follows no partner)."""

    runtime: ServiceRuntime
    catalogs: CatalogFollower[CatalogIndex]
    limiter: RateLimiter
    partners: PartnerCatalogs[CatalogIndex] | None = None

    def own_city(self) -> str | None:
        """This region's city: the city code of the catalog in force (None before one)."""
        return city_of_catalog(self.catalogs)

    def partner_catalogs(self) -> dict[str, CatalogIndex]:
        """Every partner region's newest catalog by city code."""
        return self.partners.partners() if self.partners is not None else {}

    def partner_versions(self) -> dict[str, int]:
        """The version of each partner region's newest catalog, by city code."""
        if self.partners is None:
            return {}
        published = {city: self.partners.published(city) for city in self.partner_catalogs()}
        return {city: p.version for city, p in published.items() if p is not None}


def city_of_catalog(catalogs: CatalogFollower[CatalogIndex]) -> str | None:
    latest = catalogs.latest
    return latest.city_code if latest is not None else None


def build_index(published: CatalogPublished) -> CatalogIndex:
    return CatalogIndex(Catalog.model_validate(published.catalog))


async def check_handover_keys(intake: Intake) -> None:
    """Fail at startup, with what to set, when production has no signing keys."""
    load_keys(intake.runtime.settings)
