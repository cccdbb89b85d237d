"""Department isolation: topic names, the department copy of a routed case, the healer that
creates missing topics, and the broker ACLs in deploy/kubernetes/kafka-users.yaml."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from contracts.events import CASE_TOPICS, CATALOG_TOPIC, DECISIONS_TOPIC, DLQ_TOPIC, CaseSubmitted
from services.common.department_topics import DepartmentTopics, department_copy_rows
from services.common.envelope import Envelope
from services.common.kafka import (
    MAX_TOPIC_NAME,
    department_topic,
    department_topics,
    standard_topics,
    topic_safe_code,
)
from services.common.service import ServiceRuntime, ServiceSettings
from services.common.settings import CommonSettings
from services.policy.routing_rules import route_case
from services.routing.handlers import department_codes, effect_of, emit_effect
from tests.unit.catalog_data import TODAY, application, index

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
USERS_FILE = ROOT / "deploy" / "kubernetes" / "kafka-users.yaml"
LEGAL = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
STANDARD = {spec.name for spec in standard_topics()}
SERVICES = ("intake", "routing", "approval", "delivery")


# -- topic names -----------------------------------------------------------------------------


def test_ordinary_codes_are_kept_as_they_are() -> None:
    assert department_topic("YZ01-MKT") == "dept.YZ01-MKT.cases.v1"
    assert department_topic("m-mkt") == "dept.m-mkt.cases.v1"  # case kept
    assert department_topic("M-MKT") != department_topic("m-mkt")


def test_other_characters_are_escaped_as_utf8_hex() -> None:
    assert topic_safe_code("A.B") == "A_2EB"
    assert topic_safe_code("A_B") == "A_5FB"
    assert topic_safe_code("A/B C") == "A_2FB_20C"
    assert topic_safe_code("市-01") == "_E5_B8_82-01"


def test_an_empty_code_has_no_topic() -> None:
    with pytest.raises(ValueError):
        department_topic("")


def test_a_code_too_long_for_kafka_ends_with_its_hash() -> None:
    long_code = "市场监督管理局" * 9  # 63 characters, 567 once escaped
    topic = department_topic(long_code)
    assert len(topic) <= MAX_TOPIC_NAME and LEGAL.match(topic)
    assert topic.startswith("dept._E5_B8_82") and "_h" in topic
    assert department_topic(long_code) == topic  # deterministic
    assert department_topic(long_code + "X") != topic


def kafka_collision_key(topic: str) -> str:
    """Kafka refuses a topic whose name equals an existing one's with `.` read as `_`."""
    return topic.replace(".", "_")


@given(st.lists(st.text(min_size=1, max_size=64), min_size=2, max_size=8, unique=True))
def test_names_are_legal_and_one_to_one(codes: list[str]) -> None:
    topics = [department_topic(code) for code in codes]
    assert all(LEGAL.match(t) for t in topics), topics
    assert len(set(topics)) == len(codes)
    assert len({kafka_collision_key(t) for t in topics}) == len(codes)
    assert not set(topics) & STANDARD


def test_department_topic_specs_are_deduplicated() -> None:
    specs = department_topics(["YZ01-MKT", "YZ02-MKT", "YZ01-MKT"])
    assert [s.name for s in specs] == ["dept.YZ01-MKT.cases.v1", "dept.YZ02-MKT.cases.v1"]
    assert all(s.partitions is None and s.config == {} for s in specs)  # the settings' defaults


def test_every_department_of_the_demo_catalog_has_its_own_topic() -> None:
    from contracts.events import CatalogPublished
    from services.operators.catalog_file import load_catalog_file

    raw = load_catalog_file(ROOT / "deploy" / "demo" / "catalog.yaml")
    published = CatalogPublished(version=1, loaded_at=datetime.now(UTC), catalog=raw)
    codes = department_codes(published)
    assert codes and len(codes) == len(raw["departments"])
    assert len({department_topic(c) for c in codes}) == len(codes)


# -- the department copy -----------------------------------------------------------------------


def routed_envelope() -> Envelope:
    return Envelope(
        type="gov.case.routed.v1",
        source="/tongban/routing",
        subject="C-1",
        data={"case_id": "C-1"},
        handledby="YZ01-MKT",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )


def test_the_copy_is_the_same_record_on_the_department_topic() -> None:
    envelope = routed_envelope()
    main, copy = department_copy_rows("case.routing.v1", envelope, "YZ01-MKT")
    assert main["topic"] == "case.routing.v1" and copy["topic"] == "dept.YZ01-MKT.cases.v1"
    assert copy["key"] == main["key"] == b"C-1"
    assert copy["value"] == main["value"]
    assert copy["headers"] == main["headers"]
    headers = dict(copy["headers"])
    assert headers["ce_id"] == envelope.id and headers["ce_handledby"] == "YZ01-MKT"
    assert headers["ce_type"] == "gov.case.routed.v1" and headers["ce_subject"] == "C-1"
    # one outbox row each (event_id is unique per row); the same ce_id on the wire
    assert main["event_id"] == envelope.id and copy["event_id"] != envelope.id
    assert len(copy["event_id"]) <= 64


def test_no_copy_without_a_department() -> None:
    rows = department_copy_rows("case.routing.v1", routed_envelope(), None)
    assert [r["topic"] for r in rows] == ["case.routing.v1"]


class RecordingSession:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any]] = []

    async def execute(self, statement: Any, parameters: Any = None) -> None:
        self.calls.append((statement, parameters))


def submitted(item: str, **kwargs: Any) -> CaseSubmitted:
    return CaseSubmitted(
        case_id="C-7",
        application=application(item, **kwargs),
        submitted_at=datetime(2026, 6, 15, 2, 0, tzinfo=UTC),
    )


async def test_a_routed_case_writes_both_rows_in_one_insert_and_queues_its_topic() -> None:
    runtime = ServiceRuntime(ServiceSettings(service="routing"))
    try:
        case = submitted("ENT-I", office="T12-SC", division="T12")
        outcome = route_case(
            index(), catalog_version=4, application=case.application, submitted_on=TODAY
        )
        effect = effect_of(case, outcome)
        assert effect.handled_by is not None
        topics = DepartmentTopics(runtime.settings)
        session = RecordingSession()
        envelope = await emit_effect(
            session,  # type: ignore[arg-type]
            effect,
            runtime=runtime,
            topics=topics,
            traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        ((statement, rows),) = session.calls  # one INSERT, both rows
        assert statement.table is runtime.outbox.table
        assert [r["topic"] for r in rows] == [
            "case.routing.v1",
            department_topic(effect.handled_by),
        ]
        assert all(dict(r["headers"])["ce_id"] == envelope.id for r in rows)
        assert envelope.handledby == effect.handled_by
        assert topics.pending == {effect.handled_by}  # not seen created yet: queued

        # A failure names no department: only case.routing.v1.
        failed = effect_of(submitted("NOPE", office="T1-DC"), None)
        session = RecordingSession()
        await emit_effect(session, failed, runtime=runtime, topics=topics)  # type: ignore[arg-type]
        ((_, rows),) = session.calls
        assert [r["topic"] for r in rows] == ["case.routing.v1"]
    finally:
        await runtime.engine.dispose()


# -- creating the topics -------------------------------------------------------------------------


class FlakyBroker:
    """Refuses the first `failures` attempts, then creates what it is asked."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.created: set[str] = set()
        self.calls = 0

    async def __call__(self, _settings: CommonSettings, codes: Iterable[str]) -> list[str]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("broker away")
        new = [department_topic(c) for c in codes if department_topic(c) not in self.created]
        self.created.update(new)
        return new


async def test_a_failed_creation_is_retried_in_the_background_until_it_succeeds() -> None:
    broker = FlakyBroker(failures=2)
    topics = DepartmentTopics(CommonSettings(), ensure=broker, backoff_s=0.01)
    assert await topics.ensure(["YZ01-MKT", "YZ02-MKT"], reason="catalog_load") is False
    assert topics.pending == {"YZ01-MKT", "YZ02-MKT"} and not topics.known
    task = asyncio.create_task(topics.run())
    try:
        for _ in range(200):
            if not topics.pending:
                break
            await asyncio.sleep(0.01)
        assert not topics.pending
        assert topics.known == {"dept.YZ01-MKT.cases.v1", "dept.YZ02-MKT.cases.v1"}
        assert broker.created == topics.known

        # A department the process has not seen: queued by the routing path, created by run().
        assert topics.want("YZ03-MKT") == "dept.YZ03-MKT.cases.v1"
        for _ in range(200):
            if "dept.YZ03-MKT.cases.v1" in broker.created:
                break
            await asyncio.sleep(0.01)
        assert "dept.YZ03-MKT.cases.v1" in topics.known
        calls = broker.calls
        topics.want("YZ03-MKT")  # known now: no I/O, nothing queued
        assert not topics.pending and broker.calls == calls
    finally:
        topics.stop()
        await asyncio.wait_for(task, 5)


async def test_a_topic_deleted_under_a_running_process_is_created_again() -> None:
    broker = FlakyBroker(failures=0)
    topics = DepartmentTopics(CommonSettings(), ensure=broker, recheck_s=0.02)
    assert await topics.ensure(["YZ01-MKT"], reason="catalog_load")
    broker.created.clear()  # someone deleted the topic
    task = asyncio.create_task(topics.run())
    try:
        for _ in range(200):
            if broker.created:
                break
            await asyncio.sleep(0.01)
        assert broker.created == {"dept.YZ01-MKT.cases.v1"}
    finally:
        topics.stop()
        await asyncio.wait_for(task, 5)


async def test_known_topics_are_not_asked_for_again() -> None:
    broker = FlakyBroker(failures=0)
    topics = DepartmentTopics(CommonSettings(), ensure=broker)
    assert await topics.ensure(["YZ01-MKT"], reason="startup")
    assert await topics.ensure(["YZ01-MKT"], reason="catalog_load")
    assert broker.calls == 1


# -- ACLs (deploy/kubernetes/kafka-users.yaml) ---------------------------------------------------


def users() -> dict[str, dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(USERS_FILE.read_text()) if d]
    assert all(d["kind"] == "KafkaUser" for d in documents)
    return {d["metadata"]["name"]: d for d in documents}


Rule = tuple[str, str, str, str]  # (resource type, name, pattern type, operation)


def rules(user: dict[str, Any]) -> set[Rule]:
    out: set[Rule] = set()
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        assert acl.get("type", "allow") == "allow"
        assert acl.get("host", "*") == "*"
        operations = acl.get("operations") or [acl["operation"]]
        for op in operations:
            out.add(
                (
                    resource["type"],
                    resource.get("name", ""),
                    resource.get("patternType", "literal"),
                    op,
                )
            )
    return out


# The source aliases of partner clusters in the KafkaMirrorMaker2 resources start with it, so a
# prefix ACL grants the mirrored `<alias>.xregion.out.v1` and `<alias>.catalog.v1`
# (kafka-users.yaml).
MIRRORED_TOPIC_PREFIX = "partner-"


def matches(rule: Rule, topic: str) -> bool:
    kind, name, pattern, _op = rule
    if kind != "topic":
        return False
    if pattern == "prefix":
        return topic.startswith(name)
    return name in ("*", topic)


def can_read(user: dict[str, Any], topic: str) -> bool:
    return any(matches(r, topic) and r[3] in ("Read", "All") for r in rules(user))


def departments() -> dict[str, dict[str, Any]]:
    return {
        name: u
        for name, u in users().items()
        if u["metadata"]["labels"].get("tongban.gov/role") == "department"
    }


def test_every_user_is_a_strimzi_user_with_authentication_and_acls() -> None:
    found = users()
    assert set(SERVICES) <= set(found) and "dept-yz01-mkt" in found
    for name, user in found.items():
        assert user["apiVersion"] == "kafka.strimzi.io/v1beta2", name
        assert user["metadata"]["labels"]["strimzi.io/cluster"], name
        assert user["spec"]["authentication"]["type"] in ("scram-sha-512", "tls"), name
        assert user["spec"]["authorization"]["type"] == "simple", name
        assert user["spec"]["authorization"]["acls"], f"{name} has no authorization rules"


def test_the_department_user_reads_its_topic_and_group_and_writes_decisions_only() -> None:
    user = users()["dept-yz01-mkt"]
    assert user["metadata"]["annotations"]["tongban.gov/department"] == "YZ01-MKT"
    assert rules(user) == {
        ("topic", "dept.YZ01-MKT.cases.v1", "literal", "Read"),
        ("group", "dept-YZ01-MKT", "prefix", "Read"),
        ("topic", DECISIONS_TOPIC, "literal", "Write"),
    }
    assert department_topic("YZ01-MKT") == "dept.YZ01-MKT.cases.v1"


def test_no_department_user_can_read_a_case_topic_or_another_department() -> None:
    found = departments()
    assert found
    case_topics = [*CASE_TOPICS, DLQ_TOPIC, CATALOG_TOPIC, "case.anything.v2"]
    for name, user in found.items():
        code = user["metadata"]["annotations"]["tongban.gov/department"]
        for topic in case_topics:
            assert not can_read(user, topic), f"{name} can read {topic}"
        assert can_read(user, department_topic(code))
        for other in ("YZ02-MKT", f"{code}X", f"{code}.x", "M-MKT"):
            assert not can_read(user, department_topic(other)), f"{name} can read {other}"
        for rule in rules(user):
            kind, resource, pattern, op = rule
            assert op != "All" and kind != "cluster", f"{name}: {rule}"
            if kind == "topic":
                assert pattern == "literal", f"{name}: topic rules must be literal ({rule})"
                assert resource != "*"


def test_only_routing_touches_department_topics_and_services_keep_to_their_groups() -> None:
    found = users()
    for service in SERVICES:
        user = found[service]
        assert user["metadata"]["labels"]["tongban.gov/role"] == "service"
        service_rules = rules(user)
        assert ("cluster", "", "literal", "IdempotentWrite") in service_rules
        groups = {(name, pattern) for kind, name, pattern, _ in service_rules if kind == "group"}
        assert groups == {(f"{service}-", "prefix")}, service
        for kind, name, pattern, op in service_rules:
            if kind == "topic" and (name, pattern) == (MIRRORED_TOPIC_PREFIX, "prefix"):
                # the partners' topics MirrorMaker 2 copies here (§9): read, never written
                assert op in ("Describe", "Read"), (service, name, op)
            elif kind == "topic":
                assert op in ("Describe", "Create", "Read", "Write"), (service, name, op)
                assert name in STANDARD or (service == "routing" and name == "dept."), (
                    f"{service} has a rule on {name}"
                )
                assert pattern == "literal" or name == "dept."
        # every service may see and create the standard topics (start-up provisioning)
        for topic in STANDARD:
            assert {("topic", topic, "literal", op) for op in ("Describe", "Create")} <= (
                service_rules
            ), (service, topic)
        if service != "routing":
            assert not can_read(user, department_topic("YZ01-MKT"))
    routing = rules(found["routing"])
    assert {("topic", "dept.", "prefix", op) for op in ("Create", "Write")} <= routing
    assert not can_read(found["routing"], department_topic("YZ01-MKT"))
