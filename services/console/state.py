"""The console's settings and its state while it runs: the client of the services (with the
operator token it shows them), its Kafka views, its copy of the catalog and of the partner
regions' catalogs, what it learned about cases from the stream, and how many live streams are
open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr, model_validator

from contracts.catalog import Catalog
from contracts.events import CATALOG_TOPIC, CatalogPublished
from services.common.auth import AuthSettings, Role, mint_token
from services.common.catalog_follower import CatalogFollower
from services.common.limits import DEFAULT_MAX_HEAD_BYTES
from services.common.logs import get_logger
from services.common.partner_catalogs import PartnerCatalogs
from services.common.settings import CommonSettings
from services.console.bundles import BundleBoard, BundleFollower
from services.console.kafka_views import KafkaViews
from services.console.links import PartnerCity, mirrored_topic, partner_of
from services.console.stream import CaseLookup
from services.operators.event_facts import CaseMemory
from services.policy.catalog_index import CatalogIndex

log = get_logger(__name__)


class ConsoleSettings(CommonSettings):
    service: str = "console"
    http_port: int = 8000
    intake_url: str = "http://127.0.0.1:8001"
    routing_url: str = "http://127.0.0.1:8002"
    approval_url: str = "http://127.0.0.1:8003"
    console_token: SecretStr | None = Field(
        None, description="operator bearer token for the services; required outside dev/test"
    )
    upstream_timeout_s: float = Field(5.0, gt=0)
    http_max_head_bytes: int = Field(
        DEFAULT_MAX_HEAD_BYTES, ge=1024, description="request line + headers; over it: 431"
    )
    kafka_timeout_s: float = Field(10.0, gt=0)
    stream_max_clients: int = Field(20, ge=1, description="open live streams at once")
    stream_keepalive_s: float = Field(15.0, gt=0)
    dlq_recent: int = Field(20, ge=0, le=500, description="dead letters listed")
    link_stale_after_s: float = Field(
        30.0, gt=0, description="a partner link whose newest heartbeat is older is shown stale"
    )

    @model_validator(mode="after")
    def _token_outside_dev(self) -> ConsoleSettings:
        if not self.is_dev and self.console_token is None:
            raise ValueError(
                "outside dev/test set TONGBAN_CONSOLE_TOKEN: an operator token from the "
                "identity provider (the console mints its own only in dev/test)"
            )
        return self


class OperatorToken:
    """The bearer token the console shows the services: `TONGBAN_CONSOLE_TOKEN`, or in
    dev/test one minted here (role operator) and minted again before it expires."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.fixed = settings.console_token
        self._auth: AuthSettings | None = None if self.fixed is not None else AuthSettings()
        self._token = ""
        self._renew_at = 0.0

    def header(self) -> dict[str, str]:
        if self.fixed is not None:
            return {"Authorization": f"Bearer {self.fixed.get_secret_value()}"}
        assert self._auth is not None
        if time.monotonic() >= self._renew_at:
            self._token = mint_token(self._auth, subject="tongban-console", role=Role.operator)
            self._renew_at = time.monotonic() + self._auth.auth_token_ttl_s / 2
        return {"Authorization": f"Bearer {self._token}"}


def _catalog_index(published: CatalogPublished) -> CatalogIndex:
    return CatalogIndex(Catalog.model_validate(published.catalog))


class Console:
    """The console's state: upstream client, Kafka views, catalog copy, what it learned."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.token = OperatorToken(settings)
        self.http: httpx.AsyncClient | None = None
        self.kafka = KafkaViews(settings, timeout_s=settings.kafka_timeout_s)
        self.catalogs: CatalogFollower[CatalogIndex] = CatalogFollower(settings, _catalog_index)
        self.partners: PartnerCatalogs[CatalogIndex] = PartnerCatalogs(
            settings, _catalog_index, own_city=self.own_city
        )
        self.facts = CaseMemory(capacity=20_000)
        self.bundles = BundleBoard()
        self._bundle_follower = BundleFollower(settings, self.bundles, self.kafka.partitions)
        self.lookup = CaseLookup(self.fetch_case_view)
        self.streams = 0
        self.closing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.http = httpx.AsyncClient(timeout=self.settings.upstream_timeout_s)
        self._tasks.append(asyncio.create_task(self._follow_catalog(), name="catalog-follower"))
        self._tasks.append(asyncio.create_task(self._follow_bundles(), name="bundle-follower"))
        self._tasks.append(asyncio.create_task(self._follow_partners(), name="partner-catalogs"))

    async def stop(self) -> None:
        self.closing.set()
        self.catalogs.stop()
        self.partners.stop()
        self._bundle_follower.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.kafka.close()
        if self.http is not None:
            await self.http.aclose()

    async def _follow_catalog(self) -> None:
        """The latest catalog (for the district filter and names), from catalog.v1."""

        async def follow() -> None:
            await self.catalogs.start(timeout=30)
            await self.catalogs.run()

        await self._retried("catalog follower", follow)

    async def _follow_bundles(self) -> None:
        """The bundle board, from bundle.v1 and the members' case events."""
        await self._retried("bundle follower", self._bundle_follower.run)

    async def _follow_partners(self) -> None:
        """The partner regions' catalogs, from `<alias>.catalog.v1` (for their city names)."""

        async def follow() -> None:
            await self.partners.start()
            await self.partners.run()

        await self._retried("partner catalogs", follow)

    def own_city(self) -> str | None:
        index = self.catalogs.latest
        return index.catalog.city.code if index is not None else None

    def partner_city(self, alias: str) -> PartnerCity | None:
        """The city of the partner whose catalog arrives as `<alias>.catalog.v1`, if any yet."""
        follower = self.partners.followers.get(mirrored_topic(alias, CATALOG_TOPIC))
        if follower is None or follower.latest_version is None:
            return None
        return partner_of(follower.published[follower.latest_version])

    def partner_names(self) -> dict[str, str]:
        """City code -> name of every partner region whose catalog arrived."""
        return {code: index.catalog.city.name for code, index in self.partners.partners().items()}

    async def _retried(self, what: str, follow: Callable[[], Awaitable[None]]) -> None:
        """`follow` run again 5 s after it fails (Kafka unreachable, a topic not there yet),
        so the console starts and answers without them."""
        while not self.closing.is_set():
            try:
                await follow()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(f"{what} failed; retrying", error=repr(exc))
                await asyncio.sleep(5)

    async def upstream(self, url: str, params: Mapping[str, Any] | None = None) -> httpx.Response:
        assert self.http is not None, "start() first"
        return await self.http.get(url, params=params, headers=self.token.header())

    async def fetch_case_view(self, case_id: str) -> Mapping[str, Any] | None:
        answer = await self.upstream(f"{self.settings.intake_url}/v1/cases/{quote(case_id)}")
        if answer.status_code != 200:
            return None
        body: Mapping[str, Any] = answer.json()
        return body
