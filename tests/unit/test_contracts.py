"""The published contracts (DESIGN.md §4): generated files up to date, AsyncAPI valid, and the
JSON Schemas usable by other systems (a plain jsonschema validator accepts real events and
refuses broken ones)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
from jsonschema import Draft7Validator, Draft202012Validator, ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT7

from contracts import events, generate, registry
from contracts.events import (
    APPROVAL_TOPIC,
    BUNDLE_TOPIC,
    CASE_TOPICS,
    CATALOG_TOPIC,
    DLQ_REPLAYS_TOPIC,
    DLQ_TOPIC,
    EVENT_TYPES,
    LICENSE_TOPIC,
    ROUTING_TOPIC,
    XREGION_TOPIC,
    CaseApproved,
    CaseDenied,
    CaseRouted,
    DecisionOutcome,
)
from services.common.consumer import Subscription
from services.common.service import ServiceRuntime, ServiceSettings
from services.operators import dead_letters

pytestmark = pytest.mark.unit

REGENERATE = "run `python -m contracts.generate` and commit the result"

TIME = "2026-11-29T10:03:04.500000+08:00"
CASE_ID = "HC-2026-000001"
BUNDLE_ID = "HC-B-20261129-7F3A2C91D0"

APPLICATION: dict[str, Any] = {
    "item_code": "MKT-FOOD-01",
    "channel": "counter",
    "office_code": "OFF-310101001",
    "applicant": {
        "category": "individual",
        "name": "张三",
        "id_number": "11010519491231002X",
        "phone": "13800000000",
        "division_code": "310101001",
    },
    "materials": [
        {"code": "ID-CARD", "sha256": "0" * 64},
        {"code": "BIZ-LICENSE", "e_license_id": "EL-1"},
    ],
    "delivery": {"method": "postal", "address": "上海市黄浦区人民大道 200 号"},
}
ROUTE: dict[str, Any] = {
    "path": "delegated",
    "level": "street",
    "handled_by": "HP-S01-MKT",
    "same_city": True,
    "rule": "R2 delegated: the item is delegated to street level",
    "catalog_version": 3,
    "explanation": "委托街道办理",
    "time_limit_days": 10,
    "instant": False,
    "intake_office": "OFF-310101001",
    "entrusted_receiver": None,
}
ITEM: dict[str, Any] = {
    "code": "MKT-FOOD-01",
    "name": "食品经营许可",
    "instant": False,
    "time_limit_days": 10,
    "result_kind": "licence",
    "e_license": True,
}
OUTCOME: dict[str, Any] = {
    "case_id": CASE_ID,
    "department": "HP-S01-MKT",
    "decided_at": TIME,
    "reason": None,
    "item": ITEM,
    "delivery_method": "postal",
    "delivery_address": "上海市黄浦区人民大道 200 号",
    "intake_office": "OFF-310101001",
    "applicant_name": "张三",
    "applicant_id_number": "11010519491231002X",
}

# One valid event data per type, as a producer would put it in the record value.
SAMPLES: dict[str, dict[str, Any]] = {
    "gov.case.notified.v1": {
        "case_id": CASE_ID,
        "application": APPLICATION,
        "missing_materials": ["LEASE"],
        "notified_at": TIME,
    },
    "gov.case.submitted.v1": {"case_id": CASE_ID, "application": APPLICATION, "submitted_at": TIME},
    "gov.case.supplemented.v1": {
        "case_id": CASE_ID,
        "materials": [{"code": "LEASE", "sha256": "a" * 64}],
        "supplemented_at": TIME,
    },
    "gov.case.withdrawn.v1": {"case_id": CASE_ID, "reason": "moved", "withdrawn_at": TIME},
    "gov.case.routed.v1": {
        "case_id": CASE_ID,
        "route": ROUTE,
        "item": ITEM,
        "application": APPLICATION,
        "submitted_at": TIME,
    },
    "gov.case.route_failed.v1": {
        "case_id": CASE_ID,
        "failure": {"code": "no_department", "explanation": "no market department at street"},
        "rule": "R2 delegated",
        "catalog_version": None,
        "application": APPLICATION,
        "submitted_at": TIME,
    },
    "gov.case.decision.v1": {
        "case_id": CASE_ID,
        "department": "HP-S01-MKT",
        "decision": "request_supplement",
        "reason": "lease expired",
        "legal_basis": None,
        "missing_materials": ["LEASE"],
    },
    "gov.case.accepted.v1": {
        "case_id": CASE_ID,
        "department": "HP-S01-MKT",
        "accepted_at": TIME,
        "deadline": "2026-12-11",
        "time_limit_days": 10,
    },
    "gov.case.supplement_requested.v1": {
        "case_id": CASE_ID,
        "department": "HP-S01-MKT",
        "missing_materials": ["LEASE"],
        "reason": None,
    },
    "gov.case.approved.v1": OUTCOME,
    "gov.case.denied.v1": {**OUTCOME, "reason": "not eligible", "legal_basis": "《食品安全法》"},
    "gov.case.sla_warning.v1": {
        "case_id": CASE_ID,
        "department": "HP-S01-MKT",
        "deadline": "2026-12-11",
        "elapsed_ratio": 0.8,
    },
    "gov.case.overdue.v1": {
        "case_id": CASE_ID,
        "department": "HP-S01-MKT",
        "deadline": "2026-12-11",
    },
    "gov.case.deadline_changed.v1": {
        "case_id": CASE_ID,
        "department": "HP-S01-MKT",
        "deadline": "2026-12-15",
        "reason": "supplemented",
    },
    "gov.case.deadline_unknown.v1": {
        "case_id": CASE_ID,
        "department": "HP-S01-MKT",
        "accepted_on": "2027-12-20",
        "time_limit_days": 20,
        "covers_until": "2027-12-31",
    },
    "gov.case.handover_refused.v1": {
        "case_id": CASE_ID,
        "department": "M-MKT",
        "office_code": "HP01-DC",
        "reason": "digest does not match the data received",
    },
    "gov.case.forwarded.v1": {
        "case_id": CASE_ID,
        "from_city": "HP",
        "to_city": "LZ",
        "item_code": "MKT-0001",
        "catalog_version": 3,
        "application": APPLICATION,
        "submitted_at": "2026-12-10T09:00:00+08:00",
        "handover": {
            "office_code": "HP01-DC",
            "signed_at": "2026-12-10T09:00:00+08:00",
            "digest": "0" * 64,
            "algorithm": "ed25519",
            "key_id": "HP01-DC:0123abcd",
            "signature": "c2lnbmF0dXJl",
        },
        "forwarded_at": "2026-12-10T09:00:01+08:00",
    },
    "gov.case.adoption_refused.v1": {
        "case_id": CASE_ID,
        "from_city": "LZ",
        "to_city": "HP",
        "code": "handover_invalid",
        "reason": "the signature does not verify against HP01-DC's partner key",
        "refused_at": "2026-12-10T09:00:02+08:00",
    },
    "gov.case.followup_opened.v1": {
        "case_id": CASE_ID,
        "department": "HP-S01-MKT",
        "rating": "dissatisfied",
        "deadline": "2026-12-20",
        "opened_at": "2026-12-10T09:00:00+08:00",
    },
    "gov.case.followup_answered.v1": {
        "case_id": CASE_ID,
        "department": "HP-S01-MKT",
        "answer": "已电话回访并说明",
        "answered_at": "2026-12-11T09:00:00+08:00",
    },
    "gov.case.result_issued.v1": {
        "case_id": CASE_ID,
        "result": {
            "kind": "licence",
            "license_id": "JY31010100001",
            "sha256": "b" * 64,
            "title": "食品经营许可证",
        },
        "issued_at": TIME,
    },
    "gov.case.delivered.v1": {
        "case_id": CASE_ID,
        "method": "postal",
        "delivered_at": TIME,
        "tracking_number": "SF1234567890",
        "office_code": None,
    },
    "gov.case.closed.v1": {"case_id": CASE_ID, "outcome": "approved", "closed_at": TIME},
    "gov.case.rated.v1": {
        "case_id": CASE_ID,
        "rating": "very_satisfied",
        "comment": "快",
        "rated_at": TIME,
    },
    "gov.case.approval_held.v1": {
        "case_id": CASE_ID,
        "department": "HP-S01-MKT",
        "decided_at": TIME,
        "outstanding": ["lease"],
    },
    "gov.case.terminated.v1": {
        "case_id": CASE_ID,
        "department": "HP-S01-MKT",
        "reason": "deferred_materials_lapsed",
        "terminated_at": TIME,
        "outstanding": ["lease"],
    },
    "gov.case.revoked.v1": {
        "case_id": CASE_ID,
        "department": "HP-S01-MKT",
        "reason": "commitment_breached",
        "revoked_at": TIME,
        "note": "承诺的场地证明不实",
    },
    "gov.case.verified.v1": {
        "case_id": CASE_ID,
        "department": "HP-S01-MKT",
        "verified_at": TIME,
        "note": "现场核查: 场地与承诺一致",
    },
    "gov.license.issued.v1": {
        "license_id": "EL-3101-0001",
        "license_type": "food_business",
        "holder_id_number": "91310000MA1FL4T22B",
        "case_id": CASE_ID,
        "item_code": "MKT-0001",
        "issued_at": TIME,
        "sha256": "a" * 64,
    },
    "gov.license.revoked.v1": {
        "license_id": "EL-3101-0001",
        "case_id": CASE_ID,
        "reason": "commitment_breached",
        "revoked_at": TIME,
    },
    "gov.bundle.submitted.v1": {
        "bundle_id": BUNDLE_ID,
        "bundle_code": "B-RESTAURANT",
        "bundle_name": "开办餐饮店一件事",
        "lead": "HP-MKT",
        "time_limit_days": 15,
        "channel": "counter",
        "office_code": "HP01-DC",
        "answers": {"area_over_300": True},
        "members": [
            {"case_id": CASE_ID, "item_code": "MKT-0101", "status": "submitted"},
            {
                "case_id": CASE_ID + "B",
                "item_code": "HLT-0102",
                "status": "waiting",
                "after": [CASE_ID],
            },
        ],
        "excluded": ["FIRE-0101"],
        "delivery_method": "counter_pickup",
        "submitted_at": TIME,
    },
    "gov.bundle.withdrawn.v1": {
        "bundle_id": BUNDLE_ID,
        "withdrawn_members": [CASE_ID],
        "reason": "moved",
        "withdrawn_at": TIME,
    },
    "gov.bundle.delivered.v1": {
        "bundle_id": BUNDLE_ID,
        "method": "counter_pickup",
        "delivered_at": TIME,
        "office_code": "HP01-DC",
        "results": [
            {
                "case_id": CASE_ID,
                "item_code": "MKT-0101",
                "outcome": "approved",
                "result": {"kind": "licence", "title": "营业执照"},
            },
            {
                "case_id": CASE_ID + "B",
                "item_code": "HLT-0102",
                "outcome": "withdrawn",
                "result": None,
            },
        ],
    },
    "gov.bundle.closed.v1": {"bundle_id": BUNDLE_ID, "closed_at": TIME, "members": [CASE_ID]},
    "gov.bundle.rated.v1": {
        "bundle_id": BUNDLE_ID,
        "rating": "satisfied",
        "rated_at": TIME,
        "departments": ["HP01-MKT", "HP-FIRE"],
    },
    "gov.bundle.sla_warning.v1": {
        "bundle_id": BUNDLE_ID,
        "lead": "HP-MKT",
        "deadline": "2026-12-18",
        "elapsed_ratio": 0.5,
        "open_members": [CASE_ID],
    },
    "gov.bundle.overdue.v1": {
        "bundle_id": BUNDLE_ID,
        "lead": "HP-MKT",
        "deadline": "2026-12-18",
        "open_members": [CASE_ID],
    },
    "gov.catalog.published.v1": {
        "version": 3,
        "loaded_at": TIME,
        "catalog": {"city": {"code": "3101", "name": "上海市"}, "items": []},
    },
}


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return generate.render()


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    return registry.asyncapi_document()


# -- (a) drift ---------------------------------------------------------------------------------


def test_checked_in_contracts_are_generated_from_the_models(generated: dict[str, str]) -> None:
    stale = generate.stale_files(generated)
    assert not stale, (
        "contracts/ is out of date with the models (differs, missing or left over: "
        f"{', '.join(stale)}): {REGENERATE}"
    )


def test_generation_is_deterministic(generated: dict[str, str]) -> None:
    assert generate.render() == generated


def test_check_mode_reports_a_stale_file(generated: dict[str, str], tmp_path, capsys) -> None:
    generate.write(generated, tmp_path)
    assert generate.stale_files(generated, tmp_path) == []
    (tmp_path / "schemas" / "gov.case.routed.v1.json").write_text("{}\n")
    (tmp_path / "schemas" / "gov.case.gone.v1.json").write_text("{}\n")
    assert generate.stale_files(generated, tmp_path) == [
        "schemas/gov.case.gone.v1.json",
        "schemas/gov.case.routed.v1.json",
    ]
    assert generate.write(generated, tmp_path) == [
        "schemas/gov.case.gone.v1.json",
        "schemas/gov.case.routed.v1.json",
    ]
    assert generate.stale_files(generated, tmp_path) == []
    assert not (tmp_path / "schemas" / "gov.case.gone.v1.json").exists()


# -- (b) AsyncAPI validity ---------------------------------------------------------------------


def test_asyncapi_document_is_valid_asyncapi_3(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    generate.validate_asyncapi(asyncapi)


def test_the_asyncapi_validator_catches_an_invalid_document(asyncapi: dict[str, Any]) -> None:
    broken = copy.deepcopy(asyncapi)
    broken["operations"]["intake.send.case.intake.v1"]["action"] = "publish"  # AsyncAPI 2 verb
    with pytest.raises(ValidationError):
        generate.validate_asyncapi(broken)
    assert (
        registry.asyncapi_validator()
        .META_SCHEMA["$schema"]
        .startswith("http://json-schema.org/draft-07/schema")
    )


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return own + [ref for item in value.values() for ref in _refs(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in _refs(item)]
    return []


def test_every_asyncapi_reference_resolves(asyncapi: dict[str, Any]) -> None:
    refs = _refs(asyncapi)
    assert refs
    for ref in refs:
        _resolve(asyncapi, ref)


def test_operations_follow_the_design(asyncapi: dict[str, Any]) -> None:
    ops = asyncapi["operations"]

    def who(action: str, topic: str) -> set[str]:
        return {
            op["tags"][0]["name"]
            for op in ops.values()
            if op["action"] == action and op["channel"]["$ref"] == f"#/channels/{topic}"
        }

    assert who("send", "case.intake.v1") == {"intake"}
    assert who("send", "case.routing.v1") == {"routing"}
    assert who("send", "case.decisions.v1") == {"department systems"}
    assert who("send", "case.approval.v1") == {"approval"}
    assert who("send", "case.delivery.v1") == {"delivery"}
    assert who("send", CATALOG_TOPIC) == {"routing"}
    # approval: withdrawals and supplements, ratings; delivery: members withdrawn (§8)
    assert who("receive", "case.intake.v1") == {"routing", "intake", "approval", "delivery"}
    # routing reads every case topic too: it relays the cases across regions (§9)
    assert who("receive", "case.routing.v1") == {"approval", "intake", "routing"}
    assert who("receive", "case.decisions.v1") == {"approval", "intake", "routing"}
    assert who("receive", "case.approval.v1") == {"delivery", "intake", "routing"}
    assert who("receive", "case.delivery.v1") == {"intake", "approval", "routing"}
    # bundle.v1: each service writes the bundle's steps it owns, and follows the others'.
    assert who("send", BUNDLE_TOPIC) == {"intake", "approval", "delivery"}
    assert who("receive", BUNDLE_TOPIC) == {"intake", "approval", "delivery"}
    assert who("send", DLQ_TOPIC) == {"intake", "routing", "approval", "delivery"}
    assert who("receive", DLQ_TOPIC) == {"operators"}
    assert who("send", DLQ_REPLAYS_TOPIC) == {"operators"}
    assert who("receive", DLQ_REPLAYS_TOPIC) == {"operators"}
    for op in ops.values():
        channel = op["channel"]["$ref"].removeprefix("#/channels/")
        for message in op["messages"]:
            assert message["$ref"].startswith(f"#/channels/{channel}/messages/")


# -- (c) coverage ------------------------------------------------------------------------------


def test_every_event_type_has_a_message_a_channel_and_a_schema(asyncapi: dict[str, Any]) -> None:
    messages = asyncapi["components"]["messages"]
    assert registry.event_types() == sorted(EVENT_TYPES)
    for event_type, event in EVENT_TYPES.items():
        message = messages[event_type]
        assert message["contentType"] == "application/json"
        assert message["headers"]["properties"]["ce_type"]["const"] == event_type
        assert {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject"} <= set(
            message["headers"]["required"]
        )
        assert message["bindings"]["kafka"]["key"]["type"] == "string"
        payload = _resolve(asyncapi, message["payload"]["$ref"])
        assert payload["title"] == event.model.__name__
        channel = asyncapi["channels"][event.topic]
        assert channel["address"] == event.topic
        assert event_type in channel["messages"]
        schema = registry.schema_for(event_type)
        assert schema["$id"] == f"https://tongban.example/schemas/{event_type}.json"
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(asyncapi["channels"]) == {
        *CASE_TOPICS,
        CATALOG_TOPIC,
        LICENSE_TOPIC,
        BUNDLE_TOPIC,
        XREGION_TOPIC,
        DLQ_TOPIC,
        DLQ_REPLAYS_TOPIC,
        "dept.cases.v1",
    }
    assert asyncapi["channels"]["dept.cases.v1"]["address"] == "dept.{department}.cases.v1"
    routed = messages["gov.case.routed.v1"]["headers"]
    assert "ce_handledby" in routed["required"]
    assert {"traceparent", "ce_traceparent"} <= set(routed["properties"])
    dead_letter = _resolve(
        asyncapi, asyncapi["channels"][DLQ_TOPIC]["messages"]["DeadLetter"]["$ref"]
    )
    assert {"dlq_reason", "dlq_source"} <= set(dead_letter["headers"]["required"])


def test_unknown_event_type_has_no_schema() -> None:
    with pytest.raises(KeyError, match="gov.case.nope.v1"):
        registry.schema_for("gov.case.nope.v1")


def test_rest_bodies_have_schemas() -> None:
    for name in ("SubmissionRequest", "SubmissionResponse", "CaseView", "DecisionRequest"):
        schema = registry.rest_schema_for(name)
        assert schema["title"] == name
        Draft202012Validator.check_schema(schema)
    assert set(registry.rest_schema_for("SubmissionResponse")["required"]) == {
        "case_id",
        "status",
        "missing_materials",
        "route_preview",
    }


# -- (d) the schemas work for other systems ----------------------------------------------------


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES)


def test_each_event_class_carries_its_one_type_and_topic() -> None:
    """Declared once with `@event`: services emit and subscribe by class, the registry (and
    with it the schemas and the AsyncAPI document) is derived from the same declarations."""
    for event_type, spec in EVENT_TYPES.items():
        assert (spec.model.TYPE, spec.model.TOPIC) == (event_type, spec.topic)
    assert len({spec.model for spec in EVENT_TYPES.values()}) == len(EVENT_TYPES)
    with pytest.raises(TypeError, match="declared twice"):
        events.event("gov.case.routed.v1", ROUTING_TOPIC, "routing", "again")(CaseRouted)


def test_a_consumer_is_wired_by_class_to_the_types_on_its_topics(
    runtime: ServiceRuntime,
) -> None:
    async def handle(session: Any, envelope: Any, payload: Any) -> None:
        pass

    runner = runtime.consume(APPROVAL_TOPIC, subscriptions={CaseApproved: handle})
    runtime.consumers.remove(runner)
    assert runner.subscriptions == {CaseApproved.TYPE: Subscription(handle, CaseApproved)}
    assert CaseDenied.TYPE in runner.ignored_types
    with pytest.raises(ValueError, match="CaseRouted not on case.approval.v1"):
        runtime.consume(APPROVAL_TOPIC, subscriptions={CaseRouted: handle})


def test_only_a_declared_event_class_is_emitted(runtime: ServiceRuntime) -> None:
    """DecisionOutcome is the base of approved and denied, not an event of its own."""
    outcome = DecisionOutcome.model_validate(SAMPLES[CaseApproved.TYPE])
    with pytest.raises(TypeError, match="DecisionOutcome is not an event"):
        runtime.envelope(outcome, handledby="HP-S01-MKT")


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_a_valid_event_passes_and_a_broken_one_fails(event_type: str) -> None:
    sample = SAMPLES[event_type]
    model = EVENT_TYPES[event_type].model
    # What a tongban producer writes (the model's JSON) is what the schema accepts.
    produced = model.model_validate(sample).model_dump(mode="json")
    schema = registry.schema_for(event_type)
    validator = Draft202012Validator(schema, format_checker=registry.FORMAT_CHECKER)
    validator.validate(sample)
    validator.validate(produced)
    registry.validate_event(event_type, sample)

    for field in schema["required"]:
        broken = {k: v for k, v in sample.items() if k != field}
        with pytest.raises(ValidationError, match=f"'{field}' is a required property"):
            validator.validate(broken)
    with pytest.raises(ValidationError, match="Additional properties"):
        validator.validate({**sample, "unexpected": 1})


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_asyncapi_payload_schemas_accept_the_same_events(
    asyncapi: dict[str, Any], event_type: str
) -> None:
    """The payloads inlined in the AsyncAPI document (draft-07 dialect) resolve and agree."""
    message = asyncapi["components"]["messages"][event_type]
    root = {"components": asyncapi["components"]}
    resource = DRAFT7.create_resource(root)
    validator = Draft7Validator(
        {"$ref": "urn:asyncapi" + message["payload"]["$ref"]},
        registry=Registry().with_resource("urn:asyncapi", resource),
    )
    validator.validate(SAMPLES[event_type])
    required = _resolve(asyncapi, message["payload"]["$ref"])["required"]
    with pytest.raises(ValidationError):
        validator.validate({k: v for k, v in SAMPLES[event_type].items() if k != required[0]})


def test_nested_violations_and_formats_are_caught() -> None:
    routed = copy.deepcopy(SAMPLES["gov.case.routed.v1"])
    routed["route"]["path"] = "teleported"
    with pytest.raises(ValidationError, match="teleported"):
        registry.validate_event("gov.case.routed.v1", routed)

    no_offset = {**SAMPLES["gov.case.closed.v1"], "closed_at": "2026-11-29T10:03:04"}
    with pytest.raises(ValidationError, match="date-time"):
        registry.validate_event("gov.case.closed.v1", no_offset)
    bad_day = {**SAMPLES["gov.case.overdue.v1"], "deadline": "2026-02-30"}
    with pytest.raises(ValidationError, match="date"):
        registry.validate_event("gov.case.overdue.v1", bad_day)
    registry.validate_event(
        "gov.case.closed.v1", {**SAMPLES["gov.case.closed.v1"], "closed_at": "2026-11-29T02:03:04Z"}
    )


# -- (e) what the services write is what the document declares ----------------------------------


def _payload_validator(asyncapi: dict[str, Any], ref: str) -> Draft7Validator:
    resource = DRAFT7.create_resource({"components": asyncapi["components"]})
    return Draft7Validator(
        {"$ref": "urn:asyncapi" + ref}, registry=Registry().with_resource("urn:asyncapi", resource)
    )


@pytest.fixture(scope="module")
def runtime() -> ServiceRuntime:
    # Builds no connection: only its envelope() is used.
    return ServiceRuntime(ServiceSettings(service="contracts"))


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_ce_handledby_is_declared_on_every_message_that_carries_it(
    asyncapi: dict[str, Any], runtime: ServiceRuntime, event_type: str
) -> None:
    """The record headers a service writes fit the message's headers schema, which requires
    `ce_handledby` exactly on the types that carry it; the runtime refuses to emit one of
    those types without it (or another type with it), so the document cannot drift."""
    spec = EVENT_TYPES[event_type]
    payload = spec.model.model_validate(SAMPLES[event_type])
    sample = SAMPLES[event_type]
    subject = sample.get("license_id") or (
        None if "case_id" in sample or "bundle_id" in sample else "3101/catalog/7"
    )
    department = "HP-S01-MKT" if spec.handledby else None
    topic, envelope = runtime.envelope(payload, subject=subject, handledby=department)
    assert (topic, envelope.type) == (spec.topic, event_type)  # from the payload's class
    _key, _value, raw = envelope.to_record()
    headers = {name: value.decode() for name, value in raw}
    declared = asyncapi["components"]["messages"][event_type]["headers"]
    Draft7Validator(declared).validate(headers)
    assert ("ce_handledby" in declared["required"]) == spec.handledby
    assert ("ce_handledby" in headers) == spec.handledby
    if spec.handledby:
        with pytest.raises(ValidationError, match="ce_handledby"):
            Draft7Validator(declared).validate({**headers, "ce_handledby": ""})
    with pytest.raises(TypeError, match="ce_handledby"):
        runtime.envelope(
            payload,
            subject=subject,
            handledby=None if spec.handledby else "HP-S01-MKT",
        )
    assert {t for t, e in EVENT_TYPES.items() if e.handledby} >= {
        "gov.case.routed.v1",
        "gov.case.accepted.v1",
        "gov.case.overdue.v1",
    }


class SentRecords:
    """A plain stand-in for AIOKafkaProducer.send_and_wait: keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    async def send_and_wait(
        self,
        topic: str,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> SimpleNamespace:
        self.sent.append((topic, key, value, headers or []))
        return SimpleNamespace(partition=1, offset=len(self.sent))


async def test_a_replay_is_recorded_as_the_document_declares(asyncapi: dict[str, Any]) -> None:
    letter = dead_letters.DeadLetter(
        topic=DLQ_TOPIC,
        partition=2,
        offset=41,
        timestamp_ms=int(datetime(2026, 11, 29, tzinfo=UTC).timestamp() * 1000),
        key=CASE_ID.encode(),
        value=b'{"case_id": "HC-2026-000001"}',
        headers=(
            ("ce_id", b"e-1"),
            ("ce_type", b"gov.case.routed.v1"),
            ("ce_subject", CASE_ID.encode()),
            ("dlq_reason", b"handler failed"),
            ("dlq_source", b"approval/approval-routing"),
            ("dlq_topic", b"case.routing.v1"),
            ("dlq_partition", b"0"),
            ("dlq_offset", b"9"),
        ),
    )
    producer = SentRecords()
    await dead_letters.replay(cast(Any, producer), letter, operator="ops-1")
    (original, *_), (topic, key, value, headers) = producer.sent
    assert original == "case.routing.v1"

    channel = asyncapi["channels"][DLQ_REPLAYS_TOPIC]
    assert channel["address"] == topic == DLQ_REPLAYS_TOPIC
    assert (
        channel["bindings"]["kafka"]["partitions"] == dead_letters.replays_topic_spec().partitions
    )
    message = _resolve(asyncapi, channel["messages"]["ReplayRecord"]["$ref"])
    Draft7Validator(message["headers"]).validate({k: v.decode() for k, v in headers})
    assert key == dead_letters.replay_key(DLQ_TOPIC, 2, 41) == b"case.dlq.v1/2/41"
    record = json.loads(value or b"")
    payload = _payload_validator(asyncapi, message["payload"]["$ref"])
    payload.validate(record)
    assert record["operator"] == "ops-1" and record["event_id"] == "e-1"
    with pytest.raises(ValidationError):
        payload.validate({k: v for k, v in record.items() if k != "replayed_to_offset"})
