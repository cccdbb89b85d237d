"""Bearer JWTs: what decode_token accepts and refuses, the settings' guards, the HTTP edge."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from pydantic import ValidationError

from services.common.auth import (
    DEV_ONLY_JWT_SECRET,
    AuthError,
    AuthSettings,
    CurrentPrincipal,
    Principal,
    Role,
    decode_token,
    install_auth_handlers,
    mint_token,
    require,
    require_scope,
)
from services.common.web import PROBLEM_JSON, install_problem_handlers

pytestmark = pytest.mark.unit

SECRET = "a-test-secret-that-is-long-enough-for-hs256!"
OTHER_SECRET = "another-secret-nobody-configured-but-just-as-long"


@pytest.fixture(autouse=True)
def _no_auth_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The stack's environment must not leak into these settings."""
    import os

    for name in list(os.environ):
        if name.startswith("TONGBAN_AUTH_") or name == "TONGBAN_ENVIRONMENT":
            monkeypatch.delenv(name)
    yield


def dev(**kwargs: Any) -> AuthSettings:
    return AuthSettings(environment="test", **kwargs)


def prod(**kwargs: Any) -> AuthSettings:
    return AuthSettings(environment="production", **kwargs)


def ed25519_pair() -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def claims(**overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "sub": "alice",
        "role": "clerk",
        "scope": "HC01-DC",
        "aud": "tongban",
        "iss": "tongban",
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(hours=1),
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def reason(token: str, settings: AuthSettings) -> str:
    with pytest.raises(AuthError) as caught:
        decode_token(token, settings)
    return caught.value.reason


# --------------------------------------------------------------------------- decode_token


def test_a_valid_token_names_the_principal() -> None:
    settings = dev(auth_jwt_secret=SECRET)
    token = mint_token(settings, subject="alice", role=Role.clerk, scope="HC01-DC")
    principal = decode_token(token, settings)
    assert principal.subject == "alice"
    assert principal.role is Role.clerk
    assert principal.scope == "HC01-DC"
    assert principal.token_id


def test_operator_and_admin_need_no_scope() -> None:
    settings = dev()
    for role in (Role.operator, Role.admin):
        principal = decode_token(mint_token(settings, subject="ops", role=role), settings)
        assert principal == Principal("ops", role, None, principal.token_id)


def test_expired_token() -> None:
    settings = dev()
    old = datetime.now(UTC) - timedelta(hours=9)
    token = mint_token(settings, subject="a", role="admin", now=old)
    assert reason(token, settings) == "expired"


def test_expiry_within_the_leeway_passes() -> None:
    settings = dev()
    token = mint_token(
        settings, subject="a", role="admin", ttl_s=60, now=datetime.now(UTC) - timedelta(seconds=70)
    )
    assert decode_token(token, settings).subject == "a"


def test_a_token_verified_before_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified tokens are remembered (PyJWT's decode is slow); their expiry is checked at
    every use, with the same leeway, and another key never reuses the verdict."""
    settings = dev()
    # Whole seconds, as the token carries them: its expiry is exactly `issued` + 60 s, however
    # long the machine takes between these lines.
    issued = datetime.now(UTC).replace(microsecond=0)
    token = mint_token(settings, subject="a", role="admin", ttl_s=60, now=issued)
    assert decode_token(token, settings).subject == "a"
    assert reason(token, dev(auth_jwt_secret=OTHER_SECRET)) == "bad_signature"
    expires = issued.timestamp() + 60
    monkeypatch.setattr("services.common.auth.time.time", lambda: expires + 29)
    assert decode_token(token, settings).subject == "a"  # within the 30 s leeway
    monkeypatch.setattr("services.common.auth.time.time", lambda: expires + 31)
    assert reason(token, settings) == "expired"


def test_not_yet_valid_token() -> None:
    settings = dev()
    later = datetime.now(UTC) + timedelta(hours=1)
    token = mint_token(settings, subject="a", role="admin", now=later)
    assert reason(token, settings) == "not_yet_valid"


def test_forged_with_another_secret() -> None:
    token = mint_token(dev(auth_jwt_secret=OTHER_SECRET), subject="a", role="admin")
    assert reason(token, dev(auth_jwt_secret=SECRET)) == "bad_signature"


def test_tampered_payload() -> None:
    settings = dev()
    header, _, signature = mint_token(settings, subject="a", role="clerk", scope="X").split(".")
    payload = base64.urlsafe_b64encode(json.dumps(claims(role="admin"), default=str).encode())
    forged = f"{header}.{payload.decode().rstrip('=')}.{signature}"
    assert reason(forged, settings) == "bad_signature"


def test_alg_none_is_never_accepted() -> None:
    token = jwt.encode(claims(), "", algorithm="none")
    assert reason(token, dev()) == "algorithm_not_allowed"


def test_none_cannot_be_configured() -> None:
    with pytest.raises(ValidationError, match="none"):
        dev(auth_algorithms=["none"])


def test_only_configured_algorithms() -> None:
    long_secret = SECRET * 2
    hs512 = jwt.encode(claims(), long_secret, algorithm="HS512")
    assert reason(hs512, dev(auth_jwt_secret=long_secret)) == "algorithm_not_allowed"
    settings = prod(auth_jwt_secret=long_secret, auth_algorithms=["HS512"])
    assert decode_token(hs512, settings).subject == "alice"


def test_wrong_audience_and_issuer() -> None:
    settings = dev(auth_jwt_secret=SECRET)
    other_aud = mint_token(
        dev(auth_jwt_secret=SECRET, auth_audience="elsewhere"), subject="a", role="admin"
    )
    assert reason(other_aud, settings) == "wrong_audience"
    other_iss = mint_token(
        dev(auth_jwt_secret=SECRET, auth_issuer="mallory"), subject="a", role="admin"
    )
    assert reason(other_iss, settings) == "wrong_issuer"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"role": None}, "missing_claim"),
        ({"sub": None}, "missing_claim"),
        ({"exp": None}, "missing_claim"),
        ({"aud": None}, "missing_claim"),
        ({"role": "mayor"}, "unknown_role"),
        ({"scope": None}, "missing_scope"),
        ({"role": "reviewer", "scope": None}, "missing_scope"),
        ({"scope": ""}, "invalid_claim"),
        ({"scope": 7}, "invalid_claim"),
        ({"sub": ""}, "invalid_claim"),
    ],
)
def test_claims_are_checked(overrides: dict[str, Any], expected: str) -> None:
    token = jwt.encode(claims(**overrides), SECRET, algorithm="HS256")
    assert reason(token, dev(auth_jwt_secret=SECRET)) == expected


def test_garbage_is_malformed() -> None:
    assert reason("not-a-jwt", dev()) == "malformed"


def test_eddsa_with_a_key_pair(tmp_path: Path) -> None:
    private, public = ed25519_pair()
    public_file = tmp_path / "auth.pub"
    public_file.write_text(public)
    minter = dev(auth_jwt_private_key=private, auth_jwt_public_key=public)
    verifier = prod(auth_jwt_public_key=str(public_file))
    token = mint_token(minter, subject="bob", role="reviewer", scope="M-MKT")
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    assert decode_token(token, verifier) == Principal(
        "bob", Role.reviewer, "M-MKT", decode_token(token, minter).token_id
    )
    # The verifier has no secret: an HS256 token (even the dev one) has no key there.
    assert reason(mint_token(dev(), subject="x", role="admin"), verifier) == (
        "algorithm_not_allowed"
    )


def test_public_key_replayed_as_hmac_secret_is_refused() -> None:
    """RFC 8725 §2.1: an HS256 token 'signed' with the public key must not verify."""
    _, public = ed25519_pair()
    settings = prod(auth_jwt_secret=SECRET, auth_jwt_public_key=public)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = dict(claims(), iat=0, nbf=0, exp=4_000_000_000)
    payload = b64(json.dumps(body).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = b64(hmac.new(public.encode(), signing_input, hashlib.sha256).digest())
    assert reason(f"{header}.{payload}.{signature}", settings) == "bad_signature"


def test_mint_refuses_a_scoped_role_without_scope() -> None:
    with pytest.raises(ValueError, match="office"):
        mint_token(dev(), subject="a", role=Role.clerk)


# --------------------------------------------------------------------------- settings


def test_dev_uses_the_dev_only_secret() -> None:
    settings = dev()
    assert settings.auth_jwt_secret is not None
    assert settings.auth_jwt_secret.get_secret_value() == DEV_ONLY_JWT_SECRET


def test_production_without_a_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="no default token key"):
        prod()


def test_production_refuses_the_dev_secret() -> None:
    with pytest.raises(ValidationError, match="dev secret"):
        prod(auth_jwt_secret=DEV_ONLY_JWT_SECRET)


def test_production_refuses_a_short_secret() -> None:
    with pytest.raises(ValidationError, match="shorter than 32 bytes"):
        prod(auth_jwt_secret="s" * 31)
    with pytest.raises(ValidationError, match="shorter than 64 bytes"):
        prod(auth_jwt_secret="s" * 63, auth_algorithms=["HS256", "HS512"])
    assert prod(auth_jwt_secret="s" * 32).auth_jwt_secret is not None


def test_production_refuses_an_unusable_configuration() -> None:
    _, public = ed25519_pair()
    with pytest.raises(ValidationError, match="no key for any"):
        prod(auth_jwt_public_key=public, auth_algorithms=["RS256"])


def test_production_with_a_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONGBAN_ENVIRONMENT", "production")
    monkeypatch.setenv("TONGBAN_AUTH_JWT_SECRET", SECRET)
    monkeypatch.setenv("TONGBAN_AUTH_ALGORITHMS", '["HS256"]')
    settings = AuthSettings()
    assert not settings.is_dev
    assert settings.auth_algorithms == ["HS256"]
    token = mint_token(settings, subject="a", role="operator")
    assert decode_token(token, settings).role is Role.operator


def test_key_errors_are_refused_at_construction(tmp_path: Path) -> None:
    private, _ = ed25519_pair()
    _, other_public = ed25519_pair()
    with pytest.raises(ValidationError, match="does not match"):
        dev(auth_jwt_private_key=private, auth_jwt_public_key=other_public)
    with pytest.raises(ValidationError, match="readable PEM file"):
        prod(auth_jwt_public_key=str(tmp_path / "missing.pem"))
    with pytest.raises(ValidationError, match="not a PEM public key"):
        prod(auth_jwt_public_key="-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


# --------------------------------------------------------------------------- HTTP edge

SETTINGS = AuthSettings(environment="test", auth_jwt_secret=SECRET)


def make_app() -> FastAPI:
    app = FastAPI()
    app.state.auth_settings = SETTINGS
    install_problem_handlers(app)
    install_auth_handlers(app)

    @app.get("/me")
    async def me(principal: CurrentPrincipal) -> dict[str, str | None]:
        return {"subject": principal.subject, "role": principal.role, "scope": principal.scope}

    @app.get("/admin")
    async def admin(principal: CurrentPrincipal) -> dict[str, str]:
        require(principal, Role.admin, Role.operator)
        return {"ok": "yes"}

    @app.get("/offices/{code}")
    async def office(code: str, principal: CurrentPrincipal) -> dict[str, str]:
        require_scope(principal, code, "office")
        return {"office": code}

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        yield client


def bearer(role: str, scope: str | None = None, **kwargs: Any) -> dict[str, str]:
    token = mint_token(SETTINGS, subject=f"u-{role}", role=role, scope=scope, **kwargs)
    return {"Authorization": f"Bearer {token}"}


async def test_no_credentials_is_401_unauthenticated(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Basic YWxpY2U6cHc="}, {"Authorization": "Bearer"}):
        answer = await client.get("/me", headers=headers)
        assert answer.status_code == 401
        assert answer.headers["content-type"] == PROBLEM_JSON
        assert answer.json()["code"] == "unauthenticated"
        assert answer.headers["www-authenticate"] == 'Bearer realm="tongban"'


async def test_invalid_token_is_401_with_a_bearer_challenge(client: httpx.AsyncClient) -> None:
    forged = mint_token(dev(auth_jwt_secret=OTHER_SECRET), subject="x", role="admin")
    answer = await client.get("/me", headers={"Authorization": f"Bearer {forged}"})
    assert answer.status_code == 401
    assert answer.json()["code"] == "invalid_token"
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="tongban", error="invalid_token"')
    assert 'error_description="the token signature does not verify"' in challenge


async def test_expired_token_is_401_token_expired(client: httpx.AsyncClient) -> None:
    old = datetime.now(UTC) - timedelta(days=1)
    answer = await client.get("/me", headers=bearer("admin", now=old))
    assert answer.status_code == 401
    assert answer.json()["code"] == "token_expired"
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


async def test_valid_token_reaches_the_route(client: httpx.AsyncClient) -> None:
    answer = await client.get("/me", headers=bearer("clerk", "HC01-DC"))
    assert answer.status_code == 200
    assert answer.json() == {"subject": "u-clerk", "role": "clerk", "scope": "HC01-DC"}


async def test_require_answers_403_forbidden(client: httpx.AsyncClient) -> None:
    answer = await client.get("/admin", headers=bearer("clerk", "HC01-DC"))
    assert answer.status_code == 403
    assert answer.headers["content-type"] == PROBLEM_JSON
    assert answer.json()["code"] == "forbidden"
    assert "www-authenticate" not in answer.headers
    assert (await client.get("/admin", headers=bearer("operator"))).status_code == 200


async def test_require_scope_answers_403_forbidden_scope(client: httpx.AsyncClient) -> None:
    mine = await client.get("/offices/HC01-DC", headers=bearer("clerk", "HC01-DC"))
    assert mine.status_code == 200
    other = await client.get("/offices/HC02-DC", headers=bearer("clerk", "HC01-DC"))
    assert other.status_code == 403
    assert other.json()["code"] == "forbidden_scope"
    unscoped = await client.get("/offices/HC02-DC", headers=bearer("operator"))
    assert unscoped.json()["code"] == "forbidden_scope"
    assert (await client.get("/offices/HC02-DC", headers=bearer("admin"))).status_code == 200


async def test_openapi_declares_the_bearer_scheme(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "http"
    assert scheme["scheme"] == "bearer"
    assert spec["paths"]["/me"]["get"]["security"] == [{"bearerAuth": []}]
