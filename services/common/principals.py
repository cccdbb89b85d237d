"""Who may do what, without the web: the caller's `Principal` (subject, role, scope) and the
role and scope checks, which raise domain refusals (`services.common.refusals`).

Pure, so a service's domain rules may decide on a principal (intake's `domain.access`);
`services.common.auth` reads the principal from a bearer token and re-exports these names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from services.common.refusals import refused


class Role(StrEnum):
    clerk = "clerk"  # counter clerk; scope = office code
    reviewer = "reviewer"  # department reviewer; scope = department code
    operator = "operator"  # runs the system; scope optional
    admin = "admin"  # everything; scope optional


SCOPED_ROLES = frozenset({Role.clerk, Role.reviewer})


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    role: Role
    scope: str | None = None
    token_id: str | None = None


def require(principal: Principal, *roles: Role) -> Principal:
    """403 `forbidden` unless the principal has one of `roles`."""
    if principal.role not in roles:
        allowed = ", ".join(r.value for r in roles) or "no role"
        raise refused(
            403,
            "forbidden",
            "Not allowed for this role",
            f"role {principal.role.value} may not do this; allowed: {allowed}",
        )
    return principal


def require_scope(
    principal: Principal,
    scope_value: str | None,
    what: str,
    *,
    exempt: Iterable[Role] = (Role.admin,),
) -> Principal:
    """403 `forbidden_scope` unless the object (its office or department `scope_value`) is the
    principal's own scope; `exempt` roles (admin by default) reach every object.

    For objects the caller names by id (a case, a result), use `in_scope` and answer a case
    outside the scope exactly as a missing one: a 403 would tell that the id exists."""
    if not in_scope(principal, scope_value, exempt=exempt):
        raise refused(
            403,
            "forbidden_scope",
            f"Not allowed for this {what}",
            f"the {what} {scope_value or '(none)'} is outside your scope "
            f"{principal.scope or '(none)'}",
        )
    return principal


def in_scope(
    principal: Principal, scope_value: str | None, *, exempt: Iterable[Role] = (Role.admin,)
) -> bool:
    """Whether the object (its office or department `scope_value`) is the principal's own
    scope; `exempt` roles (admin by default) reach every object."""
    if principal.role in exempt:
        return True
    return scope_value is not None and principal.scope == scope_value
