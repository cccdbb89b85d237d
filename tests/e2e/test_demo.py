"""`make demo`'s job on the running services: every submitted case ends, and the table says so."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


async def test_the_demo_runs_cases_over_every_path_to_their_end(catalog: dict[str, Any]) -> None:
    tongban = Path(sys.executable).with_name("tongban")
    run = await asyncio.to_thread(
        subprocess.run,
        [str(tongban), "demo", "--cases", "16", "--seed", "3", "--timeout", "120"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "all 16 cases ended" in out
    for path in ("online", "delegated", "entrusted", "municipal"):
        assert path in out, f"no {path} case in the demo"
