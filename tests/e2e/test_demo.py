"""`make demo`'s job on the running services: every submitted case ends, and the table says so;
then the fewer-materials act: a licence issued and reused, a deferral completed, one held (and
lapsed once the services' clock runs past its due day), a commitment confirmed, one breached."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import shifted_services

pytestmark = pytest.mark.e2e


async def test_the_demo_runs_cases_over_every_path_to_their_end(
    catalog: dict[str, Any], tmp_path: Path
) -> None:
    tongban = Path(sys.executable).with_name("tongban")
    run = await asyncio.to_thread(
        subprocess.run,
        [
            *(str(tongban), "demo", "--cases", "16", "--seed", "3", "--timeout", "120"),
            *("--lapse-file", str(tmp_path / "outstanding-deferral")),
        ],
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
    # The bundles (一件事): each applied for once, its members at several levels, one pickup.
    assert re.search(r"all [3-9] bundles delivered once, closed and rated", out), out[-3000:]
    bundles = out[out.index("bundles (一件事一次办)") : out.index("fewer materials")]
    assert bundles.count("one pickup at") >= 3 and "waiting →" in bundles

    # The fewer-materials act: one row per case, its materials and the status it ended in.
    act = out[out.index("fewer materials") :]
    rows = {line.split("│")[1].strip(): line for line in act.splitlines() if line.count("│") > 5}
    issued = re.search(r"issued (EL-\S+)", rows["licence issued"])
    assert issued and rows["licence issued"].rstrip(" │").endswith("closed")
    # The later case of the same applicant did not bring the 营业执照: the library's licence
    # was attached (reused_licenses of its 201 answer) and it went to the end.
    assert f"BIZ-LICENSE ← {issued[1]}" in rows["licence reused (免提交)"]
    assert rows["licence reused (免提交)"].rstrip(" │").endswith("closed")
    # Held at approval until the deferred material came, then approved and delivered.
    completed = rows["deferral completed (容缺)"]
    assert "FOOD-SAFETY-RULES deferred, due 20" in completed and ", received" in completed
    assert "brought FOOD-SAFETY-RULES while held" in act
    assert completed.rstrip(" │").endswith("closed")
    outstanding = rows["deferral outstanding"]
    assert "not received" in outstanding and outstanding.rstrip(" │").endswith("approval_held")
    # Committed instead of proven (告知承诺): one found true at verification, one false, whose
    # decision is revoked.
    confirmed, breached = rows["commitment confirmed (告知承诺)"], rows["commitment breached"]
    assert "PREMISES committed" in confirmed and confirmed.rstrip(" │").endswith("closed")
    assert "PREMISES committed" in breached and breached.rstrip(" │").endswith("revoked")
    assert "verification: confirmed" in act and "verification: breached" in act

    # `make demo` then runs the services 30 days ahead: the outstanding deferral lapses.
    lapse_file = tmp_path / "outstanding-deferral"
    assert lapse_file.read_text().strip() in outstanding
    async with shifted_services(30 * 86400):
        lapsed = await asyncio.to_thread(
            subprocess.run,
            [str(tongban), "demo-lapse", lapse_file.read_text().strip(), "--timeout", "60"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )
    assert lapsed.returncode == 0, lapsed.stdout[-3000:] + lapsed.stderr[-3000:]
    assert "terminated" in lapsed.stdout and "gov.case.terminated.v1" in lapsed.stdout
