"""A dev/test HTTP client that acts as the right person for each call (dev mode only).

tongban's REST API is for clerks, reviewers, operators and admins, each with a bearer token
scoped to their office or department. The demo and the end-to-end tests play all of them; this
client picks, per request, the role a real caller of that endpoint would have and mints a dev
token for it (never outside dev/test: `mint_token` refuses without the dev secret).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from services.common.auth import AuthSettings, Role, mint_token

# The dev ports, moved by SERVICES_PORT_OFFSET like deploy/local/services.sh moves them (a
# second stack beside the default one).
SERVICES_PORT_OFFSET = int(os.environ.get("SERVICES_PORT_OFFSET") or 0)
INTAKE_PORT, ROUTING_PORT, APPROVAL_PORT, DELIVERY_PORT = (
    port + SERVICES_PORT_OFFSET for port in (8001, 8002, 8003, 8004)
)
CONSOLE_PORT = 8000 + SERVICES_PORT_OFFSET


SERVICE_PORTS = {"intake": 8001, "routing": 8002, "approval": 8003, "delivery": 8004}


@dataclass(frozen=True)
class ServicePorts:
    """The first replica's port of each service of a stack at `offset` (services.sh)."""

    offset: int = SERVICES_PORT_OFFSET

    def port(self, service: str) -> int:
        return SERVICE_PORTS[service] + self.offset

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.port(service)}"


_CASE_ACTION = re.compile(
    r"^/v1/cases/(?P<case>[^/]+)/(?P<action>materials|withdraw|pickup|rating)$"
)
_BUNDLE_ACTION = re.compile(
    r"^/v1/bundles/(?P<bundle>[^/]+)/(?P<action>materials|withdraw|pickup|rating)$"
)


class ActingClient(httpx.AsyncClient):
    """`httpx.AsyncClient` whose requests carry the token of whoever would make them.

    An explicit `Authorization` header (or `headers={"Authorization": ""}` for none) wins, so
    tests can also act as a chosen role, or as nobody. `port_offset` names the stack it talks
    to (default SERVICES_PORT_OFFSET): a second region on the same machine has its own.
    """

    def __init__(
        self,
        *,
        intake_url: str | None = None,
        port_offset: int = SERVICES_PORT_OFFSET,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._settings = AuthSettings()
        self._ports = ServicePorts(port_offset)
        self._intake_url = intake_url or self._ports.url("intake")
        self._tokens: dict[tuple[Role, str | None], str] = {}

    def token(self, role: Role, scope: str | None = None) -> str:
        key = (role, scope)
        if key not in self._tokens:
            self._tokens[key] = mint_token(
                self._settings, subject=f"dev-{role.value}-{scope}", role=role, scope=scope
            )
        return self._tokens[key]

    def headers_for(self, role: Role, scope: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, scope)}"}

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        if "authorization" not in request.headers:
            role, scope = await self._acting_as(request)
            request.headers["Authorization"] = f"Bearer {self.token(role, scope)}"
        elif not request.headers["authorization"]:
            del request.headers["authorization"]
        return await super().send(request, **kwargs)

    async def _acting_as(self, request: httpx.Request) -> tuple[Role, str | None]:
        port, path, method = request.url.port, request.url.path, request.method
        body = _json(request)
        query = dict(request.url.params)
        intake, routing, approval, delivery = (self._ports.port(s) for s in SERVICE_PORTS)
        if port == intake and method == "POST" and path in ("/v1/cases", "/v1/bundles"):
            return Role.clerk, _office_scope(body.get("office_code"), body.get("channel"))
        if port == routing and path == "/v1/catalog" and method == "POST":
            return Role.admin, None
        if port == approval:
            department = body.get("department") or query.get("department")
            if method == "POST" or (department and path in ("/v1/worklist", "/v1/followups")):
                return Role.reviewer, department
        match = _CASE_ACTION.match(path)
        if match and method == "POST" and port in (intake, delivery):
            return Role.clerk, await self._office_of(match["case"])
        match = _BUNDLE_ACTION.match(path)
        if match and method == "POST" and port in (intake, delivery):
            return Role.clerk, await self._office_of(match["bundle"], what="bundles")
        return Role.operator, None

    async def _office_of(self, ident: str, *, what: str = "cases") -> str:
        """The office that took a case or a bundle (or `online`), as intake knows it."""
        answer = await super().send(
            self.build_request(
                "GET",
                f"{self._intake_url}/v1/{what}/{ident}",
                headers=self.headers_for(Role.operator),
            )
        )
        if answer.status_code != 200:
            return "online"
        view = answer.json()
        return _office_scope(view.get("office_code"), view.get("channel"))


async def wait_listed(http: httpx.AsyncClient, url: str, expected: int, what: str) -> None:
    """Until GET `url` lists `expected` entries (20 s at most): a copy that has caught up."""
    for _ in range(100):
        answer = await http.get(url)
        if answer.status_code == 200 and len(answer.json()) == expected:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"intake did not receive {what} in 20 s")


async def submit_new(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST a new submission (its own Idempotency-Key) and its 201 answer; refused: raise."""
    answer = await http.post(url, json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
    if answer.status_code != 201:
        raise RuntimeError(f"submission refused ({answer.status_code}): {answer.text}")
    created: dict[str, Any] = answer.json()
    return created


Client = TypeVar("Client", bound=httpx.AsyncClient)


class ClientFleet(Generic[Client]):
    """Many HTTP clients with a few connections each, as a city's counter terminals are.

    A load generator with one client holding hundreds of concurrent connections spends its
    CPU in its own pool (httpcore checks every connection for every request): past a few
    hundred requests in flight the generator, not the service, sets the pace and the
    answers seem to take seconds. Request n goes through client n modulo the fleet's size.
    """

    def __init__(self, make: Callable[[], Client], count: int = 32) -> None:
        if count < 1:
            raise ValueError("a fleet has at least one client")
        self.clients = [make() for _ in range(count)]

    def __getitem__(self, n: int) -> Client:
        return self.clients[n % len(self.clients)]

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients))


def _office_scope(office_code: str | None, channel: str | None) -> str:
    return "online" if channel == "online" or not office_code else office_code


def _json(request: httpx.Request) -> dict[str, Any]:
    if not request.content:
        return {}
    try:
        data = json.loads(request.content)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
