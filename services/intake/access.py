"""Who may do what at intake (pure): clerks act for their own office (the online channel is
the scope `online`), reviewers read the cases routed to their department, operators and admins
read everything with personal data masked."""

from __future__ import annotations

from contracts.common import Application, Channel
from services.common.auth import Principal, Role, require, require_scope

ONLINE_SCOPE = "online"
MASKED_ROLES = frozenset({Role.operator, Role.admin})


def intake_scope(office_code: str | None, channel: str | Channel) -> str:
    """The scope a case belongs to at intake: its office, or the online channel."""
    return ONLINE_SCOPE if str(channel) == Channel.online.value or not office_code else office_code


def may_submit(principal: Principal, application: Application) -> None:
    require(principal, Role.clerk)
    require_scope(
        principal, intake_scope(application.office_code, application.channel), "office", exempt=()
    )


def may_act_on(principal: Principal, office_code: str | None, channel: str) -> None:
    """Supplement or withdraw: the office that took the case."""
    require(principal, Role.clerk)
    require_scope(principal, intake_scope(office_code, channel), "office", exempt=())


def may_read(
    principal: Principal, office_code: str | None, channel: str, handled_by: str | None
) -> None:
    if principal.role in MASKED_ROLES:
        return
    if principal.role is Role.reviewer:
        require_scope(principal, handled_by, "department", exempt=())
        return
    require(principal, Role.clerk)
    require_scope(principal, intake_scope(office_code, channel), "office", exempt=())


def sees_personal_data(principal: Principal) -> bool:
    return principal.role not in MASKED_ROLES
