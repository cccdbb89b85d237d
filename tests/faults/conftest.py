"""The reduced fault suite inside `make test`: on the three-broker cluster (run-tests.sh's
second phase), every service as two processes, started once for the module."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.faults.harness import Verdict
from tests.faults.setup import load_demo_catalog
from tests.faults.suite import HEADERS, verdict_rows

REPLICAS = 2
VERDICTS: list[Verdict] = []
OVERLOAD: list[str] = []


def _services(command: str) -> None:
    subprocess.run(
        ["bash", str(ROOT / "deploy/local/services.sh"), command],
        check=True,
        cwd=ROOT,
        timeout=240,
        env={**os.environ, "REPLICAS": str(REPLICAS)},
    )


@pytest.fixture(scope="session")
def replicated_services() -> Iterator[int]:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    _services("up")
    try:
        yield REPLICAS
    finally:
        _services("down")


@pytest.fixture(scope="session")
async def fault_catalog(replicated_services: int) -> dict[str, Any]:
    return await load_demo_catalog(replicated_services)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The suite's table: one row per scenario, as `make faults` prints it."""
    if not VERDICTS and not OVERLOAD:
        return
    terminalreporter.section("tongban under faults (reduced)")
    widths = [max(len(h), 9) for h in HEADERS]
    widths[0] = max(len(v.scenario) for v in VERDICTS) if VERDICTS else 30
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(HEADERS, widths, strict=True))
    )
    terminalreporter.write_line(line)
    for row in verdict_rows(VERDICTS):
        terminalreporter.write_line(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    for text in OVERLOAD:
        terminalreporter.write_line(text)
