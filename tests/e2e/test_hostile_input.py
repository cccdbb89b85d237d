"""Hostile input never crashes a service: schemathesis against every service's OpenAPI
(examples, coverage, fuzzing and the stateful phase) finds no 5xx and no answer outside its
documented schema; oversized bodies get 413; a client over its rate gets 429. Text no service
can store (NUL, unpaired surrogates, control characters in codes) is 422 `invalid_value` in
every body, path and query and changes nothing; a request head over the limit gets 431 while
health checks go on; malformed HTTP gets a problem answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli.applicants import application_for
from services.cli.devclient import ActingClient
from services.common.auth import AuthSettings, Role, mint_token
from tests.conftest import ROOT, eventually
from tests.e2e.conftest import (
    APPROVAL,
    DELIVERY,
    INTAKE,
    ROUTING,
    decide_when_listed,
    items_where,
    wait_status,
)

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
    """One terminal in a loop is held back with 429 and Retry-After; another is not.

    The loop keeps 15 requests in flight, under intake's 16 slots, so the load shedder (503)
    never answers first, and 300 of them outrun the bucket (100, refilled at 50/s) as long as
    intake answers a refused submission in under ~150 ms, even on a loaded machine."""
    greedy = {"Authorization": f"Bearer {token(Role.clerk, 'online', 'greedy-terminal')}"}
    calm = {"Authorization": f"Bearer {token(Role.clerk, 'online', 'calm-terminal')}"}
    slots = asyncio.Semaphore(15)

    async def submit(client: httpx.AsyncClient) -> httpx.Response:
        async with slots:
            return await client.post(f"{INTAKE}/v1/cases", json={"item_code": "X"}, headers=greedy)

    async with httpx.AsyncClient(timeout=30) as client:
        answers = await asyncio.gather(*(submit(client) for _ in range(300)))
        limited = [a for a in answers if a.status_code == 429]
        assert limited, "300 requests at once were never rate limited"
        assert all(int(a.headers["retry-after"]) >= 1 for a in limited)
        assert limited[0].json()["code"] == "rate_limited"
        assert {a.status_code for a in answers} <= {422, 429}
        other = await client.post(f"{INTAKE}/v1/cases", json={"item_code": "X"}, headers=calm)
        assert other.status_code == 422  # its own bucket is full


# -- text no service can store (issue 13, point 2) ---------------------------------------------

UNSTORABLE = {"nul": "a\x00b", "surrogate": "a\ud800b"}


def raw_json(body: Any) -> dict[str, Any]:
    """`body` as JSON text with NUL and lone surrogates escaped (\\u0000, \\ud800), as a hostile
    client sends them: httpx's own encoder would refuse a lone surrogate."""
    return {"content": json.dumps(body), "headers": {"Content-Type": "application/json"}}


def assert_invalid_value(answer: httpx.Response, field: str) -> None:
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["code"] == "invalid_value", problem
    assert field in [e["field"] for e in problem["errors"]], problem


def with_value(body: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(body))
    holder: Any = copy
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = value
    return copy


SUBMISSION_FIELDS: list[tuple[str | int, ...]] = [
    ("item_code",),
    ("office_code",),
    ("applicant", "name"),
    ("applicant", "id_number"),
    ("applicant", "phone"),
    ("applicant", "division_code"),
    ("materials", 0, "code"),
    ("materials", 0, "e_license_id"),
    ("delivery", "address"),
]


async def intake_cases(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM intake.cases"))).scalar_one())


@pytest.mark.parametrize("kind", sorted(UNSTORABLE))
async def test_unstorable_text_in_any_submission_field_is_422_invalid_value_and_writes_nothing(
    catalog: dict[str, Any],
    http: ActingClient,
    rng: random.Random,
    engine: AsyncEngine,
    kind: str,
) -> None:
    item = rng.choice(items_where(catalog, lambda i: i["mode"] == "municipal" and i["materials"]))
    application = application_for(catalog, item, rng, channel="counter", delivery="postal")
    application["materials"][0]["e_license_id"] = "EL-TEST-1"
    before = await intake_cases(engine)
    for path in SUBMISSION_FIELDS:
        body = with_value(application, path, UNSTORABLE[kind])
        field = ".".join(str(p) for p in path)
        answer = await http.post(
            f"{INTAKE}/v1/cases",
            content=json.dumps(body),
            headers={"Content-Type": "application/json", "Idempotency-Key": f"hostile-{kind}"},
        )
        assert_invalid_value(answer, field)
        preview = await http.post(f"{ROUTING}/v1/routes/preview", **raw_json(body))
        assert_invalid_value(preview, field)
    assert await intake_cases(engine) == before


async def accepted_case(
    catalog: dict[str, Any], http: ActingClient, rng: random.Random
) -> tuple[str, str, dict[str, Any]]:
    """A counter case waiting for its municipal department's decision: (id, department, view)."""
    item = rng.choice(
        items_where(catalog, lambda i: not i.get("instant") and i["mode"] == "municipal")
    )
    application = application_for(catalog, item, rng, channel="counter", delivery="counter_pickup")
    created = await http.post(f"{INTAKE}/v1/cases", json=application)
    assert created.status_code == 201, created.text
    case_id = created.json()["case_id"]
    view = await wait_status(http, case_id, "accepted")
    return case_id, view["route"]["handled_by"], view


async def test_a_withdrawal_reason_with_a_nul_is_refused_and_the_timeline_stays_whole(
    catalog: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    """The issue's case: a NUL in the reason answered 200, the event was then dead-lettered by
    intake's own timeline consumer, and the timeline never showed the withdrawal."""
    case_id, _department, view = await accepted_case(catalog, http, rng)
    for value in UNSTORABLE.values():
        answer = await http.post(
            f"{INTAKE}/v1/cases/{case_id}/withdraw", **raw_json({"reason": value})
        )
        assert_invalid_value(answer, "reason")
    unchanged = await http.get(f"{INTAKE}/v1/cases/{case_id}")
    assert unchanged.json()["status"] == "accepted"
    assert "gov.case.withdrawn.v1" not in [e["type"] for e in unchanged.json()["timeline"]]
    withdrawn = await http.post(
        f"{INTAKE}/v1/cases/{case_id}/withdraw", json={"reason": "申请人撤回\n另行申请"}
    )
    assert withdrawn.status_code == 200, withdrawn.text
    await wait_status(http, case_id, "withdrawn", with_events=["gov.case.withdrawn.v1"])
    assert view["timeline"]  # the case had its story before; it keeps it


async def test_unstorable_text_is_refused_at_every_step_of_a_case(
    catalog: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    """Materials, decisions, pickup, rating and the follow-up answer: each refused body changes
    nothing, and the same step with clean text then goes through."""
    case_id, department, _view = await accepted_case(catalog, http, rng)
    materials = await http.post(
        f"{INTAKE}/v1/cases/{case_id}/materials",
        **raw_json({"materials": [{"code": UNSTORABLE["nul"]}]}),
    )
    assert_invalid_value(materials, "materials.0.code")

    approve = {"department": department, "decision": "approve"}
    for field, value in (
        ("reason", UNSTORABLE["nul"]),
        ("reason", UNSTORABLE["surrogate"]),
        ("legal_basis", UNSTORABLE["nul"]),
        ("department", "A\x00B"),
        ("missing_materials", [UNSTORABLE["surrogate"]]),
    ):
        answer = await http.post(
            f"{APPROVAL}/v1/cases/{case_id}/decisions",
            content=json.dumps({**approve, field: value}),
            headers={
                "Content-Type": "application/json",
                **http.headers_for(Role.reviewer, department),
            },
        )
        expected = f"{field}.0" if isinstance(value, list) else field
        assert_invalid_value(answer, expected)
    at_approval = (await http.get(f"{APPROVAL}/v1/cases/{case_id}")).json()
    assert at_approval["status"] == "accepted" and at_approval["decision"] is None

    decided = await decide_when_listed(http, case_id, department, {"decision": "approve"})
    assert decided.status_code == 200, decided.text
    await wait_status(http, case_id, "result_issued")

    pickup = await http.post(
        f"{DELIVERY}/v1/cases/{case_id}/pickup", **raw_json({"office_code": "X\x00"})
    )
    assert_invalid_value(pickup, "office_code")
    result = (await http.get(f"{DELIVERY}/v1/results/{case_id}")).json()
    assert result["status"] == "result_issued" and result["delivered_at"] is None
    picked = await http.post(f"{DELIVERY}/v1/cases/{case_id}/pickup")
    assert picked.status_code == 200, picked.text

    for value in UNSTORABLE.values():
        rating = await http.post(
            f"{DELIVERY}/v1/cases/{case_id}/rating",
            **raw_json({"rating": "dissatisfied", "comment": value}),
        )
        assert_invalid_value(rating, "comment")
    rated = await http.post(
        f"{DELIVERY}/v1/cases/{case_id}/rating",
        json={"rating": "dissatisfied", "comment": "等待时间长"},
    )
    assert rated.status_code == 201, rated.text

    async def followup_opened() -> bool:
        entries = await http.get(f"{APPROVAL}/v1/followups", params={"department": department})
        return any(e["case_id"] == case_id for e in entries.json())

    await eventually(followup_opened, what="the follow-up of the dissatisfied rating")
    for value in UNSTORABLE.values():
        answer = await http.post(
            f"{APPROVAL}/v1/cases/{case_id}/followup",
            **raw_json({"department": department, "answer": value}),
        )
        assert_invalid_value(answer, "answer")
    answered = await http.post(
        f"{APPROVAL}/v1/cases/{case_id}/followup",
        json={"department": department, "answer": "已回访，说明原因"},
    )
    assert answered.status_code == 200, answered.text


async def test_a_catalog_with_a_nul_is_refused_whole(
    catalog: dict[str, Any], http: ActingClient
) -> None:
    before = (await http.get(f"{ROUTING}/v1/catalog/version")).json()["version"]
    hostile = with_value(catalog, ("items", 0, "name"), UNSTORABLE["nul"])
    answer = await http.post(f"{ROUTING}/v1/catalog", **raw_json(hostile))
    assert answer.status_code == 422, answer.text
    assert "items[0].name" in [e["field"] for e in answer.json()["errors"]]
    assert (await http.get(f"{ROUTING}/v1/catalog/version")).json()["version"] == before


ODD_PARAMETERS = [
    ("GET", f"{INTAKE}/v1/cases/HC%00X"),
    ("POST", f"{INTAKE}/v1/cases/HC%00X/withdraw"),
    ("POST", f"{INTAKE}/v1/cases/HC%0AX/materials"),
    ("GET", f"{APPROVAL}/v1/cases/HC%00X"),
    ("POST", f"{APPROVAL}/v1/cases/HC%1BX/decisions"),
    ("GET", f"{APPROVAL}/v1/worklist?department=A%00B"),
    ("GET", f"{APPROVAL}/v1/followups?department=A%0AB"),
    ("GET", f"{APPROVAL}/v1/sla/board?department=%00"),
    ("GET", f"{DELIVERY}/v1/results/HC%00X"),
    ("GET", f"{DELIVERY}/v1/licenses/EL%00X/verify"),
    ("POST", f"{ROUTING}/v1/triage/HC%00X/retry"),
    ("GET", f"{INTAKE}/v1/audit?case_id=%00"),
]


@pytest.mark.parametrize(("method", "url"), ODD_PARAMETERS, ids=[u for _, u in ODD_PARAMETERS])
async def test_a_control_character_in_a_path_or_query_parameter_is_422_invalid_value(
    http: ActingClient, catalog: dict[str, Any], method: str, url: str
) -> None:
    answer = await http.request(method, url, headers=http.headers_for(Role.admin))
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "invalid_value"


@pytest.mark.parametrize(
    "url",
    [
        f"{INTAKE}/v1/cases/{'C' * 10_000}",
        f"{APPROVAL}/v1/cases/{'C' * 10_000}",
        f"{DELIVERY}/v1/results/{'C' * 10_000}",
        f"{DELIVERY}/v1/licenses/{'L' * 10_000}/verify",
    ],
    ids=["intake", "approval", "delivery", "licence"],
)
async def test_an_overlong_id_is_422_not_a_lookup(
    http: ActingClient, catalog: dict[str, Any], url: str
) -> None:
    answer = await http.get(url, headers=http.headers_for(Role.admin))
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "invalid_request"


# -- bounded HTTP (issue 13, point 3) ----------------------------------------------------------


@pytest.mark.parametrize("base", [INTAKE, ROUTING, APPROVAL, DELIVERY])
async def test_a_header_over_the_limit_gets_431_problem_json(
    http: ActingClient, catalog: dict[str, Any], base: str
) -> None:
    big = await http.get(f"{base}/v1/audit", headers={"X-Padding": "a" * (64 * 1024 + 1)})
    assert big.status_code == 431, big.text[:300]
    assert big.headers["content-type"] == "application/problem+json"
    assert big.json()["code"] == "request_header_too_large"
    assert (await http.get(f"{base}/healthz")).status_code == 200


async def test_health_checks_answer_while_a_64_mib_header_is_refused(
    catalog: dict[str, Any],
) -> None:
    """Today's failure: a 64 MiB header was read in full before the token check, and health
    checks waited for it. Now the 431 comes while the head is still incomplete (the client
    has sent 1 MiB of it and waits), and probes are answered while the rest pours in."""
    url = httpx.URL(INTAKE)
    total = 64 * 1024 * 1024
    chunk = b"a" * (64 * 1024)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(b"GET /v1/items HTTP/1.1\r\nHost: intake\r\nAuthorization: Bearer ")
    for _ in range(16):
        writer.write(chunk)
    await writer.drain()
    # The head is unfinished: a server that waits for all of it never answers here.
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]

    async def send_the_rest() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(16, total // len(chunk)):
                writer.write(chunk)
                await writer.drain()

    sender = asyncio.create_task(send_the_rest())
    async with httpx.AsyncClient(timeout=30) as probe:
        health = await probe.get(f"{INTAKE}/healthz")
    sender.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sender
    writer.close()
    assert health.status_code == 200


async def test_malformed_http_gets_a_400_problem(catalog: dict[str, Any]) -> None:
    url = httpx.URL(DELIVERY)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nBroken\x01Header: x\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"content-type: application/problem+json" in head
    assert json.loads(body)["code"] == "malformed_request"
