"""Who is calling: bearer JWTs on every REST route except health, readiness, metrics, OpenAPI.

A token carries `sub` (who), `role` (`clerk`, `reviewer`, `operator`, `admin`) and `scope` (the
office code of a clerk, the department code of a reviewer; optional for the other two), plus
the registered claims `aud`, `iss`, `iat`, `nbf`, `exp` (and `jti`). It is signed with

- HS256 (HS384, HS512) and the shared secret `TONGBAN_AUTH_JWT_SECRET` (at least 32 bytes;
  48 and 64 for HS384 and HS512), or
- EdDSA (Ed25519), RS256 or ES256 with a key pair: services verify with
  `TONGBAN_AUTH_JWT_PUBLIC_KEY`, whoever mints holds `TONGBAN_AUTH_JWT_PRIVATE_KEY` (each PEM
  text or the path of a PEM file).

Only `TONGBAN_AUTH_ALGORITHMS` are accepted (never `none`), and each algorithm is bound to the
key of its family: an HMAC token is checked against the secret only, an asymmetric one against
the public key only, so a public key can never be replayed as an HMAC secret (RFC 8725 §2.1).

Outside dev/test a secret or a public key must be configured and the dev secret is refused. In
dev/test, with no secret set, every process uses `DEV_ONLY_JWT_SECRET`, so `tongban token
--role clerk --scope HC01-DC` mints a token the local services accept without setup.

Route wiring (services decide who may do what; this module only says who is calling): the
app keeps its `AuthSettings` in `app.state.auth_settings` (`ServiceRuntime.create_app` puts
them there), and every route takes

    @router.post("/v1/cases")
    async def submit(principal: CurrentPrincipal, ...) -> ...:
        require(principal, Role.clerk, Role.admin)
        require_scope(principal, body.office_code, "office")

A 401 answer is problem JSON (`unauthenticated`, `invalid_token`, `token_expired`) with an RFC
6750 `WWW-Authenticate: Bearer` header (`install_auth_handlers` adds the header); a 403 is
`forbidden` (role) or `forbidden_scope` (the object belongs to another office or department).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field, SecretStr, field_validator, model_validator

# The principal and the role and scope checks are pure (services.common.principals); routes
# take them from here, beside the principal of the request.
from services.common.principals import SCOPED_ROLES as SCOPED_ROLES
from services.common.principals import Principal as Principal
from services.common.principals import Role as Role
from services.common.principals import in_scope as in_scope
from services.common.principals import require as require
from services.common.principals import require_scope as require_scope
from services.common.settings import CommonSettings
from services.common.web import Problem, problem_response

DEV_ONLY_JWT_SECRET = "tongban-DEV-ONLY-jwt-secret: refused outside dev and test"
# RFC 7518 §3.2: an HMAC key at least as long as the hash output.
MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
REALM = "tongban"

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
# Which asymmetric algorithms each kind of key may verify.
_KEY_ALGORITHMS: tuple[tuple[type[Any], frozenset[str]], ...] = (
    (ed25519.Ed25519PublicKey, frozenset({"EdDSA"})),
    (rsa.RSAPublicKey, frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})),
    (ec.EllipticCurvePublicKey, frozenset({"ES256", "ES384", "ES512"})),
)
ASYMMETRIC_ALGORITHMS = frozenset().union(*(algs for _, algs in _KEY_ALGORITHMS))
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS


class AuthError(Exception):
    """A token is not acceptable. `reason` is a stable machine word:

    `malformed`, `algorithm_not_allowed`, `bad_signature`, `expired`, `not_yet_valid`,
    `wrong_audience`, `wrong_issuer`, `missing_claim`, `invalid_claim`, `unknown_role`,
    `missing_scope`.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --------------------------------------------------------------------------- settings


class AuthSettings(CommonSettings):
    """The authentication knobs; a service's settings class inherits it (next to others)."""

    auth_jwt_secret: SecretStr | None = Field(
        None, description="HMAC secret (HS256), at least 32 bytes outside dev/test"
    )
    auth_jwt_public_key: str | None = Field(
        None, description="verifying key (Ed25519, RSA or EC): PEM text or the path of a PEM file"
    )
    auth_jwt_private_key: SecretStr | None = Field(
        None, description="signing key for minting: PEM text or the path of a PEM file"
    )
    auth_algorithms: list[str] = Field(
        default_factory=lambda: ["HS256", "EdDSA"], description="accepted JWS algorithms"
    )
    auth_audience: str = "tongban"
    auth_issuer: str = "tongban"
    auth_leeway_s: float = Field(30, ge=0, description="clock skew allowed on exp, nbf, iat")
    auth_token_ttl_s: int = Field(8 * 3600, gt=0, description="lifetime of minted tokens")

    @field_validator("auth_algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("TONGBAN_AUTH_ALGORITHMS must name at least one algorithm")
        unknown = [a for a in value if a not in SUPPORTED_ALGORITHMS]
        if unknown:
            raise ValueError(
                f"TONGBAN_AUTH_ALGORITHMS: {unknown} not accepted (never 'none'); choose from "
                f"{sorted(SUPPORTED_ALGORITHMS)}"
            )
        return value

    @model_validator(mode="after")
    def _keys_fit_the_environment(self) -> AuthSettings:
        # PEM files are read once, here: a missing or unreadable key fails at startup.
        if self.auth_jwt_public_key is not None:
            self.auth_jwt_public_key = _pem_text(
                self.auth_jwt_public_key, "TONGBAN_AUTH_JWT_PUBLIC_KEY"
            )
            _public_key(self.auth_jwt_public_key)
        if self.auth_jwt_private_key is not None:
            pem = _pem_text(
                self.auth_jwt_private_key.get_secret_value(), "TONGBAN_AUTH_JWT_PRIVATE_KEY"
            )
            self.auth_jwt_private_key = SecretStr(pem)
            private = _private_key(pem)
            if self.auth_jwt_public_key is not None and _spki(private.public_key()) != _spki(
                _public_key(self.auth_jwt_public_key)
            ):
                raise ValueError(
                    "TONGBAN_AUTH_JWT_PRIVATE_KEY does not match TONGBAN_AUTH_JWT_PUBLIC_KEY"
                )
        secret = self.auth_jwt_secret.get_secret_value() if self.auth_jwt_secret else None
        if self.is_dev:
            if secret is None:
                self.auth_jwt_secret = SecretStr(DEV_ONLY_JWT_SECRET)
            return self
        if secret is None and self.auth_jwt_public_key is None:
            raise ValueError(
                "outside dev/test set TONGBAN_AUTH_JWT_SECRET (HS256, at least 32 bytes) or "
                "TONGBAN_AUTH_JWT_PUBLIC_KEY: there is no default token key in production"
            )
        if secret is not None:
            if secret == DEV_ONLY_JWT_SECRET:
                raise ValueError("TONGBAN_AUTH_JWT_SECRET is the dev secret; refused outside dev")
            needed = max(
                (MIN_SECRET_BYTES[a] for a in self.auth_algorithms if a in HMAC_ALGORITHMS),
                default=MIN_SECRET_BYTES["HS256"],
            )
            if len(secret.encode("utf-8")) < needed:
                raise ValueError(
                    f"TONGBAN_AUTH_JWT_SECRET is shorter than {needed} bytes "
                    "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
                )
        if not _usable_algorithms(self):
            raise ValueError(
                f"no key for any of TONGBAN_AUTH_ALGORITHMS={self.auth_algorithms}: an HMAC "
                "algorithm needs the secret, an asymmetric one a matching public key"
            )
        return self


def _pem_text(value: str, setting: str) -> str:
    if "-----BEGIN" in value:
        return value
    path = Path(value).expanduser()
    try:
        return path.read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{setting}: neither PEM text nor a readable PEM file ({exc})") from None


@lru_cache(maxsize=8)
def _public_key(pem: str) -> Any:
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"TONGBAN_AUTH_JWT_PUBLIC_KEY is not a PEM public key: {exc}") from None
    if not any(isinstance(key, kind) for kind, _ in _KEY_ALGORITHMS):
        raise ValueError(f"TONGBAN_AUTH_JWT_PUBLIC_KEY: unsupported key type {type(key)}")
    return key


@lru_cache(maxsize=8)
def _private_key(pem: str) -> Any:
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"TONGBAN_AUTH_JWT_PRIVATE_KEY is not a PEM private key: {exc}") from None
    if not any(isinstance(key.public_key(), kind) for kind, _ in _KEY_ALGORITHMS):
        raise ValueError(f"TONGBAN_AUTH_JWT_PRIVATE_KEY: unsupported key type {type(key)}")
    return key


def _spki(public_key: Any) -> bytes:
    data: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def _algorithms_of(public_key: Any) -> frozenset[str]:
    for kind, algorithms in _KEY_ALGORITHMS:
        if isinstance(public_key, kind):
            return algorithms
    return frozenset()


def _usable_algorithms(settings: AuthSettings) -> list[str]:
    usable = []
    for alg in settings.auth_algorithms:
        if alg in HMAC_ALGORITHMS and settings.auth_jwt_secret is not None:
            usable.append(alg)
        elif settings.auth_jwt_public_key is not None and alg in _algorithms_of(
            _public_key(settings.auth_jwt_public_key)
        ):
            usable.append(alg)
    return usable


def _verification_key(settings: AuthSettings, alg: str) -> Any:
    """The one key that may verify a token of `alg`, or None."""
    if alg not in settings.auth_algorithms:
        return None
    if alg in HMAC_ALGORITHMS:
        secret = settings.auth_jwt_secret
        return secret.get_secret_value().encode("utf-8") if secret is not None else None
    if settings.auth_jwt_public_key is None:
        return None
    key = _public_key(settings.auth_jwt_public_key)
    return key if alg in _algorithms_of(key) else None


# --------------------------------------------------------------------------- tokens


def mint_token(
    settings: AuthSettings,
    *,
    subject: str,
    role: Role | str,
    scope: str | None = None,
    ttl_s: int | None = None,
    now: datetime | None = None,
) -> str:
    """A signed token: with the private key when one is configured (its algorithm), else with
    the secret (the first configured HMAC algorithm). Outside the CLI's dev guard this does not
    check the environment: callers that mint in production own that decision."""
    role = Role(role)
    if not subject:
        raise ValueError("a token needs a subject")
    if role in SCOPED_ROLES and not scope:
        raise ValueError(f"a {role} token needs a scope ({_scope_word(role)} code)")
    issued = now or datetime.now(UTC)
    ttl = ttl_s if ttl_s is not None else settings.auth_token_ttl_s
    claims: dict[str, Any] = {
        "sub": subject,
        "role": role.value,
        "aud": settings.auth_audience,
        "iss": settings.auth_issuer,
        "iat": issued,
        "nbf": issued,
        "exp": issued + timedelta(seconds=ttl),
        "jti": uuid.uuid4().hex,
    }
    if scope:
        claims["scope"] = scope
    key: Any
    if settings.auth_jwt_private_key is not None:
        key = _private_key(settings.auth_jwt_private_key.get_secret_value())
        allowed = [a for a in settings.auth_algorithms if a in _algorithms_of(key.public_key())]
        if not allowed:
            raise ValueError(f"the private key's algorithm is not in {settings.auth_algorithms}")
        return jwt.encode(claims, key, algorithm=allowed[0])
    hmac = [a for a in settings.auth_algorithms if a in HMAC_ALGORITHMS]
    if settings.auth_jwt_secret is None or not hmac:
        raise ValueError("cannot mint: no private key and no HMAC secret/algorithm configured")
    return jwt.encode(claims, settings.auth_jwt_secret.get_secret_value(), algorithm=hmac[0])


# Tokens verified before, with what verified them: a clerk's terminal sends the same token for
# hours, and PyJWT spends about 0.4 ms of CPU per decode (it checks the base64 alphabet one
# character at a time, twice). A token's signature, aud, iss, nbf and iat, once valid, stay
# valid (time only moves on), so a hit only checks `exp` again.
_VERIFIED: OrderedDict[tuple[Any, ...], tuple[Principal, float]] = OrderedDict()
_VERIFIED_MAX = 4096


def _verifier(settings: AuthSettings) -> tuple[Any, ...]:
    secret = settings.auth_jwt_secret
    return (
        tuple(settings.auth_algorithms),
        secret.get_secret_value() if secret is not None else None,
        settings.auth_jwt_public_key,
        settings.auth_audience,
        settings.auth_issuer,
    )


def decode_token(token: str, settings: AuthSettings) -> Principal:
    """Verify signature, exp, nbf, iat, aud and iss; read sub, role and scope."""
    remembered = (token, _verifier(settings))
    hit = _VERIFIED.get(remembered)
    if hit is not None:
        principal, expires = hit
        if time.time() > expires + settings.auth_leeway_s:
            del _VERIFIED[remembered]
            raise AuthError("expired", "the token has expired")
        return principal
    principal, expires = _verify(token, settings)
    _VERIFIED[remembered] = (principal, expires)
    if len(_VERIFIED) > _VERIFIED_MAX:
        _VERIFIED.popitem(last=False)
    return principal


def _verify(token: str, settings: AuthSettings) -> tuple[Principal, float]:
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except jwt.PyJWTError:
        raise AuthError("malformed", "the token is not a JWS compact serialization") from None
    key = _verification_key(settings, alg) if isinstance(alg, str) else None
    if not isinstance(alg, str) or key is None:
        raise AuthError("algorithm_not_allowed", f"algorithm {alg!r} is not accepted")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=settings.auth_audience,
            issuer=settings.auth_issuer,
            leeway=settings.auth_leeway_s,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("expired", "the token has expired") from None
    except jwt.ImmatureSignatureError:
        raise AuthError("not_yet_valid", "the token is not valid yet") from None
    except jwt.InvalidAudienceError:
        raise AuthError("wrong_audience", "the token is meant for another audience") from None
    except jwt.InvalidIssuerError:
        raise AuthError("wrong_issuer", "the token comes from an unknown issuer") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError("missing_claim", f"the token has no {exc.claim!r} claim") from None
    except jwt.InvalidSignatureError:
        raise AuthError("bad_signature", "the token signature does not verify") from None
    except jwt.PyJWTError as exc:
        raise AuthError("invalid_claim", f"the token is not valid: {exc}") from None
    return _principal(claims), float(claims["exp"])


def _principal(claims: dict[str, Any]) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise AuthError("invalid_claim", "the 'sub' claim must be a non-empty string")
    if "role" not in claims:
        raise AuthError("missing_claim", "the token has no 'role' claim")
    try:
        role = Role(claims["role"])
    except ValueError:
        raise AuthError(
            "unknown_role", f"role {claims['role']!r} is not one of {[r.value for r in Role]}"
        ) from None
    scope = claims.get("scope")
    if scope is not None and (not isinstance(scope, str) or not scope):
        raise AuthError("invalid_claim", "the 'scope' claim must be a non-empty string")
    if role in SCOPED_ROLES and scope is None:
        raise AuthError(
            "missing_scope", f"a {role} token needs a 'scope' claim ({_scope_word(role)} code)"
        )
    jti = claims.get("jti")
    return Principal(
        subject=subject, role=role, scope=scope, token_id=jti if isinstance(jti, str) else None
    )


def _scope_word(role: Role) -> str:
    return "office" if role is Role.clerk else "department"


# --------------------------------------------------------------------------- HTTP edge


class AuthProblem(Problem):
    """A 401 problem that carries the RFC 6750 `WWW-Authenticate` challenge."""

    def __init__(self, code: str, title: str, detail: str, *, error: str | None = None) -> None:
        super().__init__(401, code, title, detail)
        challenge = f'Bearer realm="{REALM}"'
        if error is not None:
            description = detail.replace("\\", "").replace('"', "'")
            challenge += f', error="{error}", error_description="{description}"'
        self.headers = {"WWW-Authenticate": challenge}


def install_auth_handlers(app: FastAPI) -> None:
    """Answer `AuthProblem` as problem JSON plus its `WWW-Authenticate` header (the generic
    Problem handler would drop the header). Installed by `ServiceRuntime.create_app`."""

    async def on_auth_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AuthProblem)
        response = problem_response(exc, request)
        response.headers.update(exc.headers)
        return response

    app.add_exception_handler(AuthProblem, on_auth_problem)


bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    bearerFormat="JWT",
    description="`Authorization: Bearer <JWT>` with sub, role and scope (tongban token mints one "
    "in dev)",
)


async def authenticated(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The FastAPI dependency answering the caller's `Principal`, or 401, checked against the
    app's `app.state.auth_settings`. One function for every app, so FastAPI runs it once per
    request; the principal is also left on `request.state.principal` for the rate limiter."""
    settings: AuthSettings = request.app.state.auth_settings
    if credentials is None:
        raise AuthProblem(
            "unauthenticated",
            "Authentication required",
            "send `Authorization: Bearer <token>`",
        )
    try:
        principal = decode_token(credentials.credentials, settings)
    except AuthError as exc:
        if exc.reason == "expired":
            raise AuthProblem(
                "token_expired", "The token has expired", exc.message, error="invalid_token"
            ) from None
        raise AuthProblem(
            "invalid_token", "The token is not valid", exc.message, error="invalid_token"
        ) from None
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(authenticated)]
