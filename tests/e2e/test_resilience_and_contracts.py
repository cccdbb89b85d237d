"""Cases routing cannot place, a routing process killed mid-flow, and every record on the
wire checked against the published contracts."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from contracts.events import CASE_TOPICS, CaseSubmitted
from contracts.registry import validate_event
from services.cli.applicants import application_for
from services.cli.devclient import ActingClient
from services.common.auth import Role
from services.common.envelope import Envelope
from services.common.settings import CommonSettings
from tests.conftest import RUN_DIR, eventually
from tests.e2e.conftest import APPROVAL, INTAKE, ROUTING, items_where, services, wait_status
from tests.kafka_helpers import CLOUDEVENTS_HEADERS, header, produce, read_topic

pytestmark = pytest.mark.e2e


def foreign_submission(application: dict[str, Any], case_id: str) -> Envelope:
    """A submission from another intake system (e.g. a provincial portal) straight to Kafka."""
    payload = CaseSubmitted.model_validate(
        {
            "case_id": case_id,
            "application": application,
            "submitted_at": datetime.now(UTC),
        }
    )
    return Envelope(
        type="gov.case.submitted.v1",
        source="/portal/province",
        subject=case_id,
        data=payload.model_dump(mode="json"),
    )


async def test_unknown_and_not_yet_effective_items_fail_routing_into_triage(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    item = rng.choice(items_where(catalog, lambda i: i["mode"] == "online"))
    unknown = application_for(catalog, item, rng, channel="online")
    unknown["item_code"] = "GONE-404"
    future_items = [
        i
        for i in catalog["items"]
        if str(i.get("effective_from") or "") > datetime.now(UTC).date().isoformat()
    ]
    assert future_items
    early = application_for(catalog, future_items[0], rng, channel="counter")
    outsider = application_for(catalog, item, rng, channel="online")
    outsider["applicant"]["division_code"] = "ZZ9901"
    cases = {
        f"X-{uuid.uuid4().hex[:12]}": (code, app)
        for code, app in [
            ("unknown_item", unknown),
            ("item_not_effective", early),
            ("out_of_jurisdiction", outsider),
        ]
    }
    await produce(
        settings,
        "case.intake.v1",
        [foreign_submission(app, cid).to_record() for cid, (_c, app) in cases.items()],
    )

    async def all_in_triage() -> list[dict[str, Any]] | None:
        entries = (await http.get(f"{ROUTING}/v1/triage", params={"limit": 1000})).json()
        mine = [e for e in entries if e["case_id"] in cases]
        return mine if len(mine) == len(cases) else None

    for entry in await eventually(all_in_triage, what="three failed routes in triage"):
        assert entry["failure"]["code"] == cases[entry["case_id"]][0]
        assert entry["failure"]["explanation"]
    for case_id, (code, _app) in cases.items():
        view = await wait_status(http, case_id, "route_failed")
        assert view["failure"]["code"] == code and view["route"] is None


async def test_an_out_of_city_applicant_is_taken_then_failed_by_routing(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
) -> None:
    item = rng.choice(items_where(catalog, lambda i: i["mode"] == "online"))
    body = application_for(catalog, item, rng, channel="online")
    body["applicant"]["division_code"] = "ZZ0101"
    answer = await http.post(f"{INTAKE}/v1/cases", json=body)
    assert answer.status_code == 201, answer.text
    view = await wait_status(http, answer.json()["case_id"], "route_failed")
    assert view["failure"]["code"] == "out_of_jurisdiction"


async def test_routing_killed_mid_flow_every_case_still_closes_once(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    instant = items_where(catalog, lambda i: bool(i.get("instant")))
    assert instant
    pid_file = RUN_DIR / "services" / "routing-1.pid"
    case_ids: list[str] = []
    for n in range(30):
        if n == 10:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        body = application_for(catalog, rng.choice(instant), rng, delivery="electronic")
        answer = await http.post(f"{INTAKE}/v1/cases", json=body)
        assert answer.status_code == 201, answer.text  # intake takes it, routing or not
        if n >= 10:
            # The preview is routing's rules run by intake itself: routing's absence costs it
            # nothing.
            assert answer.json()["route_preview"] is not None
        case_ids.append(answer.json()["case_id"])
    await asyncio.sleep(1.0)
    await asyncio.to_thread(services, "up")  # restarts the dead routing process only
    for case_id in case_ids:
        await wait_status(http, case_id, "closed", timeout=120)

    closed_ids: dict[str, set[str]] = defaultdict(set)
    for record in await read_topic(settings, "case.delivery.v1", idle=1.0):
        if header(record, "ce_type") == "gov.case.closed.v1":
            closed_ids[header(record, "ce_subject") or ""].add(header(record, "ce_id") or "")
    for case_id in case_ids:
        assert len(closed_ids[case_id]) == 1, f"{case_id} closed {len(closed_ids[case_id])}x"


async def test_every_record_on_every_case_topic_keeps_the_contract(
    catalog: dict[str, Any],
    settings: CommonSettings,
) -> None:
    seen_types: set[str] = set()
    checked = 0
    # Records the services refused (test_hostile_records.py sends some) are not theirs.
    refused = {
        (header(r, "dlq_topic"), header(r, "dlq_partition"), header(r, "dlq_offset"))
        for r in await read_topic(settings, "case.dlq.v1", idle=0.5)
    }
    for topic in CASE_TOPICS:
        for record in await read_topic(settings, topic, idle=1.0):
            if (topic, str(record.partition), str(record.offset)) in refused:
                continue
            names = {k for k, _ in record.headers}
            missing = CLOUDEVENTS_HEADERS - names
            assert not missing, (topic, record.offset, missing)
            assert header(record, "ce_specversion") == "1.0"
            assert header(record, "content-type") == "application/json"
            assert record.key is not None and record.key.decode() == header(record, "ce_subject")
            event_type = header(record, "ce_type") or ""
            if event_type == "gov.case.routed.v1":
                assert header(record, "ce_handledby"), "routed events name the department"
            validate_event(event_type, json.loads(record.value or b"null"))
            seen_types.add(event_type)
            checked += 1
    assert checked > 50
    assert {
        "gov.case.submitted.v1",
        "gov.case.routed.v1",
        "gov.case.accepted.v1",
        "gov.case.closed.v1",
    } <= seen_types


async def test_a_bad_catalog_is_refused_whole_and_the_version_in_force_stays(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
) -> None:
    before = (await http.get(f"{ROUTING}/v1/catalog/version")).json()
    broken = json.loads(json.dumps(catalog))
    broken["items"][0]["owner"] = "NO-SUCH-DEPT"
    broken["items"].append(dict(broken["items"][1]))  # a duplicate item code
    answer = await http.post(f"{ROUTING}/v1/catalog", json=broken)
    assert answer.status_code == 422
    problem = answer.json()
    assert problem["code"] == "invalid_catalog"
    fields = [e["field"] for e in problem["errors"]]
    assert len(problem["errors"]) >= 2, problem["errors"]
    assert any("owner" in f for f in fields) and any(f.startswith("items") for f in fields)
    after = (await http.get(f"{ROUTING}/v1/catalog/version")).json()
    assert after["version"] == before["version"]


async def test_department_decisions_arrive_as_events_too(
    catalog: dict[str, Any],
    http: ActingClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    item = rng.choice(
        items_where(
            catalog, lambda i: not i.get("instant") and i["mode"] in ("municipal", "entrusted")
        )
    )
    cases = []
    for _ in range(2):
        answer = await http.post(
            f"{INTAKE}/v1/cases", json=application_for(catalog, item, rng, delivery="electronic")
        )
        cases.append(await wait_status(http, answer.json()["case_id"], "accepted"))
    good, bad = cases
    stranger = next(
        d["code"] for d in catalog["departments"] if d["code"] != bad["route"]["handled_by"]
    )

    def decision(case_id: str, department: str) -> Envelope:
        return Envelope(
            type="gov.case.decision.v1",
            source=f"/departments/{department}",
            subject=case_id,
            data={
                "case_id": case_id,
                "department": department,
                "decision": "approve",
                "reason": "同意",
            },
        )

    await produce(
        settings,
        "case.decisions.v1",
        [
            decision(good["case_id"], good["route"]["handled_by"]).to_record(),
            decision(bad["case_id"], stranger).to_record(),
        ],
    )
    await wait_status(http, good["case_id"], "closed")
    trail = (
        await http.get(
            f"{APPROVAL}/v1/audit",
            params={"case_id": good["case_id"]},
            headers=http.headers_for(Role.admin),
        )
    ).json()["records"]
    assert [(r["action"], r["role"]) for r in trail] == [("case.decide", "department_system")]

    async def dead_letter() -> Any:
        for record in await read_topic(settings, "case.dlq.v1", idle=0.5):
            if header(record, "ce_subject") == bad["case_id"]:
                return record
        return None

    letter = await eventually(dead_letter, what="the stranger's decision dead-lettered")
    assert "approval" in (header(letter, "dlq_source") or "")
    assert stranger in (header(letter, "dlq_reason") or "")
    assert (await wait_status(http, bad["case_id"], "accepted"))["status"] == "accepted"
