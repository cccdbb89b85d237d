"""The load generator's own Go tests (services/bench/loadgen/main_test.go), in `make test`:
open loop under a slow server, one Idempotency-Key per request, latency from the due time."""

from __future__ import annotations

import subprocess

import pytest

from services.bench.loadgen import SOURCE_DIR, go_command

pytestmark = pytest.mark.unit


def test_the_generators_go_tests_pass() -> None:
    go = go_command()
    assert go is not None, "Go is on every machine of this kind (/usr/local/go/bin/go)"
    run = subprocess.run(
        [str(go), "test", "-count=1", "./..."],
        cwd=SOURCE_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok"), run.stdout
