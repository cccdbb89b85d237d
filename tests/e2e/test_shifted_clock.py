"""The four services with their clock shifted (TONGBAN_CLOCK_OFFSET_S): a case accepted on the
wall clock goes overdue as soon as the services run past its deadline, without anyone waiting
for it, and a new case is stamped at the shifted time by every service it passes through."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.cli.applicants import application_for
from services.common.city import CITY_TZ
from tests.e2e.conftest import (
    APPROVAL,
    APPROVED_CASE_EVENTS,
    DELIVERY,
    INTAKE,
    items_where,
    shifted_services,
    wait_status,
)

pytestmark = pytest.mark.e2e


async def submit(
    http: httpx.AsyncClient, catalog: dict[str, Any], item: dict[str, Any], rng: random.Random
) -> str:
    answer = await http.post(f"{INTAKE}/v1/cases", json=application_for(catalog, item, rng))
    assert answer.status_code == 201, answer.text
    case_id: str = answer.json()["case_id"]
    return case_id


async def at_risk_today(http: httpx.AsyncClient, department: str) -> set[str]:
    """Approval's open cases whose deadline is today or before, by its own clock."""
    answer = await http.get(
        f"{APPROVAL}/v1/sla/cases", params={"department": department, "within_days": 0}
    )
    assert answer.status_code == 200, answer.text
    return {c["case_id"] for c in answer.json() if c["deadline"] is not None}


async def test_shifted_services_pass_a_deadline_and_stamp_new_cases_at_their_time(
    catalog: dict[str, Any], http: httpx.AsyncClient, rng: random.Random
) -> None:
    timed = items_where(
        catalog, lambda i: not i.get("instant") and int(i.get("time_limit_days") or 0) >= 1
    )
    item = min(timed, key=lambda i: (int(i["time_limit_days"]), i["code"]))
    instant = rng.choice(items_where(catalog, lambda i: bool(i.get("instant"))))

    first = await submit(http, catalog, item, rng)
    accepted = await wait_status(http, first, "accepted")
    department = accepted["route"]["handled_by"]
    deadline = datetime.fromisoformat(accepted["deadline"]).date()  # None: past the calendar
    assert first not in await at_risk_today(http, department)

    # Run the services an hour past the end of the deadline day (city time).
    past_deadline = datetime.combine(deadline + timedelta(days=1), datetime.min.time(), CITY_TZ)
    offset = past_deadline + timedelta(hours=1) - datetime.now(UTC)
    async with shifted_services(offset.total_seconds()):
        shifted_from = datetime.now(UTC) + offset

        # approval: its SLA scheduler fires the overdue by the shifted clock, its board sees it
        view = await wait_status(http, first, "accepted", with_events=["gov.case.overdue.v1"])
        (overdue,) = [e for e in view["timeline"] if e["type"] == "gov.case.overdue.v1"]
        assert datetime.fromisoformat(overdue["time"]) >= past_deadline  # ce_time, shifted
        assert first in await at_risk_today(http, department)

        # intake, routing, approval and delivery: a new case lives at the shifted time
        case_id = await submit(http, catalog, instant, rng)
        shifted_day = shifted_from.astimezone(CITY_TZ).date()
        assert f"-{shifted_day:%Y%m%d}-" in case_id  # intake names it by its own today
        closed = await wait_status(http, case_id, "closed", with_events=APPROVED_CASE_EVENTS)
        for event in closed["timeline"]:
            assert datetime.fromisoformat(event["time"]) >= shifted_from, event
        at_approval = (await http.get(f"{APPROVAL}/v1/cases/{case_id}")).json()
        assert datetime.fromisoformat(at_approval["accepted_at"]) >= shifted_from, at_approval
        result = (await http.get(f"{DELIVERY}/v1/results/{case_id}")).json()
        assert datetime.fromisoformat(result["issued_at"]) >= shifted_from.replace(microsecond=0)

        # and its deadline counts from the shifted acceptance day
        later = await submit(http, catalog, item, rng)
        later_deadline = (await wait_status(http, later, "accepted"))["deadline"]
        assert datetime.fromisoformat(later_deadline).date() > shifted_day
