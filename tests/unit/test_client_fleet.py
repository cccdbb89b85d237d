"""The load generators' client fleet: requests spread over many clients, all closed at the end."""

from __future__ import annotations

import httpx
import pytest

from services.cli.devclient import ClientFleet

pytestmark = pytest.mark.unit


async def test_request_n_goes_through_client_n_modulo_the_fleet_and_all_close() -> None:
    seen: list[int] = []

    def make() -> httpx.AsyncClient:
        number = len(fleet_clients)
        fleet_clients.append(number)

        def answer(request: httpx.Request) -> httpx.Response:
            seen.append(number)
            return httpx.Response(204)

        return httpx.AsyncClient(transport=httpx.MockTransport(answer))

    fleet_clients: list[int] = []
    fleet = ClientFleet(make, count=3)
    for n in range(7):
        assert (await fleet[n].get("http://t/")).status_code == 204
    assert seen == [0, 1, 2, 0, 1, 2, 0]
    await fleet.aclose()
    assert all(c.is_closed for c in fleet.clients)


def test_a_fleet_needs_a_client() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ClientFleet(httpx.AsyncClient, count=0)
