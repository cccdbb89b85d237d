"""Commitment (告知承诺) in approval's review (services/approval/domain/review.py): which
outcomes open a verification, the department's answer (confirmed closes it, breached revokes
the decision), and the verification's due day (clock.verification_due)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.common import CaseStatus, Material
from contracts.events import CaseRevoked, CaseVerified, DecisionKind
from contracts.rest import VerificationResult, VerificationStatus
from services.approval.domain import clock, review
from services.approval.domain.review import CaseState, Outcome, Verification, Verified
from services.common.refusals import Refusal
from services.common.workdays import is_working_day, working_days_between
from tests.unit.test_approval_deferral import calendar_of, deferred_routed, nth_working_day_after
from tests.unit.test_approval_review import CALENDAR, NOW, decision, make_routed, ok

pytestmark = pytest.mark.unit

LATER = NOW + timedelta(days=1)


def committed_routed(*codes: str, instant: bool = False, verify_days: int = 20) -> object:
    routed = make_routed(instant=instant)
    materials = [Material(code="M01", sha256="a" * 64)] + [
        Material(code=code, commitment=True) for code in codes
    ]
    return routed.model_copy(
        update={
            "application": routed.application.model_copy(update={"materials": materials}),
            "item": routed.item.model_copy(update={"verify_days": verify_days}),
        }
    )


def accepted(*codes: str) -> CaseState:
    return review.take(committed_routed(*codes), now=NOW, calendar=CALENDAR).state  # type: ignore[arg-type]


def approved(*codes: str) -> tuple[Outcome, Verification]:
    outcome = ok(
        review.decide(accepted(*codes), decision(DecisionKind.approve), case_id="C", now=LATER)
    )
    opened = review.verification_opened(outcome, now=LATER, calendar=CALENDAR)
    assert opened is not None
    return outcome, opened


def answered(result: Verified | Refusal) -> Verified:
    assert isinstance(result, Verified), result
    return result


def test_an_approval_of_a_case_with_commitments_opens_its_verification() -> None:
    outcome, opened = approved("M02", "M03")
    assert outcome.state.status is CaseStatus.approved
    assert opened.committed == ("M02", "M03") and opened.status is VerificationStatus.open
    assert opened.approved_at == LATER and opened.department == outcome.state.department
    assert opened.due == clock.verification_due(CALENDAR, clock.local_date(LATER), 20)


def test_an_instant_item_opens_it_at_acceptance() -> None:
    taken = review.take(committed_routed("M02", instant=True), now=NOW, calendar=CALENDAR)  # type: ignore[arg-type]
    opened = review.verification_opened(taken, now=NOW, calendar=CALENDAR)
    assert opened is not None and opened.committed == ("M02",)


def test_no_commitment_no_verification_nor_for_a_denial_or_a_held_approval() -> None:
    plain = ok(review.decide(accepted(), decision(DecisionKind.approve), case_id="C", now=LATER))
    assert review.verification_opened(plain, now=LATER, calendar=CALENDAR) is None
    deny = decision(DecisionKind.deny, legal_basis="《行政许可法》第三十八条")
    denied = ok(review.decide(accepted("M02"), deny, case_id="C", now=LATER))
    assert review.verification_opened(denied, now=LATER, calendar=CALENDAR) is None
    # Held while a deferred material is outstanding: nothing has taken effect yet.
    routed = deferred_routed("M04")
    materials = [*routed.application.materials, Material(code="M02", commitment=True)]  # type: ignore[attr-defined]
    routed = routed.model_copy(  # type: ignore[attr-defined]
        update={"application": routed.application.model_copy(update={"materials": materials})}  # type: ignore[attr-defined]
    )
    case = review.take(routed, now=NOW, calendar=CALENDAR).state
    held = ok(review.decide(case, decision(DecisionKind.approve), case_id="C", now=LATER))
    assert held.state.status is CaseStatus.approval_held
    assert review.verification_opened(held, now=LATER, calendar=CALENDAR) is None
    # ... and released by the last deferred material, it opens then.
    released = review.deferred_arrived(held.state, ["M04"])
    assert released is not None and released.state.status is CaseStatus.approved
    later = LATER + timedelta(days=3)
    opened = review.verification_opened(released, now=later, calendar=CALENDAR)
    assert opened is not None and opened.approved_at == later


def test_confirmed_closes_the_verification_and_the_decision_stands() -> None:
    outcome, opened = approved("M02")
    done = answered(
        review.verify(outcome.state, opened, VerificationResult.confirmed, note=" ok ", now=LATER)
    )
    assert done.verification.status is VerificationStatus.confirmed
    assert done.verification.note == "ok" and done.verification.verified_at == LATER
    assert done.outcome.state.status is CaseStatus.approved
    (verified,) = done.outcome.events
    assert isinstance(verified, CaseVerified) and verified.note == "ok"


def test_breached_revokes_the_decision() -> None:
    outcome, opened = approved("M02")
    done = answered(
        review.verify(outcome.state, opened, VerificationResult.breached, note="不实", now=LATER)
    )
    assert done.verification.status is VerificationStatus.breached
    assert done.outcome.state.status is CaseStatus.revoked
    (revoked,) = done.outcome.events
    assert isinstance(revoked, CaseRevoked)
    assert revoked.reason == review.BREACHED == "commitment_breached"
    assert revoked.revoked_at == LATER and revoked.note == "不实"
    assert revoked.department == outcome.state.department
    # Revoked is final: no decision, no second answer.
    again = review.verify(
        done.outcome.state, done.verification, VerificationResult.confirmed, note=None, now=LATER
    )
    assert isinstance(again, Refusal) and (again.status, again.code) == (409, "invalid_state")
    approve = review.decide(
        done.outcome.state, decision(DecisionKind.approve), case_id="C", now=LATER
    )
    assert isinstance(approve, Refusal) and "revoked" in approve.detail


def test_only_an_open_verification_takes_an_answer() -> None:
    outcome, opened = approved("M02")
    none = review.verify(outcome.state, None, VerificationResult.confirmed, note=None, now=LATER)
    assert isinstance(none, Refusal) and (none.status, none.code) == (409, "invalid_state")
    assert "no commitments" in none.detail
    closed = answered(
        review.verify(outcome.state, opened, VerificationResult.confirmed, note=None, now=LATER)
    ).verification
    twice = review.verify(outcome.state, closed, VerificationResult.breached, note=None, now=LATER)
    assert isinstance(twice, Refusal) and "already confirmed" in twice.detail


# -- the due day -------------------------------------------------------------------------------

DAYS = st.dates(min_value=date(2026, 1, 1), max_value=date(2026, 12, 31))


@given(
    approved_on=DAYS,
    verify_days=st.integers(min_value=1, max_value=60),
    holidays=st.sets(DAYS, max_size=25),
    workdays=st.sets(DAYS, max_size=6),
)
def test_the_due_day_is_the_verify_days_th_working_day_after_the_approval(
    approved_on: date, verify_days: int, holidays: set[date], workdays: set[date]
) -> None:
    calendar = calendar_of(holidays, workdays)
    due = clock.verification_due(calendar, approved_on, verify_days)
    assert due is not None and due > approved_on
    assert is_working_day(calendar, due)
    assert working_days_between(calendar, approved_on, due) == verify_days
    assert due == nth_working_day_after(calendar, approved_on, verify_days)
    # Its overdue falls when that day is over, and every warning before it.
    points = clock.clock_points(calendar, approved_on, verify_days, [0.5, 0.8])
    assert [p.point for p in points] == [0.5, 0.8, clock.OVERDUE_POINT]
    assert points[-1].day == due and points[-1].due_at == clock.end_of_day(due)
    assert all(p.day is not None and p.day <= due for p in points)


@given(approved_on=st.dates(min_value=date(2027, 12, 1), max_value=date(2027, 12, 31)))
def test_a_due_day_past_the_calendar_is_unknown(approved_on: date) -> None:
    assert clock.verification_due(CALENDAR, approved_on, 30) is None
    assert clock.verification_due(None, approved_on, 1) is None
