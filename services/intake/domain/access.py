"""Who may do what at intake (pure): clerks act for their own office (the online channel is
the scope `online`), reviewers read the cases routed to their department, operators and admins
read everything with personal data masked.

A case outside the caller's scope is answered exactly like a case that does not exist (404
`case_not_found`): the role is checked before the case is looked up (403 `forbidden` whether
or not it exists), the scope after, as a yes or no turned into that 404 (`case_not_found`)."""

from __future__ import annotations

from contracts.common import Application, Channel
from contracts.rest import BundleApplication
from services.common.principals import Principal, Role, in_scope, require, require_scope
from services.common.refusals import Refusal

ONLINE_SCOPE = "online"
MASKED_ROLES = frozenset({Role.operator, Role.admin})


def intake_scope(office_code: str | None, channel: str | Channel) -> str:
    """The scope a case belongs to at intake: its office, or the online channel."""
    return ONLINE_SCOPE if str(channel) == Channel.online.value or not office_code else office_code


def case_not_found(case_id: str) -> Refusal:
    """A case that does not exist, or not for this caller: the two answers are the same."""
    return Refusal(
        404,
        "case_not_found",
        "No such case",
        f"There is no case {case_id!r}. Check the id from the 201 answer.",
    )


def may_submit(principal: Principal, application: Application) -> None:
    require(principal, Role.clerk)
    require_scope(
        principal, intake_scope(application.office_code, application.channel), "office", exempt=()
    )


def may_submit_bundle(principal: Principal, application: BundleApplication) -> None:
    """A bundle is taken as a case is: by a clerk, at their own office (or channel)."""
    require(principal, Role.clerk)
    require_scope(
        principal, intake_scope(application.office_code, application.channel), "office", exempt=()
    )


def may_act(principal: Principal) -> None:
    """Supplement or withdraw: clerks only (403 before any case is looked up)."""
    require(principal, Role.clerk)


def acts_for(principal: Principal, office_code: str | None, channel: str) -> bool:
    """A clerk of the office that took the case (or of the online channel)."""
    return principal.role is Role.clerk and in_scope(
        principal, intake_scope(office_code, channel), exempt=()
    )


def reads(
    principal: Principal, office_code: str | None, channel: str, handled_by: str | None
) -> bool:
    if principal.role in MASKED_ROLES:
        return True
    if principal.role is Role.reviewer:
        return in_scope(principal, handled_by, exempt=())
    return acts_for(principal, office_code, channel)


def library_scope(principal: Principal) -> str | None:
    """Who may look up a holder in the licence library (`GET /v1/licenses?holder=`), as the
    scope the holder must be an applicant of, None for every holder.

    A clerk serves the applicants of their own office (the online channel: its own
    applicants), so a clerk sees a holder's licences only once that holder is the applicant
    of a case there: an ID number typed at a counter is not a key to anyone's certificates.
    Operators and admins see every holder, masked; reviewers see the licences of their cases
    on the worklist, not the library (403 `forbidden`, before any holder is looked up)."""
    require(principal, Role.clerk, *MASKED_ROLES)
    if principal.role in MASKED_ROLES:
        return None
    return principal.scope or ""  # a clerk of no office serves nobody


def sees_personal_data(principal: Principal) -> bool:
    return principal.role not in MASKED_ROLES
