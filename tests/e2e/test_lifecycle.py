"""Case lifecycle depth end to end: supplement rounds that pause the clock, withdrawal before a
decision, a deadline past the calendar and its extension, ratings and their follow-ups."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from contracts.common import Application
from contracts.events import CaseSubmitted
from services.cli.applicants import application_for
from services.common.envelope import Envelope
from services.common.handover import HandoverSettings, load_keys, sign_handover
from services.common.settings import CommonSettings
from tests.conftest import eventually
from tests.e2e.conftest import (
    APPROVAL,
    DELIVERY,
    INTAKE,
    ROUTING,
    items_where,
    wait_status,
)
from tests.kafka_helpers import produce

pytestmark = pytest.mark.e2e


def reviewable(catalog: dict[str, Any]) -> list[dict[str, Any]]:
    """Non-instant items with at least two materials, decided by a municipal owner."""
    return items_where(
        catalog,
        lambda i: (
            not i.get("instant")
            and len(i["materials"]) >= 2
            and i["mode"] in ("municipal", "online", "entrusted")
        ),
    )


async def accepted_case(
    http: httpx.AsyncClient, catalog: dict[str, Any], rng: random.Random, **kwargs: Any
) -> dict[str, Any]:
    item = rng.choice(reviewable(catalog))
    answer = await http.post(
        f"{INTAKE}/v1/cases", json=application_for(catalog, item, rng, **kwargs)
    )
    assert answer.status_code == 201, answer.text
    view = await wait_status(http, answer.json()["case_id"], "accepted")
    view["item"] = item
    return view


async def decide(
    http: httpx.AsyncClient, case_id: str, department: str, **body: Any
) -> httpx.Response:
    return await http.post(
        f"{APPROVAL}/v1/cases/{case_id}/decisions", json={"department": department, **body}
    )


async def timeline_has(
    http: httpx.AsyncClient, case_id: str, event_type: str, count: int = 1
) -> dict[str, Any]:
    async def enough() -> dict[str, Any] | None:
        answer = await http.get(f"{INTAKE}/v1/cases/{case_id}")
        if answer.status_code == 404:
            return None  # sent straight to Kafka: intake has not seen it yet
        view: dict[str, Any] = answer.json()
        seen = [e["type"] for e in view["timeline"]].count(event_type)
        return view if seen >= count else None

    result: dict[str, Any] = await eventually(enough, what=f"{count}x {event_type} on {case_id}")
    return result


async def test_supplement_rounds_pause_the_clock_and_the_case_still_closes(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
) -> None:
    view = await accepted_case(http, catalog, rng, delivery="electronic")
    case_id, department = view["case_id"], view["route"]["handled_by"]
    first_deadline = view["deadline"]
    assert first_deadline is not None
    materials = [m["code"] for m in view["item"]["materials"]]
    for round_no, missing in enumerate([materials[:2], materials[:1]], start=1):
        asked = await decide(
            http,
            case_id,
            department,
            decision="request_supplement",
            reason="材料不清晰",
            missing_materials=missing,
        )
        assert asked.status_code == 200, asked.text
        waiting = await wait_status(http, case_id, "supplement_requested")
        assert sorted(waiting["missing_materials"]) == sorted(missing)
        # Every requested material at once: a partial answer is refused.
        if len(missing) > 1:
            partial = await http.post(
                f"{INTAKE}/v1/cases/{case_id}/materials", json={"materials": [{"code": missing[0]}]}
            )
            assert partial.status_code == 422 and partial.json()["code"] == "materials_incomplete"
        answered = await http.post(
            f"{INTAKE}/v1/cases/{case_id}/materials",
            json={"materials": [{"code": c} for c in missing]},
        )
        assert answered.status_code == 200, answered.text
        resumed = await timeline_has(http, case_id, "gov.case.deadline_changed.v1", round_no)
        # Supplemented the same day: no working day was paused, the deadline stands.
        assert resumed["deadline"] is not None and resumed["deadline"] >= first_deadline
    approved = await decide(http, case_id, department, decision="approve")
    assert approved.status_code == 200, approved.text
    closed = await wait_status(http, case_id, "closed")
    types = [e["type"] for e in closed["timeline"]]
    assert types.count("gov.case.supplement_requested.v1") == 2
    assert types.count("gov.case.supplemented.v1") == 2
    state = (await http.get(f"{APPROVAL}/v1/cases/{case_id}")).json()
    assert state["supplement_rounds"] == 2


async def test_withdrawal_before_the_decision_stops_the_case(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
) -> None:
    view = await accepted_case(http, catalog, rng)
    case_id, department = view["case_id"], view["route"]["handled_by"]
    materials = [m["code"] for m in view["item"]["materials"]]
    asked = await decide(
        http, case_id, department, decision="request_supplement", missing_materials=materials[:1]
    )
    assert asked.status_code == 200
    await wait_status(http, case_id, "supplement_requested")
    withdrawn = await http.post(
        f"{INTAKE}/v1/cases/{case_id}/withdraw", json={"reason": "申请人撤回"}
    )
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "withdrawn"

    async def approval_knows() -> bool:
        state = (await http.get(f"{APPROVAL}/v1/cases/{case_id}")).json()
        return bool(state["status"] == "withdrawn")

    await eventually(approval_knows, what="approval sees the withdrawal")
    late = await decide(http, case_id, department, decision="approve")
    assert late.status_code == 409 and late.json()["code"] == "invalid_state"
    worklist = (await http.get(f"{APPROVAL}/v1/worklist", params={"department": department})).json()
    assert case_id not in [e["case_id"] for e in worklist]

    decided = await accepted_case(http, catalog, rng)
    ok = await decide(http, decided["case_id"], decided["route"]["handled_by"], decision="approve")
    assert ok.status_code == 200
    await wait_status(http, decided["case_id"], "approved", "result_issued", "delivered", "closed")
    too_late = await http.post(f"{INTAKE}/v1/cases/{decided['case_id']}/withdraw", json={})
    assert too_late.status_code == 409


async def test_a_bad_rating_opens_a_follow_up_the_department_answers(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
) -> None:
    view = await accepted_case(http, catalog, rng, delivery="electronic")
    case_id, department = view["case_id"], view["route"]["handled_by"]
    assert (await decide(http, case_id, department, decision="approve")).status_code == 200
    await wait_status(http, case_id, "closed")
    rated = await http.post(
        f"{DELIVERY}/v1/cases/{case_id}/rating",
        json={"rating": "dissatisfied", "comment": "等待时间太长"},
    )
    assert rated.status_code == 201, rated.text
    twice = await http.post(f"{DELIVERY}/v1/cases/{case_id}/rating", json={"rating": "basic"})
    assert twice.status_code == 409 and twice.json()["code"] == "already_rated"

    async def opened() -> list[dict[str, Any]] | None:
        entries = (
            await http.get(f"{APPROVAL}/v1/followups", params={"department": department})
        ).json()
        mine = [e for e in entries if e["case_id"] == case_id]
        return mine or None

    (entry,) = await eventually(opened, what="the follow-up on the department's list")
    assert entry["rating"] == "dissatisfied" and entry["deadline"] is not None
    stranger = next(d["code"] for d in catalog["departments"] if d["code"] != department)
    wrong = await http.post(
        f"{APPROVAL}/v1/cases/{case_id}/followup", json={"department": stranger, "answer": "x"}
    )
    # Another department's follow-up reads as no follow-up at all.
    assert wrong.status_code == 404 and wrong.json()["code"] == "followup_not_found"
    answer = await http.post(
        f"{APPROVAL}/v1/cases/{case_id}/followup",
        json={"department": department, "answer": "已回访，说明原因"},
    )
    assert answer.status_code == 200, answer.text
    view = await timeline_has(http, case_id, "gov.case.followup_answered.v1")
    assert "gov.case.followup_opened.v1" in [e["type"] for e in view["timeline"]]
    again = await http.post(
        f"{APPROVAL}/v1/cases/{case_id}/followup",
        json={"department": department, "answer": "again"},
    )
    assert again.status_code == 409

    stats = (await http.get(f"{DELIVERY}/v1/ratings/stats", params={"by": "department"})).json()
    row = next(r for r in stats if r["key"] == department)
    assert row["dissatisfied"] >= 1 and row["bad"] >= 1
    by_level = (await http.get(f"{DELIVERY}/v1/ratings/stats", params={"by": "level"})).json()
    assert any(r["key"] == view["route"]["level"] for r in by_level)
    bad = await http.get(f"{DELIVERY}/v1/ratings/stats", params={"by": "weather"})
    assert bad.status_code == 422


async def test_a_deadline_past_the_calendar_is_unknown_until_the_calendar_is_extended(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
) -> None:
    short = json.loads(json.dumps(catalog))
    short["calendar"]["covers_until"] = (date.today() + timedelta(days=2)).isoformat()
    short["calendar"]["holidays"] = [
        d for d in short["calendar"]["holidays"] if str(d) <= short["calendar"]["covers_until"]
    ]
    short["calendar"]["workdays"] = [
        d for d in short["calendar"]["workdays"] if str(d) <= short["calendar"]["covers_until"]
    ]
    try:
        loaded = await http.post(f"{ROUTING}/v1/catalog", json=short)
        assert loaded.status_code == 201, loaded.text
        version = loaded.json()["version"]
        item = rng.choice(
            items_where(
                short,
                lambda i: (
                    int(i.get("time_limit_days") or 0) >= 5
                    and not i.get("instant")
                    and i["mode"] == "municipal"
                ),
            )
        )
        await _until_intake_has(http, version)
        await asyncio.sleep(1.5)  # approval follows catalog.v1 too; it takes ~0.1 s
        answer = await http.post(f"{INTAKE}/v1/cases", json=application_for(short, item, rng))
        assert answer.status_code == 201, answer.text
        case_id = answer.json()["case_id"]
        view = await timeline_has(http, case_id, "gov.case.deadline_unknown.v1")
        assert view["status"] == "accepted" and view["deadline"] is None
        assert view["route"]["catalog_version"] == version
    finally:
        restored = await http.post(f"{ROUTING}/v1/catalog", json=catalog)
        assert restored.status_code == 201
    view = await timeline_has(http, case_id, "gov.case.deadline_changed.v1")
    assert view["deadline"] is not None


async def _until_intake_has(http: httpx.AsyncClient, version: int) -> None:
    async def current() -> bool:
        answer = await http.get(f"{ROUTING}/v1/catalog/version")
        return bool(answer.json()["version"] == version)

    await eventually(current, what=f"catalog version {version} in force")


async def test_an_altered_entrusted_handover_is_refused_and_flagged(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    """An entrusted file signed by its intake office, then altered on the way (the applicant's
    ID number changed), never reaches the worklist; the untouched one is accepted as of the
    signature."""
    item = rng.choice(
        items_where(catalog, lambda i: i["mode"] == "entrusted" and not i.get("instant"))
    )
    keys = load_keys(HandoverSettings())
    envelopes, case_ids = [], []
    for tamper in (False, True):
        body = application_for(catalog, item, rng, channel="counter", delivery="electronic")
        application = Application.model_validate(body)
        case_id = f"HO-{uuid.uuid4().hex[:10]}"
        signed_at = datetime.now(UTC)
        handover = sign_handover(
            case_id=case_id,
            application=application,
            office_code=application.office_code or "",
            signed_at=signed_at,
            keys=keys,
        )
        if tamper:
            other = dict(body["applicant"], name=body["applicant"]["name"] + "改")
            application = Application.model_validate({**body, "applicant": other})
        submitted = CaseSubmitted(
            case_id=case_id, application=application, submitted_at=signed_at, handover=handover
        )
        envelopes.append(
            Envelope(
                type="gov.case.submitted.v1",
                source="/tongban/intake",
                subject=case_id,
                data=submitted.model_dump(mode="json"),
            )
        )
        case_ids.append(case_id)
    await produce(settings, "case.intake.v1", [e.to_record() for e in envelopes])
    honest, altered = case_ids

    view = await wait_status(http, honest, "accepted")
    assert view["route"]["path"] == "entrusted"
    refused = await timeline_has(http, altered, "gov.case.handover_refused.v1")
    assert refused["status"] == "routed"
    assert refused["failure"]["code"] == "handover_refused"
    assert "digest_mismatch" in refused["failure"]["explanation"]
    flagged = (await http.get(f"{APPROVAL}/v1/handovers/refused")).json()
    assert altered in [f["case_id"] for f in flagged]
    assert honest not in [f["case_id"] for f in flagged]
    worklist = (
        await http.get(
            f"{APPROVAL}/v1/worklist", params={"department": refused["route"]["handled_by"]}
        )
    ).json()
    assert altered not in [e["case_id"] for e in worklist]
