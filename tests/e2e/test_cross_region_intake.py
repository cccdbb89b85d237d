"""Cases across regions at intake (跨省通办, DESIGN.md §9), end to end on the real stack.

The partner region (澜州市, LZ, deploy/demo/partner-catalog.yaml) is simulated the way
MirrorMaker 2 would make it appear here under the alias `region9`: its catalog version on
`region9.catalog.v1` (a CatalogPublished record as its routing publishes it), and its
records to this region (云州市, YZ) on `region9.xregion.out.v1` with `ce_tocity` = YZ. This
region is the origin of a case taken at its counter for an LZ applicant, and the handling
region of a case LZ forwards here.
"""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from contracts.common import Applicant, Application, Delivery, Handover, Material
from contracts.events import (
    CATALOG_TOPIC,
    DELIVERY_TOPIC,
    INTAKE_TOPIC,
    XREGION_TOPIC,
    CaseAccepted,
    CaseClosed,
    CaseForwarded,
    CaseRated,
    CaseWithdrawn,
    CatalogPublished,
    Event,
)
from services.cli.applicants import resident_id
from services.cli.devclient import ActingClient
from services.common.auth import Role
from services.common.envelope import Envelope
from services.common.handover import (
    HandoverKeys,
    HandoverTrust,
    load_keys,
    sign_handover,
    verify_handover,
)
from services.common.kafka import TopicSpec, ensure_topics
from services.common.service import ServiceSettings
from services.operators.catalog_file import load_catalog_file
from tests.conftest import ROOT, eventually
from tests.e2e.conftest import INTAKE, ROUTING
from tests.kafka_helpers import header, produce, read_topic

pytestmark = pytest.mark.e2e

ALIAS = "region9"
PARTNER_CATALOG = ROOT / "deploy" / "demo" / "partner-catalog.yaml"
LZ, YZ = "LZ", "YZ"
CROSS = "CIV-0301"  # cross_region in LZ (its own materials: ID-CARD and PHOTO)
NOT_YET = "MKT-0001"  # cross_region in LZ, in force only from 2099
CITY_ONLY = "HOU-0301"  # an LZ item not offered across regions
ADOPTABLE = "SOC-0301"  # made cross_region in YZ for the cases LZ forwards here


def mirrored(topic: str) -> str:
    return f"{ALIAS}.{topic}"


def partner_catalog() -> dict[str, Any]:
    raw = load_catalog_file(PARTNER_CATALOG)
    for item in raw["items"]:
        # this test's own choice of what LZ offers across regions, whatever the demo file says
        item["scope"] = "cross_region" if item["code"] in (CROSS, NOT_YET) else "city"
        if item["code"] == NOT_YET:
            item["effective_from"] = "2099-01-01"
    return raw


def record(event: Event, *, source: str, subject: str, fromcity: str = LZ, tocity: str = YZ) -> Any:
    return Envelope(
        type=event.TYPE,
        source=source,
        subject=subject,
        data=event.model_dump(mode="json"),
        tocity=tocity,
        fromcity=fromcity,
    ).to_record()


@pytest.fixture(scope="module")
async def partner(catalog: dict[str, Any]) -> dict[str, Any]:
    """LZ known here: its catalog on the mirrored catalog topic, intake listing it; and this
    region's catalog with ADOPTABLE offered across regions."""
    settings = ServiceSettings()
    await ensure_topics(
        settings,
        [
            TopicSpec(mirrored(CATALOG_TOPIC), partitions=1, config={"cleanup.policy": "compact"}),
            TopicSpec(mirrored(XREGION_TOPIC)),
        ],
    )
    raw = partner_catalog()
    version = int(datetime.now(UTC).timestamp())  # newer than any earlier run's
    published = CatalogPublished(version=version, loaded_at=datetime.now(UTC), catalog=raw)
    await produce(
        settings,
        mirrored(CATALOG_TOPIC),
        [record(published, source="/tongban/routing", subject=f"{LZ}/catalog/{version}")],
    )
    own = copy.deepcopy(catalog)
    for item in own["items"]:
        if item["code"] == ADOPTABLE:
            item["scope"] = "cross_region"
    async with ActingClient(timeout=30) as client:
        answer = await client.post(f"{ROUTING}/v1/catalog", json=own)
        assert answer.status_code == 201, answer.text

        async def known() -> bool:
            partners = (await client.get(f"{INTAKE}/v1/partners")).json()
            items = (await client.get(f"{INTAKE}/v1/items")).json()
            return any(
                p["city_code"] == LZ and p["catalog_version"] == version for p in partners
            ) and any(i["code"] == ADOPTABLE and i["scope"] == "cross_region" for i in items)

        # intake looks for new partner topics every 30 s (kafka_metadata_max_age_ms)
        await eventually(known, timeout=90, interval=1, what="intake knows partner LZ")
    return raw


def lz_applicant_case(item: str = CROSS, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "item_code": item,
        "channel": "counter",
        "office_code": "YZ0101-SC",
        "applicant": {
            "category": "individual",
            "name": "异地申请人",
            "id_number": resident_id(random.Random(7)),
            "phone": "13800000000",
            "division_code": "LZ0101",
        },
        "materials": [{"code": "ID-CARD", "sha256": "a" * 64}, {"code": "PHOTO"}],
        "delivery": {"method": "counter_pickup"},
    }
    return body | overrides


# --------------------------------------------------------------------------- at the counter


async def test_partner_items_and_partners_are_listed(
    http: ActingClient, partner: dict[str, Any]
) -> None:
    listed = await http.get(f"{INTAKE}/v1/items", params={"city": LZ})
    assert listed.status_code == 200, listed.text
    assert [i["code"] for i in listed.json()] == [CROSS]  # NOT_YET is not in force
    assert listed.json()[0]["scope"] == "cross_region"
    (lz,) = [p for p in (await http.get(f"{INTAKE}/v1/partners")).json() if p["city_code"] == LZ]
    assert lz["name"] == "澜州市" and lz["cross_region_items"] == 1
    unknown = await http.get(f"{INTAKE}/v1/items", params={"city": "NOWHERE"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_partner"


async def test_a_partner_applicant_is_taken_at_a_counter_here_and_signed(
    http: ActingClient, partner: dict[str, Any]
) -> None:
    answer = await http.post(f"{INTAKE}/v1/cases", json=lz_applicant_case())
    assert answer.status_code == 201, answer.text
    taken = answer.json()
    assert taken["status"] == "submitted" and taken["missing_materials"] == []
    case_id = taken["case_id"]
    assert case_id.startswith(f"{YZ}-")
    # the preview reads the item where routing will: in the partner's catalog (rule 2)
    preview = taken["route_preview"]
    assert preview is not None, taken
    assert (preview["path"], preview["level"], preview["handled_by"]) == (
        "cross_region",
        "partner",
        LZ,
    )

    settings = ServiceSettings()

    async def submitted() -> Any:
        records = await read_topic(settings, INTAKE_TOPIC, idle=0.3)
        return next(
            (
                r
                for r in records
                if r.key == case_id.encode() and header(r, "ce_type") == "gov.case.submitted.v1"
            ),
            None,
        )

    found = await eventually(submitted, timeout=60, what=f"{case_id} submitted")
    data = Envelope.from_record(found.key, found.value, list(found.headers)).data
    application = Application.model_validate(data["application"])
    check = verify_handover(
        Handover.model_validate(data["handover"]),
        case_id=case_id,
        application=application,
        trust=HandoverTrust.dev(settings.handover_dev_seed.get_secret_value()),
    )
    assert check.ok, check.describe()


async def test_missing_materials_are_those_of_the_partners_item(
    http: ActingClient, partner: dict[str, Any]
) -> None:
    body = lz_applicant_case(materials=[{"code": "ID-CARD"}])
    answer = await http.post(f"{INTAKE}/v1/cases", json=body)
    assert answer.status_code == 201, answer.text
    assert answer.json()["missing_materials"] == ["PHOTO"]  # LZ's CIV-0301, not YZ's
    # completed against LZ's item too
    case_id = answer.json()["case_id"]
    completed = await http.post(
        f"{INTAKE}/v1/cases/{case_id}/materials", json={"materials": [{"code": "PHOTO"}]}
    )
    assert completed.status_code == 200, completed.text
    assert completed.json()["status"] == "submitted" and completed.json()["missing_materials"] == []


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda b: b | {"item_code": "NOPE-9999"}, "unknown_item"),
        (lambda b: b | {"item_code": NOT_YET}, "item_not_effective"),
        (lambda b: b | {"item_code": CITY_ONLY}, "not_cross_region"),
        (
            lambda b: (
                b | {"channel": "online", "office_code": None, "delivery": {"method": "electronic"}}
            ),
            "office_not_allowed",
        ),
        (lambda b: b | {"office_code": "LZ01-DC"}, "unknown_office"),
    ],
)
async def test_a_partner_applicant_is_refused_at_once(
    http: ActingClient,
    partner: dict[str, Any],
    change: Callable[[dict[str, Any]], dict[str, Any]],
    code: str,
) -> None:
    body = change(lz_applicant_case())
    answer = await http.post(f"{INTAKE}/v1/cases", json=body)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["code"] == code
    assert "澜州市（LZ）" in problem["detail"] and "(LZ)" in problem["detail"], problem["detail"]


# --------------------------------------------------------------------------- origin: B's story


async def test_the_handling_regions_events_end_the_case_in_the_origins_view(
    http: ActingClient, partner: dict[str, Any]
) -> None:
    answer = await http.post(f"{INTAKE}/v1/cases", json=lz_applicant_case())
    assert answer.status_code == 201, answer.text
    case_id = answer.json()["case_id"]
    now = datetime.now(UTC)
    deadline = date.today() + timedelta(days=10)
    accepted = CaseAccepted(
        case_id=case_id,
        department="LZ0101-CIV",
        accepted_at=now,
        deadline=deadline,
        time_limit_days=3,
        deferred_due=None,
    )
    closed = CaseClosed(case_id=case_id, outcome="approved", closed_at=now + timedelta(seconds=1))
    await produce(
        ServiceSettings(),
        mirrored(XREGION_TOPIC),
        [
            record(accepted, source="/tongban/approval", subject=case_id),
            record(closed, source="/tongban/delivery", subject=case_id),
        ],
    )

    async def ended() -> Any:
        view = (await http.get(f"{INTAKE}/v1/cases/{case_id}")).json()
        return view if view["status"] == "closed" and view["deadline"] else None

    view = await eventually(ended, timeout=60, what=f"{case_id} closed by LZ's events")
    assert view["deadline"] == deadline.isoformat()
    sources = {e["type"]: e["source"] for e in view["timeline"]}
    assert sources["gov.case.accepted.v1"] == "LZ:/tongban/approval"
    assert sources["gov.case.closed.v1"] == "LZ:/tongban/delivery"
    assert sources["gov.case.submitted.v1"] == "/tongban/intake"  # this region's own


# --------------------------------------------------------------------------- handling region


def forwarded_case(*, keys: HandoverKeys, alter: bool = False) -> CaseForwarded:
    """A case LZ's counter LZ01-DC took for a YZ applicant, its handover signed by `keys`
    (`alter`: the application changed after signing)."""
    case_id = f"{LZ}-{date.today():%Y%m%d}-{uuid.uuid4().hex[:10].upper()}"
    now = datetime.now(UTC)
    application = Application(
        item_code=ADOPTABLE,
        channel="counter",
        office_code="LZ01-DC",
        applicant=Applicant(
            category="individual",
            name="异地申请人",
            id_number=resident_id(random.Random(11)),
            phone="13900000000",
            division_code="YZ0101",
        ),
        materials=[Material(code="ID-CARD", sha256="b" * 64)],
        delivery=Delivery(method="electronic"),
    )
    handover = sign_handover(
        case_id=case_id, application=application, office_code="LZ01-DC", signed_at=now, keys=keys
    )
    if alter:
        application = application.model_copy(
            update={"materials": [Material(code="ID-CARD", sha256="c" * 64)]}
        )
    return CaseForwarded(
        case_id=case_id,
        from_city=LZ,
        to_city=YZ,
        item_code=ADOPTABLE,
        catalog_version=1,
        application=application,
        submitted_at=now,
        handover=handover,
        forwarded_at=now,
    )


async def events_of(case_id: str, topic: str, event_type: str, *, at_least: int = 1) -> list[Any]:
    async def found() -> list[Any] | None:
        records = await read_topic(ServiceSettings(), topic, idle=0.3)
        hits = [
            r for r in records if r.key == case_id.encode() and header(r, "ce_type") == event_type
        ]
        return hits if len(hits) >= at_least else None

    hits: list[Any] = await eventually(found, timeout=60, what=f"{event_type} of {case_id}")
    return hits


async def test_a_forwarded_case_is_adopted_once_and_the_origins_withdrawal_imported(
    http: ActingClient, partner: dict[str, Any]
) -> None:
    settings = ServiceSettings()
    case = forwarded_case(keys=load_keys(settings))
    sent = [record(case, source="/tongban/routing", subject=case.case_id) for _ in range(2)]
    await produce(settings, mirrored(XREGION_TOPIC), sent)  # forwarded twice: adopted once

    (submitted,) = await events_of(case.case_id, INTAKE_TOPIC, "gov.case.submitted.v1")
    data = Envelope.from_record(submitted.key, submitted.value, list(submitted.headers)).data
    assert data["origin"]["city_code"] == LZ and data["origin"]["office_code"] == "LZ01-DC"
    assert data["application"]["office_code"] == "YZ-MC"
    assert data["handover"]["office_code"] == "YZ-MC"
    view = await http.get(f"{INTAKE}/v1/cases/{case.case_id}", headers=http.headers_for(Role.admin))
    assert view.status_code == 200, view.text
    assert view.json()["office_code"] == "YZ-MC"

    withdrawn = CaseWithdrawn(
        case_id=case.case_id, reason="申请人撤回", withdrawn_at=datetime.now(UTC)
    )
    relayed = Envelope(
        type=withdrawn.TYPE,
        source="/tongban/intake",
        subject=case.case_id,
        data=withdrawn.model_dump(mode="json"),
        tocity=YZ,
        fromcity=LZ,
    )
    rated = CaseRated(case_id=case.case_id, rating="satisfied", rated_at=datetime.now(UTC))
    # the withdrawal twice (MirrorMaker delivers at least once), then a step on its heels: once
    # the step is imported, the copy was applied (one partition: in order) and made nothing
    await produce(
        settings,
        mirrored(XREGION_TOPIC),
        [
            relayed.to_record(),
            relayed.to_record(),
            record(rated, source="/tongban/delivery", subject=case.case_id),
        ],
    )
    (step,) = await events_of(case.case_id, DELIVERY_TOPIC, CaseRated.TYPE)
    assert header(step, "ce_fromcity") == LZ
    (imported,) = await events_of(case.case_id, INTAKE_TOPIC, CaseWithdrawn.TYPE)
    assert header(imported, "ce_id") == relayed.id  # unchanged
    assert (
        header(imported, "ce_fromcity") == LZ and header(imported, "ce_source") == "/tongban/intake"
    )

    async def shown() -> Any:
        body = (
            await http.get(
                f"{INTAKE}/v1/cases/{case.case_id}", headers=http.headers_for(Role.admin)
            )
        ).json()
        entries = [e for e in body["timeline"] if e["type"] == CaseWithdrawn.TYPE]
        return entries if entries else None

    (entry,) = await eventually(shown, timeout=60, what="the imported withdrawal in the timeline")
    assert entry["source"] == "LZ:/tongban/intake"
    # still one submission of the case here
    assert len(await events_of(case.case_id, INTAKE_TOPIC, "gov.case.submitted.v1")) == 1


@pytest.mark.parametrize("how", ["forged", "altered"])
async def test_a_handover_that_does_not_verify_is_refused_back_to_the_origin(
    http: ActingClient, partner: dict[str, Any], how: str
) -> None:
    settings = ServiceSettings()
    if how == "forged":
        # signed with another key under the office's own key id: the signature fails
        real = load_keys(settings)
        case = forwarded_case(keys=HandoverKeys.dev("not the region's seed"))
        case = case.model_copy(
            update={"handover": case.handover.model_copy(update={"key_id": real.key_id("LZ01-DC")})}
        )
    else:
        case = forwarded_case(keys=load_keys(settings), alter=True)
    await produce(
        settings,
        mirrored(XREGION_TOPIC),
        [record(case, source="/tongban/routing", subject=case.case_id)],
    )
    (answer,) = await events_of(case.case_id, XREGION_TOPIC, "gov.case.adoption_refused.v1")
    assert header(answer, "ce_tocity") == LZ and header(answer, "ce_fromcity") == YZ
    refusal = Envelope.from_record(answer.key, answer.value, list(answer.headers)).data
    assert refusal["code"] == "handover_invalid" and refusal["to_city"] == LZ
    reason = "bad_signature" if how == "forged" else "digest_mismatch"
    assert reason in refusal["reason"]

    metrics = (await http.get(f"{INTAKE}/metrics")).text
    assert 'tongban_xregion_refused_total{code="handover_invalid"}' in metrics
    rows = await http.get(f"{INTAKE}/v1/xregion/refused", headers=http.headers_for(Role.operator))
    assert rows.status_code == 200, rows.text
    (row,) = [r for r in rows.json() if r["case_id"] == case.case_id]
    assert row["code"] == "handover_invalid" and row["from_city"] == LZ
    clerk = await http.get(
        f"{INTAKE}/v1/xregion/refused", headers=http.headers_for(Role.clerk, "YZ-MC")
    )
    assert clerk.status_code == 403
    missing = await http.get(
        f"{INTAKE}/v1/cases/{case.case_id}", headers=http.headers_for(Role.admin)
    )
    assert missing.status_code == 404  # not adopted
