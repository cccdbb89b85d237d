"""The operator console end to end, in headless Chromium.

The console runs as its own process on port 8000 (like the services). The browser half,
tests/browser/console.spec.mjs, drives Debian's Chromium through playwright-core
(deploy/local/browser.sh installs both): it opens the console, filters the live stream to one
office and says READY; this side then submits a case at that office by REST and hands the
case id over on stdin; the browser waits for the case in the live stream up to
`gov.case.closed.v1`, opens its timeline page and checks every step to closed; then the pages
of two cases of fewer materials (减材料) made before it started: one whose 营业执照 came from the
licence library, one held at approval for a deferred material.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli.applicants import application_for, bundle_application_for
from services.cli.demo import reform_items
from services.cli.devclient import CONSOLE_PORT, ActingClient
from services.console.app import ConsoleSettings, create_app
from tests.conftest import ROOT, RUN_DIR, eventually
from tests.e2e.conftest import (
    APPROVAL,
    APPROVED_CASE_EVENTS,
    INTAKE,
    ROUTING,
    decide_when_listed,
    items_where,
    wait_status,
)
from tests.e2e.test_deferral import submit_deferred
from tests.integration.test_web import http_samples

pytestmark = pytest.mark.e2e

CONSOLE = f"http://127.0.0.1:{CONSOLE_PORT}"
BROWSER_TESTS = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = RUN_DIR / "console.png"
STEPS = APPROVED_CASE_EVENTS


def _browser_ready() -> None:
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(CHROMIUM)
    if not (BROWSER_TESTS / "node_modules" / "playwright-core").is_dir():
        missing.append("tests/browser/node_modules/playwright-core")
    if shutil.which("node") is None:
        missing.append("node")
    if missing:
        pytest.fail(f"missing {missing}: run `bash deploy/local/browser.sh` (make install does)")


@pytest.fixture(scope="module")
def console(running_services: None) -> Iterator[str]:
    """`python -m services.console` on port 8000, as `tongban console` runs it."""
    log_path = RUN_DIR / "logs" / "console.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        httpx.get(f"{CONSOLE}/healthz", timeout=1)
    except httpx.HTTPError:
        pass
    else:
        pytest.fail(f"port {CONSOLE_PORT} is taken: stop the console running there first")
    env = {
        **os.environ,
        "TONGBAN_HTTP_PORT": str(CONSOLE_PORT),
        "TONGBAN_SERVICE": "console",
        "TONGBAN_INTAKE_URL": INTAKE,
        "TONGBAN_ROUTING_URL": ROUTING,
        "TONGBAN_APPROVAL_URL": APPROVAL,
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.console"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"the console exited with {process.returncode}; log: {log_path}")
            try:
                if httpx.get(f"{CONSOLE}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the console is not ready after 60 s; log: {log_path}")
            time.sleep(0.2)
        yield CONSOLE
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class ReformCases:
    licensed: str  # a case whose material came from the applicant's e-licence
    material: str
    license_id: str
    held: str  # a case approved and held for a deferred material
    deferred: str


async def reform_cases(
    http: httpx.AsyncClient, catalog: dict[str, Any], rng: random.Random
) -> ReformCases:
    """A licence issued by one case and reused by the next of the same applicant, and a case
    held at approval for its deferred material (the demo catalog has both)."""
    items = reform_items(catalog, date.today())
    assert items, "the demo catalog issues a licence a later item takes, and defers a material"
    issuing = application_for(
        catalog, items["issues"], rng, channel="online", delivery="electronic"
    )
    answer = await http.post(f"{INTAKE}/v1/cases", json=issuing)
    assert answer.status_code == 201, answer.text
    await wait_status(http, answer.json()["case_id"], "closed")
    holder = issuing["applicant"]["id_number"]
    kind = items["issues"]["result"]["license_type"]

    async def held_licence() -> str | None:
        rows = (await http.get(f"{INTAKE}/v1/licenses", params={"holder": holder})).json()
        return next((r["license_id"] for r in rows if r["license_type"] == kind), None)

    license_id = await eventually(held_licence, what="the issued licence in intake's library")
    material = next(m["code"] for m in items["takes"]["materials"] if m.get("license_type") == kind)
    taking = application_for(catalog, items["takes"], rng, delivery="electronic")
    taking["applicant"] |= {"name": issuing["applicant"]["name"], "id_number": holder}
    taking["materials"] = [m for m in taking["materials"] if m["code"] != material]
    answer = await http.post(f"{INTAKE}/v1/cases", json=taking)
    assert answer.status_code == 201, answer.text
    assert answer.json()["reused_licenses"] == [{"material": material, "license_id": license_id}]
    held, deferred, _ = await submit_deferred(http, catalog, rng)
    return ReformCases(answer.json()["case_id"], material, license_id, held, deferred)


async def test_console_shows_reuse_and_deferral_on_the_case_page_and_sla_board(
    console: str, catalog: dict[str, Any], http: ActingClient
) -> None:
    cases = await reform_cases(http, catalog, random.Random("console-reforms"))
    async with httpx.AsyncClient(base_url=console, timeout=30) as client:

        async def licensed_at_approval() -> dict[str, Any] | None:
            view = (await client.get(f"/api/cases/{cases.licensed}")).json()
            return view if view["approval"]["available"] else None

        view = await eventually(licensed_at_approval, what="the licensed case at approval")
        assert view["approval"]["licensed_materials"] == [
            {"material": cases.material, "license_id": cases.license_id}
        ]
        held = (await client.get(f"/api/cases/{cases.held}")).json()
        assert held["status"] == "approval_held" and held["approval"]["available"]
        (deferred,) = held["deferred_materials"]
        assert deferred["code"] == cases.deferred and not deferred["received"]
        assert held["approval"]["deferred_outstanding"] == [cases.deferred]
        assert held["approval"]["deferred_due"] == deferred["due"]
        assert "id_number" not in json.dumps(held["approval"])  # approval's view has no person

        # The board's clocks at risk: the held case by its due day, once near enough.
        board = (await client.get("/api/sla", params={"within_days": 365})).json()
        assert board["available"] and board["within_days"] == 365
        (row,) = [c for c in board["cases"] if c["case_id"] == cases.held]
        assert row["deferred_due"] == deferred["due"]
        assert row["deferred_outstanding"] == [cases.deferred]
        assert (await client.get("/api/sla", params={"within_days": -1})).status_code == 422


async def test_console_shows_a_commitment_under_verification(
    console: str, catalog: dict[str, Any], http: ActingClient
) -> None:
    """A material committed instead of proven (告知承诺): once the case is approved, its
    verification (committed materials, due day) is on the case page and among the clocks."""
    rng = random.Random("console-commitment")
    items = reform_items(catalog, date.today())
    item = items["commits"] if items else None
    assert item, "the demo catalog has a material that allows a commitment"
    allowed = {m["code"] for m in item["materials"] if m.get("commitment")}
    body = application_for(catalog, item, rng, delivery="electronic")
    body["materials"] = [
        {"code": m["code"], "commitment": True} if m["code"] in allowed else m
        for m in body["materials"]
    ]
    answer = await http.post(f"{INTAKE}/v1/cases", json=body)
    assert answer.status_code == 201, answer.text
    case_id = answer.json()["case_id"]
    routed = await wait_status(http, case_id, "accepted")
    decided = await decide_when_listed(
        http, case_id, routed["route"]["handled_by"], {"decision": "approve", "reason": "齐全"}
    )
    assert decided.status_code == 200, decided.text
    async with httpx.AsyncClient(base_url=console, timeout=30) as client:

        async def verification() -> dict[str, Any] | None:
            view = (await client.get(f"/api/cases/{case_id}")).json()
            return (view.get("approval") or {}).get("verification")

        opened = await eventually(verification, what="the verification on the case page")
        assert opened["committed_materials"] == sorted(allowed) and opened["status"] == "open"
        board = (await client.get("/api/sla", params={"within_days": 365})).json()
        (row,) = [c for c in board["cases"] if c["case_id"] == case_id]
        assert row["verification_due"] == opened["due"]
        assert row["committed_materials"] == sorted(allowed)


async def test_console_api_answers(console: str, catalog: dict[str, Any]) -> None:
    # intake's group commits offsets (and so shows in the lag view) once it has
    # applied an event: on a fresh stack, this test may be the first to run.
    rng = random.Random("console-api")
    async with ActingClient(timeout=30) as http:
        item = rng.choice(items_where(catalog, lambda i: bool(i.get("instant"))))
        submitted = await http.post(
            f"{INTAKE}/v1/cases",
            json=application_for(catalog, item, rng, channel="counter", delivery="electronic"),
        )
        assert submitted.status_code == 201, submitted.text
    async with httpx.AsyncClient(base_url=console, timeout=30) as client:
        page = await client.get("/")
        assert page.status_code == 200 and 'src="/console.js"' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for path in ("/api/triage", "/api/dlq", "/api/lag", "/api/catalog", "/api/sla"):
            answer = await client.get(path)
            assert answer.status_code == 200, (path, answer.text)
            assert "available" in answer.json(), path
        for path in ("/api/triage", "/api/dlq", "/api/lag"):
            assert (await client.get(path)).json()["available"] is True, path

        async def intake_group_listed() -> bool:
            # A group shows once it has committed offsets: right after start-up it may not yet.
            lag = (await client.get("/api/lag")).json()
            return {"intake-events"} <= {r["group"] for r in lag["rows"]}

        await eventually(intake_group_listed, timeout=30, what="intake's group in the lag view")
        missing = await client.get("/api/cases/NO-SUCH-CASE")
        assert missing.status_code == 404 and missing.json()["code"]


async def test_intake_refusing_the_consoles_token_is_a_502_not_a_forwarded_401(
    running_services: None,
) -> None:
    """The console has no login of its own and declares no 401: the real intake refusing the
    console's token is the console's problem with intake (502), never passed on as a 401."""
    app = create_app(ConsoleSettings(intake_url=INTAKE, console_token="not-a-jwt"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            answer = await client.get("/api/cases/NO-SUCH-CASE")
    assert answer.status_code == 502, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "intake_refused"


async def test_console_exports_http_metrics_by_route_template(console: str) -> None:
    count = "tongban_http_requests_total"
    async with httpx.AsyncClient(base_url=console, timeout=30) as client:

        async def scrape() -> dict[Any, float]:
            return http_samples((await client.get("/metrics")).text, "console")

        before = await scrape()
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/console.js")).status_code == 200
        assert (await client.get("/api/cases/NO-SUCH-CASE-0042")).status_code == 404
        after = await scrape()
    # The static files count under their mount ("/{path}"); a case id never becomes a label.
    for key, grew in (
        ((count, "GET", "/{path}", "200"), 2),
        ((count, "GET", "/api/cases/{case_id}", "404"), 1),
    ):
        assert after.get(key, 0) - before.get(key, 0) == grew, key
    assert not any("NO-SUCH-CASE" in key[2] for key in after)


async def test_console_shows_a_case_live_and_its_timeline_to_closed(
    console: str, catalog: dict[str, Any], http: ActingClient
) -> None:
    _browser_ready()
    rng = random.Random("console")
    item = rng.choice(items_where(catalog, lambda i: bool(i.get("instant"))))
    body = application_for(catalog, item, rng, channel="counter", delivery="electronic")
    office = body["office_code"]
    assert office, item
    reforms = await reform_cases(http, catalog, rng)
    bundle = rng.choice(catalog["bundles"])
    submitted = await http.post(
        f"{INTAKE}/v1/bundles",
        json=bundle_application_for(catalog, bundle, rng, delivery="electronic"),
    )
    assert submitted.status_code == 201, submitted.text
    bundle_id = submitted.json()["bundle_id"]
    members = {m["case_id"] for m in submitted.json()["members"]}

    node = await asyncio.create_subprocess_exec(
        "node",
        "console.spec.mjs",
        cwd=BROWSER_TESTS,
        env={
            **os.environ,
            "CONSOLE_URL": console,
            "STREAM_OFFICE": office,
            "CHROMIUM": CHROMIUM,
            "SCREENSHOT": str(SCREENSHOT),
            "REFORM_LICENSED": reforms.licensed,
            "REFORM_HELD": reforms.held,
            "BUNDLE_ID": bundle_id,
        },
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert node.stdin is not None and node.stdout is not None and node.stderr is not None
    lines: list[str] = []

    async def read_until(prefix: str, timeout: float) -> str:
        assert node.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await node.stdout.readline()
                if not raw:
                    assert node.stderr is not None
                    errors = (await node.stderr.read()).decode()
                    raise AssertionError(f"node ended before {prefix}: {lines}\n{errors}")
                line = raw.decode().rstrip("\n")
                lines.append(line)
                if line.startswith(prefix):
                    return line

    try:
        await read_until("READY", 90)
        answer = await http.post(f"{INTAKE}/v1/cases", json=body)
        assert answer.status_code == 201, answer.text
        case_id = answer.json()["case_id"]
        node.stdin.write(f"{case_id}\n".encode())
        await node.stdin.drain()
        await read_until("DONE", 240)
        code = await asyncio.wait_for(node.wait(), 30)
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
    errors = (await node.stderr.read()).decode()
    print("\n".join(lines))  # shown with `pytest -rP`
    assert code == 0, f"exit {code}\nstdout: {lines}\nstderr: {errors}"

    printed = {line.split(" ", 1)[0]: line for line in lines}
    assert printed["STREAM"].startswith(f"STREAM {case_id} ")
    stream_types = printed["STREAM-CLOSED"].split()[2].split(",")
    assert stream_types[-1] == "gov.case.closed.v1" and "gov.case.submitted.v1" in stream_types
    assert printed["FILTER-OK"].startswith(f"FILTER-OK office={office} ")
    timeline = printed["TIMELINE"].split()[2].split(",")
    assert [t for t in timeline if t in STEPS] == list(STEPS), timeline
    assert not [line for line in lines if line.startswith("PAGE-ERROR")], lines
    assert "lag=" in printed["TABLES"] and "dlq_count=" in printed["TABLES"]
    assert "clocks=" in printed["TABLES"]
    assert "links=" in printed["TABLES"]  # a row per partner link, or why there is none
    # The case pages of fewer materials: the licence that stood in, the deferral, the hold.
    shown = printed["REFORMS"]
    assert f"{reforms.material} ← {reforms.license_id}" in shown
    assert f"{reforms.deferred} · due 20" in shown and "not received" in shown
    assert f"published when {reforms.deferred} arrive" in shown
    # The bundle: one row opening into its members, each member's page linking back to it.
    shown_bundle = printed["BUNDLE"].split()
    assert shown_bundle[1] == bundle_id and shown_bundle[3] == f"back={bundle_id}"
    assert {m.split(":")[0] for m in shown_bundle[2].removeprefix("members=").split(",")} == members
    assert "RESUMED" in printed
    assert Path(printed["SCREENSHOT"].split(" ", 1)[1]).stat().st_size > 10_000

    # what the browser showed is intake's
    view = await wait_status(http, case_id, "closed", with_events=STEPS)
    assert [e["type"] for e in view["timeline"] if e["type"] in STEPS] == list(STEPS)


async def test_stream_rejects_a_bad_start_time(console: str) -> None:
    async with httpx.AsyncClient(base_url=console, timeout=10) as client:
        answer = await client.get("/api/stream", params={"from": "yesterday-ish"})
        assert answer.status_code == 422
        assert answer.headers["content-type"].startswith("application/problem+json")


async def test_stream_replays_from_a_time_with_filters(
    console: str, catalog: dict[str, Any], http: httpx.AsyncClient
) -> None:
    """`?from=` replays; filters by case and short type apply server-side."""
    rng = random.Random("console-replay")
    item = rng.choice(items_where(catalog, lambda i: bool(i.get("instant"))))
    answer = await http.post(
        f"{INTAKE}/v1/cases",
        json=application_for(catalog, item, rng, channel="counter", delivery="electronic"),
    )
    assert answer.status_code == 201, answer.text
    case_id = answer.json()["case_id"]
    await wait_status(http, case_id, "closed")
    seen: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=console, timeout=30) as client,
        client.stream(
            "GET",
            "/api/stream",
            params={"from": "2000-01-01T00:00:00+08:00", "case": case_id, "type": "closed,routed"},
        ) as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        async with asyncio.timeout(30):
            async for line in stream.aiter_lines():
                if line.startswith("data: ") and '"case_id"' in line:
                    seen.append(json.loads(line[6:]))
                    if len(seen) == 2:
                        break
    # Replayed topics interleave by time only roughly: compare as a set.
    assert sorted(s["type"] for s in seen) == ["gov.case.closed.v1", "gov.case.routed.v1"]
    assert all(s["case_id"] == case_id for s in seen)
    routed = next(s for s in seen if s["type"] == "gov.case.routed.v1")["data"]
    applicant = routed["application"]["applicant"]
    assert "*" in applicant["name"] and "*" in applicant["id_number"]  # masked for operators
