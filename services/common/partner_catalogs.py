"""The partner regions' catalogs (DESIGN.md §9), each followed from its mirrored copy.

MirrorMaker 2 copies a partner's compacted `catalog.v1` here as `<alias>.catalog.v1`. A topic
appears when a link is made, so this looks for such topics at start and then every
`kafka_metadata_max_age_ms`, and keeps one `CatalogFollower` per topic (each process reads each
whole, as it does its own catalog). A partner is known by the city code of its newest catalog
(the aliases are deployment names only); a catalog of this region's own city that comes back
over a link is not a partner's.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from contracts.events import CatalogPublished
from services.common.catalog_follower import CatalogFollower
from services.common.kafka import PARTNER_CATALOG_PATTERN, client_options
from services.common.logs import get_logger
from services.common.settings import CommonSettings

log = get_logger(__name__)

T = TypeVar("T")

# The least time between two looks for new partner topics asked for by a reader.
LOOK_AGAIN_AFTER_S = 5.0


class PartnerCatalogs(Generic[T]):
    """city code -> `build(published)` of that partner's newest catalog."""

    def __init__(
        self,
        settings: CommonSettings,
        build: Callable[[CatalogPublished], T],
        *,
        own_city: Callable[[], str | None],
        on_unreadable: Callable[[ConsumerRecord[bytes, bytes], str], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.build = build
        self.own_city = own_city
        self.on_unreadable = on_unreadable
        self.followers: dict[str, CatalogFollower[T]] = {}  # mirrored topic -> its follower
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._pattern = re.compile(PARTNER_CATALOG_PATTERN)
        self._looked_at = float("-inf")  # the last `look_again` (event-loop time)

    # -- reading ---------------------------------------------------------------------------------

    def partners(self) -> dict[str, T]:
        """Every partner's newest catalog by city code (this region's own city left out)."""
        own = self.own_city()
        found: dict[str, tuple[float, T]] = {}
        for follower in self.followers.values():
            version = follower.latest_version
            if version is None:
                continue
            city = city_of(follower.published[version])
            if city is None or city == own:
                continue
            loaded = follower.published[version].loaded_at.timestamp()
            # Two links from one partner (a re-created alias): the newer load wins.
            if city not in found or loaded > found[city][0]:
                found[city] = (loaded, follower.versions[version])
        return {city: built for city, (_, built) in found.items()}

    def published(self, city: str) -> CatalogPublished | None:
        """The newest catalog event of partner `city`, as it was published there."""
        newest: CatalogPublished | None = None
        for follower in self.followers.values():
            version = follower.latest_version
            if version is None:
                continue
            event = follower.published[version]
            if city_of(event) == city and (newest is None or event.loaded_at > newest.loaded_at):
                newest = event
        return newest

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Follow every partner catalog topic there is now, each read to its end."""
        await self._discover()

    async def run(self) -> None:
        """Keep looking for new partner topics; the followers keep up on their own."""
        interval = self.settings.kafka_metadata_max_age_ms / 1000
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=interval)
                except TimeoutError:
                    pass
                if not self._stop.is_set():
                    try:
                        await self._discover()
                    except Exception as exc:  # the broker away: look again next time
                        log.warning("partner catalog topics not listed", error=repr(exc))
        finally:
            for follower in self.followers.values():
                follower.stop()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop(self) -> None:
        self._stop.set()
        for follower in self.followers.values():
            follower.stop()

    async def look_again(self) -> bool:
        """Look for partner topics now (a region linked since the last look); True when a new
        one is followed. For a reader that met an applicant of no known region: the link may
        be younger than the periodic look (`kafka_metadata_max_age_ms`). At most one look per
        `LOOK_AGAIN_AFTER_S`: a stream of applicants of no region costs no broker call each."""
        now = asyncio.get_running_loop().time()
        if now - self._looked_at < LOOK_AGAIN_AFTER_S:
            return False
        self._looked_at = now
        known = len(self.followers)
        try:
            await self._discover()
        except Exception as exc:  # the broker away: the periodic look tries again
            log.warning("partner catalog topics not listed", error=repr(exc))
            return False
        return len(self.followers) > known

    async def _discover(self) -> None:
        admin = AIOKafkaAdminClient(**client_options(self.settings))
        await admin.start()
        try:
            topics = sorted(t for t in await admin.list_topics() if self._pattern.match(t))
        finally:
            await admin.close()
        for topic in topics:
            if topic in self.followers:
                continue
            follower = CatalogFollower(
                self.settings, self.build, on_unreadable=self.on_unreadable, topic=topic
            )
            await follower.start()
            self.followers[topic] = follower
            self._tasks.append(asyncio.create_task(follower.run(), name=f"partner:{topic}"))
            log.info("partner catalog followed", topic=topic, versions=len(follower.versions))


def city_of(published: CatalogPublished) -> str | None:
    city = published.catalog.get("city")
    code = city.get("code") if isinstance(city, dict) else None
    return code if isinstance(code, str) else None
