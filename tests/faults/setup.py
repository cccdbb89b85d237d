"""Loading the demo catalog for the fault suite and waiting until every intake replica has it."""

from __future__ import annotations

from typing import Any

from services.cli.devclient import ActingClient
from services.operators.catalog_file import load_catalog_file
from tests.conftest import ROOT, eventually
from tests.faults.harness import url_of

DEMO_CATALOG = ROOT / "deploy" / "demo" / "catalog.yaml"


async def load_demo_catalog(replicas: int) -> dict[str, Any]:
    raw = load_catalog_file(DEMO_CATALOG)
    async with ActingClient(timeout=30) as client:
        answer = await client.post(f"{url_of('routing', 1)}/v1/catalog", json=raw)
        if answer.status_code != 201:
            raise RuntimeError(
                f"loading the demo catalog failed: {answer.status_code} {answer.text}"
            )
        for replica in range(1, replicas + 1):

            async def has_it(replica: int = replica) -> bool:
                items = await client.get(f"{url_of('intake', replica)}/v1/items")
                return items.status_code == 200 and len(items.json()) == len(raw["items"])

            await eventually(has_it, what=f"intake replica {replica} to follow the catalog")
    return raw
