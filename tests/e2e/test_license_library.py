"""The licence library end to end (DESIGN.md §7, 电子证照免提交): a result of one case is a
material of the next, through the real loop. An item whose result has a `license_type` is
approved and delivered; delivery announces the e-licence on `license.v1`; intake keeps its
copy; a later case of another item whose material takes that type is satisfied without asking.
A named licence that cannot be used is 422 `invalid_license`; a revoked decision
(`gov.case.revoked.v1`, produced here as approval would) revokes the licence in delivery's
verification and in intake's copy, and it is never reused again.

This module loads the demo catalog again with four items of its own (a new catalog version),
so its licence types and holders are its own, and loads the demo catalog back at the end.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.events import (
    APPROVAL_TOPIC,
    LICENSE_TOPIC,
    CaseRevoked,
    LicenseIssued,
    LicenseRevoked,
)
from contracts.registry import validate_event
from services.cli.applicants import application_for, resident_id
from services.cli.devclient import ActingClient
from services.common.auth import Role
from services.common.envelope import Envelope
from services.common.logs import mask_id_number
from services.common.settings import CommonSettings
from tests.conftest import eventually
from tests.e2e.conftest import (
    APPROVAL,
    DELIVERY,
    INTAKE,
    ROUTING,
    decide_when_listed,
    items_where,
    wait_status,
)
from tests.kafka_helpers import CLOUDEVENTS_HEADERS, header, produce, read_topic

pytestmark = pytest.mark.e2e

PERMIT = "E2E-RESIDENCE-PERMIT"  # the licence type the issuing item's result is
OTHER = "E2E-OTHER-PERMIT"
ISSUE, ISSUE_OTHER, REUSE, REVIEW = (
    "E2E-LIC-ISSUE",
    "E2E-LIC-OTHER",
    "E2E-LIC-REUSE",
    "E2E-LIC-REVIEW",
)


def licence_items(catalog: dict[str, Any]) -> list[dict[str, Any]]:
    """Four items on the model of an online, instant item for individuals of the catalog."""
    template = items_where(
        catalog,
        lambda i: (
            i["mode"] == "online" and bool(i.get("instant")) and i["category"] == "individual"
        ),
    )[0]

    def item(code: str, **fields: Any) -> dict[str, Any]:
        return {**copy.deepcopy(template), "code": code, "name": f"{code} (e2e)", **fields}

    takes_permit = [
        {"code": "PERMIT", "name": "居住证", "required": True, "license_type": PERMIT},
        {"code": "FORM", "name": "申请表", "required": True},
    ]
    certificate = {"kind": "certificate", "e_license": False}
    return [
        item(
            ISSUE,
            materials=[{"code": "ID-CARD", "name": "身份证", "required": True}],
            result={"kind": "licence", "e_license": True, "license_type": PERMIT},
        ),
        item(
            ISSUE_OTHER,
            materials=[{"code": "ID-CARD", "name": "身份证", "required": True}],
            result={"kind": "licence", "e_license": True, "license_type": OTHER},
        ),
        item(REUSE, materials=takes_permit, result=certificate),
        item(REVIEW, materials=takes_permit, result=certificate, instant=False, time_limit_days=5),
    ]


async def load_catalog(client: ActingClient, raw: dict[str, Any]) -> None:
    answer = await client.post(f"{ROUTING}/v1/catalog", json=raw)
    assert answer.status_code == 201, answer.text
    codes = {i["code"] for i in raw["items"]}

    async def intake_has_it() -> bool:
        items = await client.get(f"{INTAKE}/v1/items")
        return items.status_code == 200 and {i["code"] for i in items.json()} == codes

    await eventually(intake_has_it, what="intake follows the catalog")


@asynccontextmanager
async def catalog_with(
    catalog: dict[str, Any], items: list[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    """The catalog with `items` added, loaded as a new version while in use; then the catalog
    loaded back as it was."""
    raw = copy.deepcopy(catalog)
    raw["items"].extend(items)
    async with ActingClient(timeout=30) as client:
        await load_catalog(client, raw)
        try:
            yield raw
        finally:
            await load_catalog(client, catalog)


@pytest.fixture(scope="module")
async def licence_catalog(catalog: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    async with catalog_with(catalog, licence_items(catalog)) as raw:
        yield raw


@pytest.fixture
def rng() -> random.Random:
    """New applicants on every run: the stack keeps its licences from one run to the next."""
    return random.Random(uuid.uuid4().int)


def item_of(raw: dict[str, Any], code: str) -> dict[str, Any]:
    return next(i for i in raw["items"] if i["code"] == code)


def submission(
    raw: dict[str, Any],
    code: str,
    rng: random.Random,
    applicant: dict[str, Any] | None = None,
    materials: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """An online submission of `code` with electronic delivery; `materials` (codes) instead
    of every material when given; `applicant` instead of a new one."""
    body = application_for(raw, item_of(raw, code), rng, channel="online", delivery="electronic")
    if applicant is not None:
        body["applicant"] = applicant
    if materials is not None:
        body["materials"] = [m for m in body["materials"] if m["code"] in materials]
    return body


async def issued_licence(
    http: ActingClient, raw: dict[str, Any], rng: random.Random, code: str = ISSUE, **kw: Any
) -> tuple[dict[str, Any], str, str]:
    """An applicant's e-licence through the real loop: (the application, the case id, the
    licence id), once intake's copy of the library holds it."""
    body = submission(raw, code, rng, **kw)
    created = await http.post(f"{INTAKE}/v1/cases", json=body)
    assert created.status_code == 201, created.text
    case_id = created.json()["case_id"]
    await wait_status(http, case_id, "closed", with_events=("gov.case.result_issued.v1",))
    result = await http.get(f"{DELIVERY}/v1/results/{case_id}")
    assert result.status_code == 200, result.text
    license_id = result.json()["result"]["license_id"]
    assert license_id
    await eventually(
        lambda: held(http, body["applicant"]["id_number"], license_id),
        what=f"intake's library to hold {license_id}",
    )
    return body, case_id, license_id


async def library(
    http: ActingClient, holder: str, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    answer = await http.get(f"{INTAKE}/v1/licenses", params={"holder": holder}, headers=headers)
    assert answer.status_code == 200, answer.text
    body: list[dict[str, Any]] = answer.json()
    return body


async def held(http: ActingClient, holder: str, license_id: str) -> dict[str, Any] | None:
    return next((e for e in await library(http, holder) if e["license_id"] == license_id), None)


async def licence_records(
    settings: CommonSettings, license_id: str, *types: str
) -> list[ConsumerRecord[bytes, bytes]]:
    """The records of `license.v1` about the licence, once every type in `types` is there."""

    async def found() -> list[ConsumerRecord[bytes, bytes]] | None:
        records = [
            r
            for r in await read_topic(settings, LICENSE_TOPIC, idle=0.3)
            if header(r, "ce_subject") == license_id
        ]
        return records if {header(r, "ce_type") for r in records} >= set(types) else None

    result: list[ConsumerRecord[bytes, bytes]] = await eventually(
        found, timeout=60, what=f"{types} of {license_id} on {LICENSE_TOPIC}"
    )
    return result


def assert_keeps_the_contract(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    """Full CloudEvents headers, keyed and subjected by the licence id, valid for its schema."""
    names = {k for k, _ in record.headers}
    assert CLOUDEVENTS_HEADERS <= names, CLOUDEVENTS_HEADERS - names
    assert header(record, "ce_specversion") == "1.0"
    assert header(record, "content-type") == "application/json"
    assert header(record, "ce_source") == "/tongban/delivery"
    assert record.key is not None and record.key.decode() == header(record, "ce_subject")
    data: dict[str, Any] = json.loads(record.value or b"null")
    validate_event(header(record, "ce_type") or "", data)
    assert data["license_id"] == header(record, "ce_subject")
    return data


def naming(body: dict[str, Any], license_id: str, material: str = "PERMIT") -> dict[str, Any]:
    """The submission `body` naming the licence on `material`."""
    body["materials"] = [
        {**m, "e_license_id": license_id} if m["code"] == material else m for m in body["materials"]
    ]
    return body


def as_approval(revoked: CaseRevoked) -> Envelope:
    """The revocation as approval publishes it: its source, ce_handledby, a new event id."""
    return Envelope(
        type=CaseRevoked.TYPE,
        source="/tongban/approval",
        subject=revoked.case_id,
        data=revoked.model_dump(mode="json"),
        handledby=revoked.department,
    )


def refused_licence(answer: Any, material: str, reason: str) -> None:
    """422 invalid_license on the e_license_id of `material` in the body sent, for `reason`."""
    assert answer.status_code == 422, answer.text
    body = json.loads(answer.request.content)
    index = [m["code"] for m in body["materials"]].index(material)
    problem = answer.json()
    assert problem["code"] == "invalid_license", problem
    assert f"({reason})" in problem["detail"], problem
    assert [e["field"] for e in problem["errors"]] == [f"materials.{index}.e_license_id"]


async def test_a_licence_issued_by_one_case_satisfies_the_material_of_the_next(
    licence_catalog: dict[str, Any],
    http: ActingClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    first, first_case, license_id = await issued_licence(http, licence_catalog, rng)
    holder = first["applicant"]["id_number"]
    (record,) = await licence_records(settings, license_id, LicenseIssued.TYPE)
    issued = assert_keeps_the_contract(record)
    assert header(record, "ce_type") == LicenseIssued.TYPE
    assert issued["license_type"] == PERMIT and issued["holder_id_number"] == holder.upper()
    assert issued["case_id"] == first_case and issued["item_code"] == ISSUE

    # Without naming it: the held licence satisfies PERMIT, nothing is missing.
    body = submission(licence_catalog, REUSE, rng, first["applicant"], materials=("FORM",))
    created = await http.post(f"{INTAKE}/v1/cases", json=body)
    assert created.status_code == 201, created.text
    answer = created.json()
    assert answer["status"] == "submitted" and answer["missing_materials"] == []
    assert answer["reused_licenses"] == [{"material": "PERMIT", "license_id": license_id}]
    view = await wait_status(http, answer["case_id"], "closed")
    notes = [e["note"] for e in view["timeline"] if e["type"] == "gov.case.submitted.v1"]
    assert notes == [f"e-licences reused (免提交): PERMIT ← {license_id}"]

    # Naming it: the same answer.
    named = submission(licence_catalog, REUSE, rng, first["applicant"])
    named["materials"] = [
        {"code": "PERMIT", "e_license_id": license_id},
        *[m for m in named["materials"] if m["code"] == "FORM"],
    ]
    created = await http.post(f"{INTAKE}/v1/cases", json=named)
    assert created.status_code == 201, created.text
    assert created.json()["reused_licenses"] == [{"material": "PERMIT", "license_id": license_id}]
    assert created.json()["missing_materials"] == []

    # An applicant who holds nothing: asked for the material as before.
    stranger = submission(licence_catalog, REUSE, rng, materials=("FORM",))
    created = await http.post(f"{INTAKE}/v1/cases", json=stranger)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "awaiting_supplement"
    assert created.json()["missing_materials"] == ["PERMIT"]
    assert created.json()["reused_licenses"] == []
    # ... who cannot bring another holder's licence later either.
    supplement = {"materials": [{"code": "PERMIT", "e_license_id": license_id}]}
    answer = await http.post(
        f"{INTAKE}/v1/cases/{created.json()['case_id']}/materials", json=supplement
    )
    refused_licence(answer, "PERMIT", "other_holder")


async def test_a_named_licence_that_cannot_be_used_is_invalid_license(
    licence_catalog: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    owner, _case, license_id = await issued_licence(http, licence_catalog, rng)
    _other, _case, other_type = await issued_licence(
        http, licence_catalog, rng, ISSUE_OTHER, applicant=owner["applicant"]
    )

    def reusing(license: str, material: str = "PERMIT", applicant: Any = None) -> dict[str, Any]:
        body = submission(licence_catalog, REUSE, rng, applicant or owner["applicant"])
        return naming(body, license, material)

    cases = [
        (reusing("EL-E2E-NO-SUCH-LICENCE"), "PERMIT", "unknown"),
        (
            reusing(license_id, applicant=submission(licence_catalog, REUSE, rng)["applicant"]),
            "PERMIT",
            "other_holder",
        ),
        (reusing(other_type), "PERMIT", "wrong_type"),
        (reusing(license_id, material="FORM"), "FORM", "wrong_type"),  # FORM takes no licence
    ]
    for body, material, reason in cases:
        answer = await http.post(f"{INTAKE}/v1/cases", json=body)
        refused_licence(answer, material, reason)


async def test_the_reviewer_sees_which_materials_came_from_which_licence(
    licence_catalog: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    owner, _case, license_id = await issued_licence(http, licence_catalog, rng)
    body = submission(licence_catalog, REVIEW, rng, owner["applicant"], materials=("FORM",))
    created = await http.post(f"{INTAKE}/v1/cases", json=body)
    assert created.status_code == 201, created.text
    case_id = created.json()["case_id"]
    view = await wait_status(http, case_id, "accepted")
    department = view["route"]["handled_by"]
    licensed = [{"material": "PERMIT", "license_id": license_id}]

    async def listed() -> dict[str, Any] | None:
        answer = await http.get(f"{APPROVAL}/v1/worklist", params={"department": department})
        return next((e for e in answer.json() if e["case_id"] == case_id), None)

    entry = await eventually(listed, what=f"{case_id} on {department}'s worklist")
    assert entry["licensed_materials"] == licensed
    held_case = await http.get(
        f"{APPROVAL}/v1/cases/{case_id}", headers=http.headers_for(Role.reviewer, department)
    )
    assert held_case.status_code == 200, held_case.text
    assert held_case.json()["licensed_materials"] == licensed
    decided = await decide_when_listed(
        http, case_id, department, {"decision": "approve", "reason": "e2e"}
    )
    assert decided.status_code == 200, decided.text
    await wait_status(http, case_id, "closed")


async def test_the_library_shows_a_clerk_only_their_applicants_and_operators_masked(
    licence_catalog: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    owner, _case, license_id = await issued_licence(http, licence_catalog, rng)
    holder = owner["applicant"]["id_number"]
    (as_operator,) = await library(http, holder)
    assert as_operator["license_id"] == license_id and as_operator["license_type"] == PERMIT
    assert as_operator["status"] == "valid" and as_operator["item_code"] == ISSUE
    assert as_operator["holder_id_number"] == mask_id_number(holder.upper())
    # The online channel took the holder's case: its clerk sees the licence, in clear.
    (as_clerk,) = await library(http, holder, http.headers_for(Role.clerk, "online"))
    assert as_clerk["holder_id_number"] == holder.upper()
    # A counter that never took a case of this holder: the answer of a holder with none.
    office = licence_catalog["offices"][0]["code"]
    assert await library(http, holder, http.headers_for(Role.clerk, office)) == []
    assert await library(http, resident_id(rng), http.headers_for(Role.clerk, "online")) == []
    reviewer = await http.get(
        f"{INTAKE}/v1/licenses",
        params={"holder": holder},
        headers=http.headers_for(Role.reviewer, "YZ-MKT"),
    )
    assert reviewer.status_code == 403 and reviewer.json()["code"] == "forbidden"


async def test_a_revoked_decision_revokes_the_licence_everywhere_and_it_is_not_reused(
    licence_catalog: dict[str, Any],
    http: ActingClient,
    rng: random.Random,
    settings: CommonSettings,
    engine: AsyncEngine,
) -> None:
    owner, case_id, license_id = await issued_licence(http, licence_catalog, rng)
    view = await wait_status(http, case_id, "closed")
    department = view["route"]["handled_by"]
    revoked = CaseRevoked(
        case_id=case_id,
        department=department,
        reason="commitment_breached",
        revoked_at=datetime.now(UTC),
        note="e2e: a commitment found false",
    )
    await produce(settings, APPROVAL_TOPIC, [as_approval(revoked).to_record()])

    async def verified_revoked() -> dict[str, Any] | None:
        answer = await http.get(f"{DELIVERY}/v1/licenses/{license_id}/verify")
        assert answer.status_code == 200, answer.text
        return answer.json() if answer.json()["status"] == "revoked" else None

    verification = await eventually(verified_revoked, what=f"{license_id} revoked at delivery")
    assert verification["valid"] is False and verification["case_id"] == case_id
    records = await licence_records(settings, license_id, LicenseIssued.TYPE, LicenseRevoked.TYPE)
    (revocation,) = [r for r in records if header(r, "ce_type") == LicenseRevoked.TYPE]
    data = assert_keeps_the_contract(revocation)
    assert data["case_id"] == case_id and data["reason"] == "commitment_breached"

    holder = owner["applicant"]["id_number"]

    async def revoked_at_intake() -> bool:
        entry = await held(http, holder, license_id)
        return entry is not None and entry["status"] == "revoked"

    await eventually(revoked_at_intake, what=f"{license_id} revoked in intake's library")
    await wait_status(http, case_id, "revoked")

    named = naming(submission(licence_catalog, REUSE, rng, owner["applicant"]), license_id)
    refused_licence(await http.post(f"{INTAKE}/v1/cases", json=named), "PERMIT", "revoked")
    unnamed = submission(licence_catalog, REUSE, rng, owner["applicant"], materials=("FORM",))
    created = await http.post(f"{INTAKE}/v1/cases", json=unnamed)
    assert created.status_code == 201, created.text
    assert created.json()["reused_licenses"] == []
    assert created.json()["missing_materials"] == ["PERMIT"]

    # A second revocation of the same decision (another event id) changes nothing more.
    again = as_approval(revoked)  # a new event id
    await produce(settings, APPROVAL_TOPIC, [again.to_record()])

    async def applied_by_delivery() -> bool:
        async with engine.connect() as conn:
            found = await conn.execute(
                text("SELECT 1 FROM delivery.inbox WHERE event_id = :id"), {"id": again.id}
            )
            return found.first() is not None

    await eventually(applied_by_delivery, what="delivery to take the second revocation")
    assert await verified_revoked() is not None
    later = await licence_records(settings, license_id, LicenseRevoked.TYPE)
    assert sum(header(r, "ce_type") == LicenseRevoked.TYPE for r in later) == 1


async def test_a_revocation_that_reaches_intake_before_its_issue_keeps_the_licence_revoked(
    licence_catalog: dict[str, Any],
    http: ActingClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    """license.v1 is compacted and intake reads it in a group of its own: the revocation of a
    licence may be read before its issue. Both produced here as delivery would."""
    holder = resident_id(rng)
    license_id = f"EL-E2E-EARLY-{uuid.uuid4().hex[:12].upper()}"
    now = datetime.now(UTC)
    revoked = LicenseRevoked(
        license_id=license_id, case_id="E2E-EARLY", reason="commitment_breached", revoked_at=now
    )
    issued = LicenseIssued(
        license_id=license_id,
        license_type=PERMIT,
        holder_id_number=holder,
        case_id="E2E-EARLY",
        item_code=ISSUE,
        issued_at=now,
        sha256="0" * 64,
    )
    records = [
        Envelope(
            type=event.TYPE,
            source="/tongban/delivery",
            subject=license_id,
            data=event.model_dump(mode="json"),
        ).to_record()
        for event in (revoked, issued)
    ]
    await produce(settings, LICENSE_TOPIC, records)

    async def listed() -> dict[str, Any] | None:
        return await held(http, holder, license_id)

    entry = await eventually(listed, what=f"{license_id} in intake's library")
    assert entry["status"] == "revoked" and entry["license_type"] == PERMIT
    assert entry["revoked_at"] is not None
