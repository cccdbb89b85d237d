"""A second tongban region beside the test run's own, linked by real MirrorMaker 2 (DESIGN.md §9).

Region 1 is the stack the suite already runs (its Kafka, PostgreSQL and, for the e2e tests,
its four services). `SecondRegion` starts region 2 the way `make federation` does
(deploy/local/stack.sh, `tongban migrate`/`topics`, services.sh, and mirror.sh both ways:
the last two side by side), ONCE for whoever needs it, and stops everything it started at
the end, its PostgreSQL data kept outside the run folder included (postgres.sh clean).

Ports, relative to region 1's so that two suites on one machine stay apart and nothing clashes
with the suite's own stack, test_mirror.py's clusters (+100, +200) or `make federation` (19092,
15432, +10000): Kafka first broker + 300, PostgreSQL + 300, services offset + 500
(TONGBAN_REGION2_TEST_KAFKA_PORT_BASE, ..._PG_PORT, ..._SERVICES_PORT_OFFSET move them).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from services.cli.devclient import SERVICES_PORT_OFFSET, ServicePorts
from services.cli.federation import Clients, Region, partner_known
from services.common.settings import CommonSettings
from services.operators.catalog_file import load_catalog_file
from tests.conftest import ROOT, RUN_DIR

LOCAL = ROOT / "deploy" / "local"
TONGBAN = ROOT / ".venv" / "bin" / "tongban"
ALIASES = ("region1", "region2")
# Region 1's connection variables: a region-2 command must not inherit them.
REGION_VARIABLES = (
    "TONGBAN_KAFKA_BOOTSTRAP",
    "TONGBAN_KAFKA_BROKERS",
    "TONGBAN_KAFKA_REPLICATION",
    "TONGBAN_KAFKA_MIN_INSYNC",
    "TONGBAN_DATABASE_URL",
    "TONGBAN_MIGRATION_DATABASE_URL",
    "TONGBAN_INTAKE_DATABASE_URL",
    "TONGBAN_ROUTING_DATABASE_URL",
    "TONGBAN_APPROVAL_DATABASE_URL",
    "TONGBAN_DELIVERY_DATABASE_URL",
    "TONGBAN_ROUTING_URL",
    "TONGBAN_STACK_LOCK_HELD",
    "TONGBAN_RUN_DIR",
    "TONGBAN_KAFKA_PORT_BASE",
    "TONGBAN_PG_PORT",
    "SERVICES_PORT_OFFSET",
    "REPLICAS",
)


def single_broker_settings(bootstrap: str) -> CommonSettings:
    """Client settings for a one-broker cluster of a test's own (replication 1)."""
    return CommonSettings(
        kafka_bootstrap=bootstrap, kafka_partitions=3, kafka_replication=1, kafka_min_insync=1
    )


def region1_bootstrap() -> str:
    return os.environ.get("TONGBAN_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def _first_port(bootstrap: str) -> int:
    return int(bootstrap.split(",")[0].rsplit(":", 1)[1])


def _region1_pg_port() -> int:
    url = os.environ.get("TONGBAN_DATABASE_URL", "")
    port = urlsplit(url).port if url else None
    return port or int(os.environ.get("TONGBAN_PG_PORT") or 5432)


def _env_int(name: str, default: int) -> int:
    given = os.environ.get(name)
    return int(given) if given else default


@dataclass(frozen=True)
class SecondRegion:
    """Region 2's run folder and ports, and the link's (MirrorMaker's) run folder."""

    run_dir: Path
    link_dir: Path
    kafka_port_base: int
    pg_port: int
    services_offset: int

    @classmethod
    def beside_the_suite(cls, root: Path | None = None) -> SecondRegion:
        root = root or RUN_DIR / "test-regions"
        return cls(
            run_dir=root / "region2",
            link_dir=root / "link",
            kafka_port_base=_env_int(
                "TONGBAN_REGION2_TEST_KAFKA_PORT_BASE", _first_port(region1_bootstrap()) + 300
            ),
            pg_port=_env_int("TONGBAN_REGION2_TEST_PG_PORT", _region1_pg_port() + 300),
            services_offset=_env_int(
                "TONGBAN_REGION2_TEST_SERVICES_PORT_OFFSET", SERVICES_PORT_OFFSET + 500
            ),
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port_base}"

    @property
    def settings(self) -> CommonSettings:
        return single_broker_settings(self.bootstrap)

    def env(self) -> dict[str, str]:
        """The environment of a command run as region 2 (as federation.sh's in_region 2)."""
        clean = {k: v for k, v in os.environ.items() if k not in REGION_VARIABLES}
        return {
            **clean,
            "TONGBAN_RUN_DIR": str(self.run_dir),
            "TONGBAN_KAFKA_PORT_BASE": str(self.kafka_port_base),
            "TONGBAN_PG_PORT": str(self.pg_port),
            "SERVICES_PORT_OFFSET": str(self.services_offset),
            "KAFKA_BROKERS": "1",
            "KAFKA_HEAP": os.environ.get("TONGBAN_REGION2_TEST_KAFKA_HEAP", "256m"),
        }

    def link_env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if k not in REGION_VARIABLES}
        return {
            **clean,
            "TONGBAN_RUN_DIR": str(self.link_dir),
            "MIRROR_ALIAS_1": ALIASES[0],
            "MIRROR_BOOTSTRAP_1": region1_bootstrap(),
            "MIRROR_ALIAS_2": ALIASES[1],
            "MIRROR_BOOTSTRAP_2": self.bootstrap,
            # Region 1 may be the three-broker cluster (min.insync.replicas=2).
            "MIRROR_REPLICATION_1": "3" if "," in region1_bootstrap() else "1",
        }

    # -- region 2 ---------------------------------------------------------------------------

    def stack_up(self) -> None:
        """Region 2's Kafka and PostgreSQL, its schemas and topics (each a no-op when done):
        what MirrorMaker needs before it starts, the services not yet."""
        _run(
            [
                "bash",
                "-c",
                'set -euo pipefail; bash "$0/stack.sh" up; source "$TONGBAN_RUN_DIR/env"; '
                '"$1" migrate >/dev/null; "$1" topics >/dev/null',
                str(LOCAL),
                str(TONGBAN),
            ],
            self.env(),
            "region 2 stack up",
            timeout=400,
        )

    def services(self, command: str, extra: dict[str, str] | None = None) -> None:
        """`services.sh up|down` for region 2; `extra`: more environment for the services."""
        _run(
            ["bash", str(LOCAL / "services.sh"), command],
            {**self.env(), **(extra or {})},
            f"region 2 services {command}",
        )

    def down(self) -> None:
        """Everything of region 2 stopped, its PostgreSQL data removed; keeps going on errors."""
        for args in (["services.sh", "down"], ["stack.sh", "down"], ["postgres.sh", "clean"]):
            subprocess.run(
                ["bash", str(LOCAL / args[0]), args[1]],
                env=self.env(),
                cwd=ROOT,
                timeout=180,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )

    def service_pid(self, service: str, replica: int = 1) -> int | None:
        pid_file = self.run_dir / "services" / f"{service}-{replica}.pid"
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    # -- the link (MirrorMaker 2) ------------------------------------------------------------

    def link(self, command: str) -> None:
        """`mirror.sh up|down` between region 1 and region 2."""
        _run(["bash", str(LOCAL / "mirror.sh"), command], self.link_env(), f"mirror.sh {command}")

    def mirror_pid(self) -> int | None:
        try:
            return int((self.link_dir / "mirror" / "mirror.pid").read_text().strip())
        except (OSError, ValueError):
            return None


PARTNER_CATALOG = ROOT / "deploy" / "demo" / "partner-catalog.yaml"
DEMO_CATALOG = ROOT / "deploy" / "demo" / "catalog.yaml"


@asynccontextmanager
async def linked_regions(
    second: SecondRegion, services_env: dict[str, str] | None = None
) -> AsyncIterator[tuple[Region, Region, Clients]]:
    """Region 2 (澜州, the partner catalog loaded through its routing) and the link up beside
    region 1 (云州, whose catalog the caller has loaded), until each intake lists the other's
    cross_region items; (region 1, region 2, a client per region). Everything of region 2 and
    the link is stopped on the way out."""
    yz = Region("region 1", load_catalog_file(DEMO_CATALOG), ServicePorts())
    lz = Region(
        "region 2", load_catalog_file(PARTNER_CATALOG), ServicePorts(second.services_offset)
    )
    clients = Clients({r.city: r.client() for r in (yz, lz)})
    try:
        await asyncio.to_thread(second.stack_up)
        # MirrorMaker starts beside region 2's services: it needs only the two clusters.
        await asyncio.gather(
            asyncio.to_thread(second.services, "up", services_env),
            asyncio.to_thread(second.link, "up"),
        )
        loaded = await clients.of(lz).post(f"{lz.url('routing')}/v1/catalog", json=lz.catalog)
        if loaded.status_code != 201:
            raise RuntimeError(f"region 2 refused its catalog: {loaded.text}")
        # A pattern subscription sees a new mirrored topic within 30 s (metadata refresh).
        await partner_known(clients, yz, lz, timeout=90)
        await partner_known(clients, lz, yz, timeout=90)
        yield yz, lz, clients
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.by_city.values()))
        await asyncio.to_thread(second.link, "down")
        await asyncio.to_thread(second.down)


def _run(
    args: list[str],
    env: dict[str, str],
    what: str,
    *,
    timeout: float = 240,
) -> None:
    done = subprocess.run(
        args,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
