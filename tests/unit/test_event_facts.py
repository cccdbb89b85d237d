"""The facts of case events, the per-case memory, the filters and the masking shared by
`tongban tail` and the operator console (services.operators.event_facts)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.operators.event_facts import (
    CaseMemory,
    EventFilter,
    Facts,
    facts_of,
    facts_of_case_view,
    mask_event_data,
    short_type,
    type_matches,
)
from services.policy.catalog_index import CatalogIndex
from tests.unit import catalog_data

pytestmark = pytest.mark.unit

CASE = "T-20260615-0000000001"
ID_NUMBER = "11010519491231002X"
PHONE = "13812345678"


def application(office: str | None = "T11-SC", division: str = "T11") -> dict[str, Any]:
    return catalog_data.application("DEL-D", office=office, division=division).model_dump(
        mode="json"
    )


def route(path: str = "delegated", dept: str = "T1-MKT", office: str = "T1-DC") -> dict[str, Any]:
    return {"path": path, "level": "district", "handled_by": dept, "intake_office": office}


def submitted(office: str = "T1-DC", division: str = "T11") -> dict[str, Any]:
    return {"case_id": CASE, "application": application(office, division)}


def routed(department: str = "T1-MKT", path: str = "delegated") -> dict[str, Any]:
    return {
        **submitted(),
        "route": {"path": path, "handled_by": department, "rule": "R5", "level": "district"},
    }


@pytest.fixture(scope="module")
def catalog() -> CatalogIndex:
    raw = catalog_data.base_catalog()
    # A street whose code does not start with its district's: only the catalog can tell.
    raw["districts"][1]["streets"].append({"code": "ZZ9", "name": "外码街道"})
    return catalog_data.index(raw)


# -- type names ----------------------------------------------------------------------------------


def test_short_type() -> None:
    assert short_type("gov.case.closed.v1") == "closed"
    assert short_type("gov.case.route_failed.v1") == "route_failed"
    assert short_type("gov.catalog.published.v1") == "catalog.published"
    assert short_type("weird") == "weird"
    assert short_type(None) == "?"


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("gov.case.routed.v1", True),
        ("routed", True),
        ("route*", True),
        ("gov.case.*", True),
        ("route_failed", False),
        ("Routed", False),
    ],
)
def test_type_patterns(pattern: str, expected: bool) -> None:
    assert type_matches("gov.case.routed.v1", pattern) is expected
    assert type_matches(None, pattern) is False


# -- masking -------------------------------------------------------------------------------------


def test_every_personal_field_is_masked() -> None:
    data = {
        "case_id": CASE,
        "application": {
            "applicant": {"name": "张三丰", "id_number": ID_NUMBER, "phone": "13812341234"},
            "delivery": {"method": "postal", "address": "测试市某路1号"},
        },
        "applicant_name": "张三丰",
        "applicant_id_number": ID_NUMBER,
        "delivery_address": "测试市某路1号",
        "contact_phone": "13912345678",
        "reason": f"call 13812341234 about {ID_NUMBER}",
    }
    text = json.dumps(mask_event_data(data), ensure_ascii=False)
    for secret in ("张三丰", ID_NUMBER, "13812341234", "13912345678", "测试市某路1号"):
        assert secret not in text, secret
    assert CASE in text


def test_suffixed_personal_keys_are_masked_in_nested_lists() -> None:
    masked = mask_event_data({"rows": [{"contact_phone": PHONE, "home_address": "某路"}]})
    assert masked == {"rows": [{"contact_phone": "138****5678", "home_address": "某*"}]}


# -- facts ---------------------------------------------------------------------------------------


def test_facts_come_from_the_header_and_every_place_in_the_data(catalog: CatalogIndex) -> None:
    facts = facts_of({"application": application()})
    assert facts.offices == {"T11-SC"} and facts.channel == "counter"
    assert facts.districts(catalog) == {"T1"}  # office T11-SC and applicant division T11: T1
    facts = facts_of({"route": route(office="T2-DC")}, "T1-MKT")
    assert facts.departments == {"T1-MKT"}
    assert facts.offices == {"T2-DC"}
    assert facts.paths == {"delegated"}
    assert facts.districts(catalog) == {"T1", "T2"}  # handled in T1, taken in T2: same_city
    accepted = facts_of({"department": "T2-MKT"})
    assert accepted.districts(catalog) == {"T2"}
    assert accepted.districts(None) == frozenset()  # no catalog: no district
    handover = facts_of(
        {"intake_office": "A", "office_code": "B", "handover": {"office_code": "C"}}
    )
    assert handover.offices == {"A", "B", "C"}
    assert facts_of(None) == Facts()


def test_districts_come_from_the_catalog_not_from_code_shapes(catalog: CatalogIndex) -> None:
    event = facts_of({"application": application(office=None, division="ZZ9")})
    assert event.districts(catalog) == {"T2"}
    unknown = facts_of({"application": application(office=None, division="T19")})
    assert unknown.districts(catalog) == frozenset()  # T19 is not in the catalog


def test_a_case_taken_in_one_district_and_decided_in_another_touches_both() -> None:
    catalog = catalog_data.index()
    facts = facts_of(routed(department="T2-MKT")).union(
        facts_of({"case_id": CASE, "department": "T2-MKT"}, handledby="T2-MKT")
    )
    assert facts.districts(catalog) == {"T1", "T2"}
    assert facts.districts(None) == set()  # no catalog yet: the district filter cannot match


def test_intake_view_gives_the_facts_of_a_case_seen_halfway() -> None:
    view = {
        "case_id": CASE,
        "channel": "online",
        "office_code": None,
        "route": {"path": "online", "handled_by": "M-HOU"},
        "applicant": {"division_code": "T21"},
    }
    facts = facts_of_case_view(view)
    assert facts.offices == {"online"} and facts.paths == {"online"}
    assert facts.departments == {"M-HOU"} and facts.divisions == {"T21"}
    assert facts.view(None)["path"] == "online"
    filters = EventFilter.parse(department="M-HOU")
    assert filters.missing_facts(None) and filters.missing_facts(
        Facts(departments=frozenset({"M-HOU"}))
    )
    assert not filters.missing_facts(facts)
    assert not EventFilter.parse(case=CASE).missing_facts(None)


# -- the memory of a case ------------------------------------------------------------------------


def test_facts_learned_from_earlier_events_answer_later_ones() -> None:
    catalog = catalog_data.index()
    memory = CaseMemory()
    memory.learn(CASE, facts_of(submitted()))
    by_department = EventFilter.parse(department="T1-MKT")
    by_district = EventFilter.parse(district="T1")
    assert not by_department.matches(
        case_id=CASE, event_type="x", facts=memory.get(CASE), catalog=catalog
    )  # not routed yet
    assert by_district.matches(
        case_id=CASE, event_type="x", facts=memory.get(CASE), catalog=catalog
    )
    memory.learn(CASE, facts_of(routed()))
    closed = memory.learn(CASE, facts_of({"case_id": CASE, "outcome": "approved"}))
    assert closed.departments == {"T1-MKT"} and closed.paths == {"delegated"}
    assert closed.offices == {"T1-DC"} and closed.districts(catalog) == {"T1"}
    for filters, expected in (
        (by_department, True),
        (EventFilter.parse(path="delegated"), True),
        (EventFilter.parse(path="online"), False),
        (EventFilter.parse(office="T1-DC"), True),
        (EventFilter.parse(office="T2-DC"), False),
        (EventFilter.parse(district="T2"), False),
        (EventFilter.parse(district="T2,T1"), True),
    ):
        assert (
            filters.matches(case_id=CASE, event_type="x", facts=closed, catalog=catalog) is expected
        ), filters


def test_case_memory_is_bounded() -> None:
    memory = CaseMemory(capacity=2)
    for n in range(3):
        memory.learn(f"c{n}", Facts(offices=frozenset({"A"})))
    assert len(memory) == 2 and memory.get("c0") is None


def test_case_memory_does_not_remember_events_without_a_case() -> None:
    memory = CaseMemory()
    facts = facts_of({"department": "T1-MKT"})
    assert memory.learn(None, facts) == facts and len(memory) == 0


# -- filters -------------------------------------------------------------------------------------


def test_filters_all_must_match_and_values_of_one_filter_are_alternatives(
    catalog: CatalogIndex,
) -> None:
    facts = facts_of({"route": route()}, "T1-MKT")

    def matches(filters: EventFilter) -> bool:
        return filters.matches(
            case_id="T-20260615-AAAAAAAAAA",
            event_type="gov.case.routed.v1",
            facts=facts,
            catalog=catalog,
        )

    assert matches(EventFilter())
    assert matches(EventFilter.of(cases=("T-*",), types=("routed", "denied")))
    assert not matches(EventFilter.of(cases=("X-*",)))
    assert matches(EventFilter.of(departments=("T2-MKT", "T1-MKT"), paths=("delegated",)))
    assert not matches(EventFilter.of(departments=("T1-MKT",), paths=("online",)))
    assert matches(EventFilter.of(offices=("T1-DC",), districts=("T1",)))
    assert not matches(EventFilter.of(districts=("T3",)))
    # A value no case can have matches nothing; refusing it is the caller's business.
    assert not matches(EventFilter.of(paths=("teleport",)))
    assert not matches(EventFilter.of(districts=("T9",)))


def test_filters_parse_lists_and_short_types() -> None:
    filters = EventFilter.parse(type="closed, gov.case.routed.v1", case="", office="A,B")
    assert filters.types == {"closed", "gov.case.routed.v1"}
    assert filters.cases == frozenset() and filters.offices == {"A", "B"}
    for event_type, expected in (
        ("gov.case.closed.v1", True),
        ("gov.case.routed.v1", True),
        ("gov.case.accepted.v1", False),
    ):
        assert (
            filters.matches(
                case_id=CASE,
                event_type=event_type,
                facts=Facts(offices=frozenset({"A"}), channel="counter"),
                catalog=None,
            )
            is expected
        )
    assert EventFilter.parse(case=CASE).describe() == {"case": [CASE]}
    globs = EventFilter.parse(case="T-20260615-*", type="sla_*,gov.case.over*")
    for event_type, case_id, expected in (
        ("gov.case.sla_warning.v1", CASE, True),
        ("gov.case.overdue.v1", CASE, True),
        ("gov.case.closed.v1", CASE, False),
        ("gov.case.overdue.v1", "T-20260616-0000000001", False),
    ):
        assert (
            globs.matches(case_id=case_id, event_type=event_type, facts=None, catalog=None)
            is expected
        )
    assert not EventFilter.parse(type="closed").matches(
        case_id=CASE, event_type=None, facts=None, catalog=None
    )  # an unreadable record has no type


def test_a_case_across_regions_names_its_partner_and_this_regions_part() -> None:
    """DESIGN.md §9: taken here and forwarded (path cross_region, handled_by the partner's
    city) is `origin`; adopted from a partner (`origin` in intake's view or the submitted
    event, or an imported step's ce_fromcity) is `handler`."""
    origin_view = {
        "case_id": CASE,
        "channel": "counter",
        "office_code": "T1-DC",
        "route": {"path": "cross_region", "handled_by": "LZ", "level": "partner"},
    }
    facts = facts_of_case_view(origin_view)
    assert facts.partners == {"LZ"} and facts.xregion_role == "origin"
    assert facts.view(None)["partner"] == "LZ" and facts.view(None)["xregion_role"] == "origin"
    adopted = facts_of_case_view({**origin_view, "route": None, "origin": {"city_code": "YZ"}})
    assert adopted.partners == {"YZ"} and adopted.xregion_role == "handler"
    imported = facts_of({"case_id": CASE, "reason": "撤回"}, fromcity="YZ")
    assert imported.partners == {"YZ"} and imported.xregion_role == "handler"
    local = facts_of(routed())
    assert (local.partners, local.xregion_role) == (frozenset(), None)
    assert local.union(imported).xregion_role == "handler"
    assert imported.union(local).xregion_role == "handler"  # a later local event forgets nothing
