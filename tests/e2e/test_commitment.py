"""Commitment (告知承诺, DESIGN.md §7) on the real stack: a material the catalog lets the
applicant commit to instead of proving lets the case go ahead without it; committing elsewhere
is 422 `commitment_not_allowed`. The approval opens a verification (approval's
`GET /v1/verifications`), overdue like every clock (`step: verification`, shown by an approval
process whose clock runs 60 days ahead); confirmed, it closes (`gov.case.verified.v1`);
breached, the decision is revoked (`gov.case.revoked.v1`, intake's status `revoked`), so is
its e-licence (delivery's verify answers `revoked`), and the applicant commits no more.

The demo catalog has no commitments, so this module loads it again with an item of its own
(a new catalog version) and loads the demo catalog back at the end.
"""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.cli.applicants import application_for
from services.cli.devclient import APPROVAL_PORT, ActingClient
from services.common.auth import Role
from services.common.settings import CommonSettings
from tests.conftest import eventually
from tests.e2e.conftest import APPROVAL, DELIVERY, INTAKE, decide_when_listed, items_where
from tests.e2e.conftest import wait_status as wait_intake_status
from tests.e2e.test_deferral import approval_events
from tests.e2e.test_license_library import catalog_with
from tests.e2e.test_sla_processes import approval_process

pytestmark = pytest.mark.e2e

COMMITTED = "E2E-COMMIT"  # a reviewed item whose SITE may be committed to; it issues a licence
PERMIT = "E2E-COMMIT-PERMIT"
VERIFY_DAYS = 3


def commitment_item(catalog: dict[str, Any]) -> dict[str, Any]:
    """On the model of an online item for individuals of the catalog: reviewed in 5 working
    days, the site proof (SITE) may be a commitment, the ID card may not."""
    template = items_where(
        catalog, lambda i: i["mode"] == "online" and i["category"] == "individual"
    )[0]
    return {
        **copy.deepcopy(template),
        "code": COMMITTED,
        "name": f"{COMMITTED} (e2e)",
        "instant": False,
        "time_limit_days": 5,
        "verify_days": VERIFY_DAYS,
        "materials": [
            {"code": "ID-CARD", "name": "身份证", "required": True},
            {"code": "SITE", "name": "场地证明", "required": True, "commitment": True},
        ],
        "result": {"kind": "licence", "e_license": True, "license_type": PERMIT},
    }


@pytest.fixture(scope="module")
async def commitment_catalog(catalog: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    async with catalog_with(catalog, [commitment_item(catalog)]) as raw:
        yield raw


@pytest.fixture
def rng() -> random.Random:
    """New applicants on every run: the stack keeps its bars from one run to the next."""
    return random.Random(uuid.uuid4().int)


def committing(
    raw: dict[str, Any],
    rng: random.Random,
    applicant: dict[str, Any] | None = None,
    committed: str = "SITE",
) -> dict[str, Any]:
    """An online submission of the item, electronic delivery, `committed` as a commitment."""
    item = next(i for i in raw["items"] if i["code"] == COMMITTED)
    body = application_for(raw, item, rng, channel="online", delivery="electronic")
    if applicant is not None:
        body["applicant"] = applicant
    body["materials"] = [m for m in body["materials"] if m["code"] != committed] + [
        {"code": committed, "commitment": True}
    ]
    return body


async def approved_with_commitment(
    http: ActingClient, raw: dict[str, Any], rng: random.Random
) -> tuple[dict[str, Any], str, str, dict[str, Any]]:
    """A case committing to SITE, submitted without it, approved: (its application, case id,
    department, its entry on the department's open verifications)."""
    body = committing(raw, rng)
    created = await http.post(f"{INTAKE}/v1/cases", json=body)
    assert created.status_code == 201, created.text
    answer = created.json()
    # The commitment satisfies SITE: nothing missing, the case goes ahead at once.
    assert answer["status"] == "submitted" and answer["missing_materials"] == []
    case_id = answer["case_id"]
    accepted = await wait_intake_status(http, case_id, "accepted")
    department = accepted["route"]["handled_by"]
    decided = await decide_when_listed(
        http, case_id, department, {"decision": "approve", "reason": "e2e"}
    )
    assert decided.status_code == 200, decided.text

    async def listed() -> dict[str, Any] | None:
        answer = await http.get(f"{APPROVAL}/v1/verifications", params={"department": department})
        assert answer.status_code == 200, answer.text
        return next((e for e in answer.json() if e["case_id"] == case_id), None)

    entry = await eventually(listed, what=f"{case_id} on {department}'s verifications")
    assert entry["status"] == "open" and entry["item_code"] == COMMITTED
    assert entry["committed_materials"] == ["SITE"] and entry["department"] == department
    assert entry["due"] is not None and entry["due"] > entry["approved_at"][:10]
    return body, case_id, department, entry


async def verify(http: ActingClient, case_id: str, department: str, result: str, note: str) -> Any:
    return await http.post(
        f"{APPROVAL}/v1/cases/{case_id}/verification",
        json={"result": result, "note": note},
        headers=http.headers_for(Role.reviewer, department),
    )


async def test_a_committed_material_goes_ahead_and_its_verification_is_confirmed(
    commitment_catalog: dict[str, Any],
    http: ActingClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    _body, case_id, department, entry = await approved_with_commitment(
        http, commitment_catalog, rng
    )
    closed = await wait_intake_status(http, case_id, "closed")
    assert "SITE" not in closed["missing_materials"]

    # The open verification is a clock at risk (the SLA board's cases; the console's table).
    async def at_risk() -> dict[str, Any]:
        answer = await http.get(
            f"{APPROVAL}/v1/sla/cases", params={"department": department, "within_days": 365}
        )
        assert answer.status_code == 200, answer.text
        return {row["case_id"]: row for row in answer.json()}

    row = (await at_risk())[case_id]
    assert row["committed_materials"] == ["SITE"] and row["verification_due"] == entry["due"]

    # Another department's reviewer: the case does not exist for them.
    stranger = await verify(http, case_id, "E2E-NOT-MINE", "confirmed", "e2e")
    assert stranger.status_code == 404 and stranger.json()["code"] == "case_not_found"
    confirmed = await verify(http, case_id, department, "confirmed", "现场核查一致")
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "confirmed" and confirmed.json()["verified_at"]
    again = await verify(http, case_id, department, "breached", "e2e")
    assert again.status_code == 409 and again.json()["code"] == "invalid_state"
    listed = await http.get(f"{APPROVAL}/v1/verifications", params={"department": department})
    assert case_id not in {e["case_id"] for e in listed.json()}
    assert case_id not in await at_risk()  # answered: no clock left

    await wait_intake_status(http, case_id, "closed", with_events=["gov.case.verified.v1"])
    (verified,) = await approval_events(settings, case_id, "gov.case.verified.v1")
    assert verified["handledby"] == department
    assert verified["data"]["department"] == department
    assert verified["data"]["note"] == "现场核查一致"
    licence = (await http.get(f"{DELIVERY}/v1/results/{case_id}")).json()["result"]["license_id"]
    valid = await http.get(f"{DELIVERY}/v1/licenses/{licence}/verify")
    assert valid.json()["status"] == "valid"


async def test_a_verification_past_its_due_day_is_overdue_with_step_verification(
    commitment_catalog: dict[str, Any],
    http: ActingClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    _body, case_id, department, entry = await approved_with_commitment(
        http, commitment_catalog, rng
    )
    # An approval process whose clock runs 60 days ahead: the due day is long over there.
    ahead = approval_process(APPROVAL_PORT + 31)
    try:

        async def overdue() -> list[dict[str, Any]] | None:
            found = await approval_events(settings, case_id, "gov.case.overdue.v1")
            return found or None

        (late,) = await eventually(overdue, timeout=90, what=f"{case_id}'s verification overdue")
    finally:
        ahead.terminate()
        ahead.wait(timeout=30)
    assert late["handledby"] == department
    assert late["data"]["step"] == "verification"
    assert late["data"]["deadline"] == entry["due"]
    warnings = await approval_events(settings, case_id, "gov.case.sla_warning.v1")
    assert warnings and {w["data"]["step"] for w in warnings} == {"verification"}
    # Overdue, still open: the department still answers it, and its clock stops.
    confirmed = await verify(http, case_id, department, "confirmed", "late, but true")
    assert confirmed.status_code == 200, confirmed.text


async def test_a_breached_commitment_revokes_the_decision_and_the_licence_and_bars_the_applicant(
    commitment_catalog: dict[str, Any],
    http: ActingClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    body, case_id, department, _entry = await approved_with_commitment(
        http, commitment_catalog, rng
    )
    await wait_intake_status(http, case_id, "closed")
    licence = (await http.get(f"{DELIVERY}/v1/results/{case_id}")).json()["result"]["license_id"]
    assert licence

    breached = await verify(http, case_id, department, "breached", "场地证明不实")
    assert breached.status_code == 200, breached.text
    assert breached.json()["status"] == "breached"
    at_approval = await http.get(f"{APPROVAL}/v1/cases/{case_id}")
    assert at_approval.json()["status"] == "revoked"

    await wait_intake_status(http, case_id, "revoked", with_events=["gov.case.revoked.v1"])
    (revoked,) = await approval_events(settings, case_id, "gov.case.revoked.v1")
    assert revoked["handledby"] == department
    assert revoked["data"]["reason"] == "commitment_breached"
    assert revoked["data"]["note"] == "场地证明不实" and revoked["data"]["revoked_at"]

    async def licence_revoked() -> dict[str, Any] | None:
        answer = await http.get(f"{DELIVERY}/v1/licenses/{licence}/verify")
        return answer.json() if answer.json()["status"] == "revoked" else None

    verdict = await eventually(licence_revoked, what=f"{licence} revoked at delivery")
    assert verdict["valid"] is False

    # The applicant is barred from commitments, not from applying.
    barred = await http.post(
        f"{INTAKE}/v1/cases", json=committing(commitment_catalog, rng, body["applicant"])
    )
    assert barred.status_code == 422, barred.text
    problem = barred.json()
    assert problem["code"] == "commitment_not_allowed"
    index = [m["code"] for m in committing(commitment_catalog, rng)["materials"]].index("SITE")
    assert [e["field"] for e in problem["errors"]] == [f"materials.{index}.commitment"]
    assert "breached" in problem["detail"]
    proving = committing(commitment_catalog, rng, body["applicant"])
    proving["materials"] = [{**m, "commitment": False} for m in proving["materials"]]
    created = await http.post(f"{INTAKE}/v1/cases", json=proving)
    assert created.status_code == 201, created.text


async def test_a_commitment_on_a_material_that_allows_none_is_refused(
    commitment_catalog: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    body = committing(commitment_catalog, rng, committed="ID-CARD")
    answer = await http.post(f"{INTAKE}/v1/cases", json=body)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["code"] == "commitment_not_allowed"
    index = [m["code"] for m in body["materials"]].index("ID-CARD")
    assert [e["field"] for e in problem["errors"]] == [f"materials.{index}.commitment"]
    assert "SITE" in problem["detail"]  # the material that allows one
