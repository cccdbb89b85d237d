"""Hostile input never crashes a service: schemathesis against every service's OpenAPI
(examples, coverage, fuzzing and the stateful phase) finds no 5xx and no answer outside its
documented schema; oversized bodies get 413; a client over its rate gets 429."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.auth import AuthSettings, Role, mint_token
from tests.conftest import ROOT
from tests.e2e.conftest import APPROVAL, DELIVERY, INTAKE, ROUTING

pytestmark = pytest.mark.e2e

CHECKS = (
    "not_a_server_error,response_schema_conformance,status_code_conformance,"
    "content_type_conformance"
)
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def token(role: Role, scope: str | None, subject: str) -> str:
    return mint_token(AuthSettings(), subject=subject, role=role, scope=scope)


@pytest.mark.parametrize(
    ("base", "role", "scope"),
    [
        (INTAKE, Role.clerk, "online"),
        (ROUTING, Role.admin, None),
        (APPROVAL, Role.reviewer, "__department__"),
        (DELIVERY, Role.operator, None),
    ],
    ids=["intake", "routing", "approval", "delivery"],
)
async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    base: str,
    role: Role,
    scope: str | None,
) -> None:
    assert SCHEMATHESIS.exists() or shutil.which("schemathesis"), "schemathesis not installed"
    if scope == "__department__":
        scope = catalog["departments"][0]["code"]
    bearer = token(role, scope, f"fuzz-{role.value}")
    run = await asyncio.to_thread(
        subprocess.run,
        [
            str(SCHEMATHESIS),
            "run",
            f"{base}/openapi.json",
            "-H",
            f"Authorization: Bearer {bearer}",
            "--checks",
            CHECKS,
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-time",
            "20",
            "--workers",
            "1",
            "--seed",
            "20261129",
            "--suppress-health-check",
            "all",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    summary = run.stdout[-3000:]
    assert run.returncode == 0, summary
    assert " passed" in summary and "failures" not in summary.split("SUMMARY")[-1], summary
    # The fuzzed routing catalog endpoint must not have replaced the catalog in force.
    answer = await http.post(f"{ROUTING}/v1/catalog", json=catalog)
    assert answer.status_code == 201


async def test_a_body_over_one_mebibyte_gets_413(http: httpx.AsyncClient) -> None:
    padding = "x" * (1024 * 1024)
    answer = await http.post(
        f"{INTAKE}/v1/cases",
        content=json.dumps({"pad": padding}),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 413
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["code"] == "payload_too_large"


async def test_intake_rate_limits_each_client_with_retry_after(
    catalog: dict[str, Any],
) -> None:
    """One terminal in a loop is held back with 429 and Retry-After; another is not."""
    greedy = {"Authorization": f"Bearer {token(Role.clerk, 'online', 'greedy-terminal')}"}
    calm = {"Authorization": f"Bearer {token(Role.clerk, 'online', 'calm-terminal')}"}
    async with httpx.AsyncClient(timeout=30) as client:
        answers = await asyncio.gather(
            *(
                client.post(f"{INTAKE}/v1/cases", json={"item_code": "X"}, headers=greedy)
                for _ in range(300)
            )
        )
        limited = [a for a in answers if a.status_code == 429]
        assert limited, "300 requests at once were never rate limited"
        assert all(int(a.headers["retry-after"]) >= 1 for a in limited)
        assert limited[0].json()["code"] == "rate_limited"
        assert {a.status_code for a in answers} <= {422, 429}
        other = await client.post(f"{INTAKE}/v1/cases", json={"item_code": "X"}, headers=calm)
        assert other.status_code == 422  # its own bucket is full
