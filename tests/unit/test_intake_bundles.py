"""Bundles at the counter (DESIGN.md §8), pure: the answers, the members they create, the one
set of materials split per member, the bundle's window, and when a waiting member is released
or ended."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.catalog import Bundle
from contracts.common import Applicant, CaseStatus, Category, Channel, Delivery, Material
from contracts.rest import BundleApplication, BundleStatus
from services.intake.domain import bundles
from services.intake.domain.bundles import Release
from services.intake.domain.licenses import LibraryLicense
from services.intake.domain.lifecycle import case_changes
from services.policy.bundle_rules import bundle_intake_levels, bundle_office_allowed
from services.policy.routing_rules import route_case
from tests.unit.catalog_data import TODAY, application, base_catalog, credit_code, index

pytestmark = pytest.mark.unit

S = CaseStatus


def raw_catalog() -> dict[str, Any]:
    """The unit catalog with an online item issuing an e-licence (`biz`) that a delegated item's
    material takes, and a bundle of three: the issuer, the taker after it, and a municipal item
    only when the premises are large."""
    raw = base_catalog()
    items = {i["code"]: i for i in raw["items"]}
    items["ONL-E"]["result"] = {"kind": "licence", "e_license": True, "license_type": "biz"}
    items["DEL-D"]["materials"][1]["license_type"] = "biz"
    items["DEL-D"]["materials"][0]["deferrable"] = True
    items["MUN-E"]["materials"] = [
        {"code": "A", "name": "申请书", "required": True},
        {"code": "F", "name": "消防", "required": True},
    ]
    raw["bundles"] = [
        {
            "code": "B-SHOP",
            "name": "开店一件事",
            "category": "enterprise",
            "lead": "M-MKT",
            "time_limit_days": 10,
            "questions": [
                {"code": "large", "type": "boolean"},
                {"code": "kind", "type": "choice", "options": ["food", "retail"]},
            ],
            "members": [
                {"item": "ONL-E"},
                {"item": "DEL-D", "after": ["ONL-E"]},
                {"item": "MUN-E", "when": {"large": True}},
            ],
        }
    ]
    return raw


INDEX = index(raw_catalog())
TODAY_DT = datetime(2026, 6, 1, tzinfo=UTC)
BUNDLE = INDEX.bundles["B-SHOP"]


def bundle_application(
    *,
    answers: dict[str, Any] | None = None,
    materials: tuple[str, ...] = ("A", "C"),
    office: str | None = "T1-DC",
    code: str = "B-SHOP",
    **fields: Any,
) -> BundleApplication:
    body: dict[str, Any] = {
        "bundle_code": code,
        "channel": Channel.counter if office else Channel.online,
        "office_code": office,
        "applicant": Applicant(
            category=Category.enterprise,
            name="某公司",
            id_number=credit_code(),
            division_code="T11",
        ),
        "answers": {"large": False, "kind": "food"} if answers is None else answers,
        "materials": [Material(code=c) for c in materials],
        "delivery": Delivery(method="electronic"),
    }
    return BundleApplication(**(body | fields))


def plan(app: BundleApplication, **kwargs: Any) -> bundles.BundlePlan:
    return bundles.plan_bundle(INDEX, app, today=TODAY, **kwargs)


def codes(plan_: bundles.BundlePlan) -> list[str]:
    return [r.code for r in plan_.refusals]


# --------------------------------------------------------------------------- the answers


def test_the_answers_decide_which_members_are_created() -> None:
    small = plan(bundle_application())
    assert [m.item.code for m in small.members] == ["ONL-E", "DEL-D"]
    assert small.excluded == ("MUN-E",)
    large = plan(bundle_application(answers={"large": True, "kind": "retail"}))
    assert [m.item.code for m in large.members] == ["ONL-E", "DEL-D", "MUN-E"]
    assert large.excluded == ()


def test_every_fault_of_the_answers_is_listed() -> None:
    refused = plan(bundle_application(answers={"large": "yes", "colour": True}))
    assert codes(refused)[0] == "invalid_answers"
    fields = {(e.field, e.code) for e in refused.refusals[0].errors}
    assert fields == {
        ("answers.kind", "unanswered"),
        ("answers.large", "wrong_answer"),
        ("answers.colour", "unknown_question"),
    }


@pytest.mark.parametrize("answer", ["other", True, 1])
def test_a_choice_is_answered_with_one_of_its_options(answer: Any) -> None:
    errors = bundles.answer_errors(BUNDLE, {"large": False, "kind": answer})
    assert [e.field for e in errors] == ["answers.kind"]


def test_a_when_condition_needs_the_same_answer_not_an_equal_one() -> None:
    member = BUNDLE.members[2]
    assert bundles.applies(member, {"large": True})
    assert not bundles.applies(member, {"large": "true"})
    assert not bundles.applies(member, {})


# --------------------------------------------------------------------------- refusals


def test_unknown_bundle() -> None:
    assert codes(plan(bundle_application(code="B-NONE"))) == ["unknown_bundle"]


def test_a_bundle_out_of_its_dates_is_not_effective() -> None:
    raw = raw_catalog()
    raw["bundles"][0]["effective_from"] = "2030-01-01"
    raw["items"] = [i for i in raw["items"] if i["code"] not in ("FUT", "OLD")]
    refused = bundles.plan_bundle(index(raw), bundle_application(), today=TODAY)
    assert codes(refused) == ["bundle_not_effective"]


def test_a_created_member_not_in_force_makes_the_bundle_not_effective() -> None:
    raw = raw_catalog()
    raw["bundles"][0]["members"].append({"item": "FUT", "when": {"kind": "retail"}})
    idx = index(raw)
    assert bundles.plan_bundle(idx, bundle_application(), today=TODAY).ok
    retail = bundle_application(answers={"large": False, "kind": "retail"})
    assert codes(bundles.plan_bundle(idx, retail, today=TODAY)) == ["bundle_not_effective"]


def test_the_bundles_window_not_the_items_decides_the_office() -> None:
    # ONL-E alone is taken at any counter; the bundle (enterprise) only at district centers.
    refused = plan(bundle_application(office="T11-SC"))
    assert codes(refused) == ["office_not_allowed"]
    assert refused.refusals[0].extra["guidance"]["levels"] == ["municipal", "district"]
    assert plan(bundle_application(office="T-MC")).ok
    assert codes(plan(bundle_application(office="T9-XX"))) == ["unknown_office"]


def test_online_only_when_every_created_member_is_online() -> None:
    online = bundle_application(office=None)
    assert codes(plan(online)) == ["office_not_allowed"]
    assert plan(online).refusals[0].errors[0].field == "channel"


def test_every_refusal_of_a_single_case_is_listed_at_once() -> None:
    refused = plan(
        bundle_application(
            materials=("A", "ZZ"),
            applicant=Applicant(
                category=Category.enterprise,
                name="x",
                id_number="91350100M000100Y40",
                division_code="T11",
            ),
            delivery=Delivery(method="postal"),
        )
    )
    assert codes(refused) == ["invalid_id_number", "unknown_material", "invalid_delivery"]


def test_a_material_only_an_excluded_member_takes_is_dropped_not_refused() -> None:
    taken = plan(bundle_application(materials=("A", "C", "F")))
    assert taken.ok
    assert all("F" not in [m.code for m in p.application.materials] for p in taken.members)


def test_deferral_where_a_member_taking_the_material_allows_none() -> None:
    app = bundle_application(materials=("C",))
    app.materials.append(Material(code="A", deferred=True))  # DEL-D allows it, ONL-E does not
    refused = plan(app)
    assert codes(refused) == ["deferral_not_allowed"]
    assert [e.field for e in refused.refusals[0].errors] == ["materials[1].deferred"]


def test_a_commitment_nobody_allows_is_refused_once() -> None:
    app = bundle_application(materials=("C",))
    app.materials.append(Material(code="A", commitment=True))
    refused = plan(app)
    assert codes(refused) == ["commitment_not_allowed"]


def test_a_named_licence_of_another_holder_is_refused_once() -> None:
    app = bundle_application()
    app.materials.append(Material(code="B", e_license_id="L1"))
    library = [LibraryLicense("L1", "biz", "SOMEONE-ELSE", TODAY_DT, revoked=False)]
    refused = plan(app, library=library, holder=credit_code())
    assert codes(refused) == ["invalid_license"]


# --------------------------------------------------------------------------- the one set


def test_each_member_gets_its_part_of_the_one_set() -> None:
    taken = bundles.with_members_missing(plan(bundle_application(materials=("A", "C"))), INDEX)
    by_item = {m.item.code: m for m in taken.members}
    assert [m.code for m in by_item["ONL-E"].application.materials] == ["A"]
    assert [m.code for m in by_item["DEL-D"].application.materials] == ["A", "C"]
    # B is brought by ONL-E's licence: not missing although nobody gave it.
    assert by_item["DEL-D"].missing == ()
    assert by_item["DEL-D"].after == ("ONL-E",)
    assert taken.missing_materials == []


def test_missing_materials_are_listed_once_over_the_members() -> None:
    taken = bundles.with_members_missing(
        plan(bundle_application(materials=("C",), answers={"large": True, "kind": "food"})),
        INDEX,
    )
    assert taken.missing_materials == ["A", "F"]


@given(large=st.booleans(), kind=st.sampled_from(["food", "retail"]))
def test_members_created_for_any_answers_keep_their_prerequisites(large: bool, kind: str) -> None:
    raw = raw_catalog()
    created, excluded = bundles.created_members(
        Bundle.model_validate(raw["bundles"][0]), {"large": large, "kind": kind}
    )
    names = {m.item for m in created}
    assert names | set(excluded) == {m.item for m in BUNDLE.members}
    assert all(set(m.after) <= names for m in created)


# --------------------------------------------------------------------------- waiting members

DEL_D, ONL_E = INDEX.items["DEL-D"], INDEX.items["ONL-E"]


def test_a_waiting_member_waits_for_approval_then_for_the_licence() -> None:
    pending = bundles.release_decision(DEL_D, ["A"], [("C1", S.routed, ONL_E)], {})
    assert pending.action is Release.wait
    no_licence_yet = bundles.release_decision(DEL_D, ["A"], [("C1", S.approved, ONL_E)], {})
    assert no_licence_yet.action is Release.wait
    released = bundles.release_decision(
        DEL_D, ["A"], [("C1", S.result_issued, ONL_E)], {("C1", "biz"): "LIC-1"}
    )
    assert released.action is Release.submit
    assert dict(released.licences) == {"B": "LIC-1"}
    attached = bundles.attach_licences([Material(code="A")], released.licences)
    assert [(m.code, m.e_license_id) for m in attached] == [("A", None), ("B", "LIC-1")]


def test_a_material_already_given_needs_no_licence() -> None:
    released = bundles.release_decision(DEL_D, ["A", "B"], [("C1", S.approved, ONL_E)], {})
    assert released.action is Release.submit and not released.licences


@pytest.mark.parametrize("ended", [S.denied, S.withdrawn, S.terminated, S.revoked])
def test_a_prerequisite_that_ends_ends_its_dependent(ended: CaseStatus) -> None:
    decision = bundles.release_decision(
        DEL_D, ["A"], [("C0", S.approved, ONL_E), ("C1", ended, ONL_E)], {}
    )
    assert (decision.action, decision.ended_by) == (Release.end, "C1")


def test_a_denial_applied_after_its_letter_still_ends_the_dependent() -> None:
    """The fault suite's find: a denied prerequisite's result_issued (delivery topic) applied
    before its denied event (approval topic) looked approved, and the dependent waited for a
    licence that never came. The recorded decision decides; until it is known, wait."""
    after_letter = case_changes(S.result_issued, "gov.case.denied.v1", {"case_id": "C1"})
    assert "status" not in after_letter and after_letter["decision"] == "denied"
    assert case_changes(S.approval_held, "gov.case.approved.v1", {})["decision"] == "approved"
    assert case_changes(S.delivered, "gov.case.closed.v1", {"outcome": "denied"}) == {
        "status": "closed",
        "status_rank": 8,
        "decision": "denied",
    }
    assert "decision" not in case_changes(S.routed, "gov.case.accepted.v1", {"deadline": None})

    def judged(status: CaseStatus, decision: str | None) -> Release:
        standing = bundles.standing(status, decision)
        licences = {("C1", "biz"): "LIC-1"}
        return bundles.release_decision(DEL_D, ["A"], [("C1", standing, ONL_E)], licences).action

    assert judged(S.result_issued, None) is Release.wait  # which decision: not known yet
    assert judged(S.result_issued, "denied") is Release.end
    assert judged(S.closed, "denied") is Release.end
    assert judged(S.result_issued, "approved") is Release.submit
    assert judged(S.approved, None) is Release.submit  # the approved event set both
    assert bundles.standing(S.waiting, None) is S.waiting


def test_withdrawing_the_bundle_keeps_decided_members() -> None:
    assert bundles.withdrawable(S.waiting) and bundles.withdrawable(S.routed)
    assert not bundles.withdrawable(S.approved) and not bundles.withdrawable(S.denied)
    assert not bundles.withdrawable(S.withdrawn)
    assert bundles.status_after_withdrawal([]) is BundleStatus.withdrawn
    assert bundles.status_after_withdrawal(["C1"]) is BundleStatus.in_progress


def test_the_bundle_status_only_moves_forward() -> None:
    B = BundleStatus
    assert bundles.next_bundle_status(B.in_progress, B.delivered) is B.delivered
    assert bundles.next_bundle_status(B.closed, B.delivered) is None
    assert bundles.next_bundle_status(B.withdrawn, B.closed) is None


# --------------------------------------------------------------------------- routing R3


def test_routing_checks_a_member_against_the_bundles_window() -> None:
    member = application("ONL-E", office="T11-SC")  # alone: assisted online at any counter
    alone = route_case(INDEX, catalog_version=1, application=member, submitted_on=TODAY)
    assert alone.ok
    in_bundle = route_case(
        INDEX, catalog_version=1, application=member, submitted_on=TODAY, bundle_code="B-SHOP"
    )
    assert (in_bundle.rule, in_bundle.failure and in_bundle.failure.code) == (
        "R3-office-not-allowed",
        "office_not_allowed",
    )
    unknown = route_case(
        INDEX, catalog_version=1, application=member, submitted_on=TODAY, bundle_code="B-NONE"
    )
    assert unknown.ok  # a bundle this version does not know: the item's own window


def test_bundle_intake_levels_default_by_category() -> None:
    assert {lvl.value for lvl in bundle_intake_levels(BUNDLE)} == {"district"}
    individual = replace_bundle(category="individual")
    assert {lvl.value for lvl in bundle_intake_levels(individual)} == {"street"}
    decision = bundle_office_allowed(
        INDEX, individual, [], channel=Channel.counter, office_code="T11-SC"
    )
    assert decision.allowed


def replace_bundle(**fields: Any) -> Bundle:
    return BUNDLE.model_copy(update=fields)
