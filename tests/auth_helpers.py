"""Bearer tokens for integration and e2e tests, signed with the settings the services read
from the environment (`.run/env` via conftest; in dev/test the dev secret when none is set)."""

from __future__ import annotations

from functools import lru_cache

from services.common.auth import AuthSettings, Role, mint_token


@lru_cache(maxsize=1)
def auth_settings() -> AuthSettings:
    return AuthSettings()


def token_for(role: Role | str, scope: str | None = None, subject: str | None = None) -> str:
    role = Role(role)
    name = subject or "-".join(p for p in ("test", role.value, scope) if p)
    return mint_token(auth_settings(), subject=name, role=role, scope=scope)


def auth_headers(
    role: Role | str, scope: str | None = None, subject: str | None = None
) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(role, scope, subject)}"}
