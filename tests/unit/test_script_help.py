"""Every command has --help: each script of deploy/local answers `--help` with its usage and
does nothing else (`bench.sh --help` once started a whole benchmark)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

LOCAL = Path(__file__).resolve().parents[2] / "deploy" / "local"
LIBRARIES = {"lib.sh", "bench-lib.sh"}  # sourced by the scripts, never run
SCRIPTS = sorted(p.name for p in LOCAL.glob("*.sh") if p.name not in LIBRARIES)


def test_the_scripts_are_found() -> None:
    assert {"stack.sh", "bench.sh", "run-tests.sh", "services.sh"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_a_script_answers_help_and_does_nothing_else(
    script: str, flag: str, tmp_path: Path
) -> None:
    # A run folder of its own: a script that went on past --help would leave files there.
    run_dir = tmp_path / "run"
    answer = subprocess.run(
        ["bash", str(LOCAL / script), flag],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "TONGBAN_RUN_DIR": str(run_dir)},
        check=False,
    )
    assert answer.returncode == 0, answer.stderr
    lines = answer.stdout.strip().splitlines()
    assert len(lines) >= 3, answer.stdout
    assert not lines[0].startswith(("#", "!")), lines[0]
    assert not run_dir.exists(), f"{script} {flag} did more than print its help"
