"""The parts of one intake process, which every handler of intake is given: its runtime, its
copy of the catalog (followed from `catalog.v1`) and the rate limiter of submissions."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.catalog import Catalog
from contracts.events import CatalogPublished
from services.common.catalog_follower import CatalogFollower
from services.common.handover import load_keys
from services.common.limits import RateLimiter
from services.common.service import ServiceRuntime
from services.policy.catalog_index import CatalogIndex


@dataclass(frozen=True)
class Intake:
    """The parts of one intake process (built by `app.create_app`): its runtime, its copy of
    the catalog, and the per-client rate limiter of submissions."""

    runtime: ServiceRuntime
    catalogs: CatalogFollower[CatalogIndex]
    limiter: RateLimiter


def build_index(published: CatalogPublished) -> CatalogIndex:
    return CatalogIndex(Catalog.model_validate(published.catalog))


async def check_handover_keys(intake: Intake) -> None:
    """Fail at startup, with what to set, when production has no signing keys."""
    load_keys(intake.runtime.settings)
