"""Entrusted intake handover (委托收件交接): the intake office signs what it took, approval
verifies it on arrival (DESIGN.md §1 `handover`).

What is signed (version `tongban.handover.v1`): the UTF-8 bytes of the JSON object

    {"application": <Application>, "case_id": ..., "office_code": ...,
     "signed_at": <RFC 3339, UTC, microseconds, "+00:00">, "v": "tongban.handover.v1"}

with sorted keys, no spaces and `ensure_ascii=False`. `<Application>` is the contract model
dumped in JSON mode without its null fields (so a later optional field does not break old
signatures); the material hashes are inside it (`materials[].sha256`). `digest` is the SHA-256
hex of those bytes and `signature` the base64 Ed25519 signature over the 32 raw digest bytes.
`key_id` is `<office_code>:<first 8 hex of SHA-256 of the raw public key>`.

Keys, one Ed25519 pair per intake office:
- intake signs with `<office_code>.key` (PEM PKCS#8) files from `TONGBAN_HANDOVER_KEY_DIR`;
- approval trusts `<office_code>.pub` (PEM SubjectPublicKeyInfo; several PEM blocks in one file
  for a key rotation) from `TONGBAN_HANDOVER_TRUST_DIR`;
- in dev/test, with no directory set, each office's key is derived from
  `TONGBAN_HANDOVER_DEV_SEED` by HKDF-SHA256 (info = office code), so every process agrees
  without setup. Outside dev/test a missing directory is a startup error: there is no default
  secret in production.

`tongban handover-keys generate --catalog FILE --out DIR` writes the key pairs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import Field, SecretStr

from contracts.common import Application, Channel, Handover, Mode
from services.common.logs import get_logger
from services.common.settings import CommonSettings

log = get_logger(__name__)

ALGORITHM = "ed25519"
PAYLOAD_VERSION = "tongban.handover.v1"
DEFAULT_DEV_SEED = "tongban-dev-handover-seed: not a secret, dev and test only"
DEFAULT_MAX_SKEW = timedelta(minutes=5)
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"

_DEV_SALT = b"tongban.handover.dev.v1"
_OFFICE_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PEM_PUBLIC = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


class HandoverSettings(CommonSettings):
    """The handover knobs; a service that signs or verifies subclasses this."""

    handover_key_dir: Path | None = Field(
        None, description="intake: directory of <office_code>.key (PEM PKCS#8 Ed25519)"
    )
    handover_trust_dir: Path | None = Field(
        None, description="approval: directory of <office_code>.pub (PEM public keys)"
    )
    handover_dev_seed: SecretStr = Field(
        SecretStr(DEFAULT_DEV_SEED),
        description="dev/test only: the seed every office's key is derived from",
    )
    handover_max_skew_s: float = Field(
        300, ge=0, description="how far in the future a signed_at may lie (clock skew)"
    )


class HandoverKeyError(RuntimeError):
    """A key is missing, unreadable or of the wrong kind; the message says what to do."""


# --------------------------------------------------------------------------- the payload


def rfc3339(at: datetime) -> str:
    """The one text form of a signing time: UTC, microseconds, `+00:00`."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("signed_at must carry a UTC offset")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_payload(
    *, case_id: str, application: Application, office_code: str, signed_at: datetime
) -> bytes:
    """The exact bytes whose SHA-256 the office signs (see the module docstring)."""
    payload = {
        "v": PAYLOAD_VERSION,
        "case_id": case_id,
        "application": application.model_dump(mode="json", exclude_none=True),
        "office_code": office_code,
        "signed_at": rfc3339(signed_at),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def handover_digest(
    *, case_id: str, application: Application, office_code: str, signed_at: datetime
) -> str:
    return hashlib.sha256(
        canonical_payload(
            case_id=case_id, application=application, office_code=office_code, signed_at=signed_at
        )
    ).hexdigest()


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_for(office_code: str, key: Ed25519PublicKey) -> str:
    """`<office_code>:<fingerprint8>`: names the office key a handover was signed with."""
    return f"{office_code}:{hashlib.sha256(public_bytes(key)).hexdigest()[:8]}"


def derive_dev_key(seed: str, office_code: str) -> Ed25519PrivateKey:
    """Dev/test only: the office's key as HKDF-SHA256(seed, info=office code)."""
    raw = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=_DEV_SALT, info=office_code.encode("utf-8")
    ).derive(seed.encode("utf-8"))
    return Ed25519PrivateKey.from_private_bytes(raw)


def _check_office_code(office_code: str) -> None:
    if not _OFFICE_CODE.fullmatch(office_code):
        raise HandoverKeyError(
            f"office code {office_code!r} cannot name a key file "
            "(letters, digits, '-', '_', '.'; at most 64)"
        )


# --------------------------------------------------------------------------- keys


class HandoverKeys:
    """The intake offices' signing keys: fixed ones (a key directory) or derived (dev)."""

    def __init__(
        self,
        keys: Mapping[str, Ed25519PrivateKey] | None = None,
        *,
        key_dir: Path | None = None,
        derive: Callable[[str], Ed25519PrivateKey] | None = None,
    ) -> None:
        self._keys: dict[str, Ed25519PrivateKey] = dict(keys or {})
        self._key_dir = key_dir
        self._derive = derive

    @classmethod
    def dev(cls, seed: str) -> HandoverKeys:
        return cls(derive=lambda office: derive_dev_key(seed, office))

    @classmethod
    def from_dir(cls, key_dir: Path) -> HandoverKeys:
        """Every `<office_code>.key` in the directory, read now; an office whose file appears
        later is read on its first use."""
        files = _key_files(key_dir, PRIVATE_SUFFIX, "TONGBAN_HANDOVER_KEY_DIR")
        return cls({office: _read_private(path) for office, path in files}, key_dir=key_dir)

    @property
    def offices(self) -> list[str]:
        """The offices with a key loaded so far (derived keys appear once used)."""
        return sorted(self._keys)

    def private_key(self, office_code: str) -> Ed25519PrivateKey:
        key = self._keys.get(office_code)
        if key is not None:
            return key
        _check_office_code(office_code)
        if self._derive is not None:
            key = self._derive(office_code)
        elif (
            self._key_dir is not None and (path := self._key_dir / (office_code + ".key")).is_file()
        ):
            key = _read_private(path)
        else:
            where = f" in {self._key_dir}" if self._key_dir is not None else ""
            raise HandoverKeyError(
                f"no handover signing key for office {office_code}{where}: install "
                f"{office_code}{PRIVATE_SUFFIX} (tongban handover-keys generate)"
            )
        self._keys[office_code] = key
        return key

    def key_id(self, office_code: str) -> str:
        return key_id_for(office_code, self.private_key(office_code).public_key())


class HandoverTrust:
    """Approval's view: the public key(s) of each intake office it accepts handovers from."""

    def __init__(
        self,
        keys: Mapping[str, Iterable[Ed25519PublicKey]] | None = None,
        *,
        derive: Callable[[str], Ed25519PublicKey] | None = None,
    ) -> None:
        self._keys: dict[str, dict[str, Ed25519PublicKey]] = {
            office: {key_id_for(office, k): k for k in ks} for office, ks in (keys or {}).items()
        }
        self._derive = derive

    @classmethod
    def dev(cls, seed: str) -> HandoverTrust:
        return cls(derive=lambda office: derive_dev_key(seed, office).public_key())

    @classmethod
    def from_keys(cls, keys: HandoverKeys, offices: Iterable[str]) -> HandoverTrust:
        """The public halves of the given offices' signing keys (tests, single-host setups)."""
        return cls({o: [keys.private_key(o).public_key()] for o in offices})

    @classmethod
    def from_dir(cls, trust_dir: Path) -> HandoverTrust:
        files = _key_files(trust_dir, PUBLIC_SUFFIX, "TONGBAN_HANDOVER_TRUST_DIR")
        return cls({office: _read_public(path) for office, path in files})

    @property
    def offices(self) -> list[str]:
        return sorted(self._keys)

    def keys_of(self, office_code: str) -> dict[str, Ed25519PublicKey] | None:
        """key_id -> public key for the office; None when the office is not trusted."""
        known = self._keys.get(office_code)
        if known is None and self._derive is not None and _OFFICE_CODE.fullmatch(office_code):
            key = self._derive(office_code)
            known = self._keys[office_code] = {key_id_for(office_code, key): key}
        return known


def _key_files(directory: Path, suffix: str, setting: str) -> list[tuple[str, Path]]:
    if not directory.is_dir():
        raise HandoverKeyError(f"{setting}={directory} is not a directory")
    files = sorted(p for p in directory.iterdir() if p.suffix == suffix and p.is_file())
    if not files:
        raise HandoverKeyError(
            f"{setting}={directory} holds no <office_code>{suffix} file "
            "(tongban handover-keys generate --catalog FILE --out DIR writes them)"
        )
    return [(p.name[: -len(suffix)], p) for p in files]


def _read_private(path: Path) -> Ed25519PrivateKey:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("handover key file readable by others", path=str(path), mode=oct(mode & 0o777))
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm, OSError) as exc:
        raise HandoverKeyError(
            f"{path}: not an unencrypted PEM PKCS#8 private key ({exc})"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise HandoverKeyError(f"{path}: an Ed25519 key is needed, not {type(key).__name__}")
    return key


def _read_public(path: Path) -> list[Ed25519PublicKey]:
    try:
        blocks = _PEM_PUBLIC.findall(path.read_bytes())
        keys = [serialization.load_pem_public_key(block) for block in blocks]
    except (ValueError, UnsupportedAlgorithm, OSError) as exc:
        raise HandoverKeyError(f"{path}: not a PEM public key ({exc})") from exc
    if not keys:
        raise HandoverKeyError(f"{path}: no PEM public key in the file")
    out: list[Ed25519PublicKey] = []
    for key in keys:
        if not isinstance(key, Ed25519PublicKey):
            raise HandoverKeyError(f"{path}: an Ed25519 key is needed, not {type(key).__name__}")
        out.append(key)
    return out


# Load once per process: one object per configuration.
_KEYS: dict[tuple[str, str, str], HandoverKeys] = {}
_TRUST: dict[tuple[str, str, str], HandoverTrust] = {}


def _config_key(settings: HandoverSettings, directory: Path | None) -> tuple[str, str, str]:
    return (
        settings.environment,
        str(directory or ""),
        settings.handover_dev_seed.get_secret_value(),
    )


def _no_dir(setting: str, who: str, settings: HandoverSettings) -> HandoverKeyError:
    return HandoverKeyError(
        f"{setting} is not set: with TONGBAN_ENVIRONMENT={settings.environment} {who} "
        "(dev keys are derived only in dev and test). Generate them with "
        "`tongban handover-keys generate --catalog FILE --out DIR`."
    )


def load_keys(settings: HandoverSettings) -> HandoverKeys:
    """intake's signing keys; raises `HandoverKeyError` outside dev/test without a key dir."""
    cache = _config_key(settings, settings.handover_key_dir)
    keys = _KEYS.get(cache)
    if keys is None:
        if settings.handover_key_dir is not None:
            keys = HandoverKeys.from_dir(settings.handover_key_dir)
        elif settings.is_dev:
            keys = HandoverKeys.dev(settings.handover_dev_seed.get_secret_value())
        else:
            raise _no_dir(
                "TONGBAN_HANDOVER_KEY_DIR",
                "intake needs each office's <office_code>.key signing key",
                settings,
            )
        keys = _KEYS.setdefault(cache, keys)
    return keys


def load_trust(settings: HandoverSettings) -> HandoverTrust:
    """approval's trusted office keys; raises `HandoverKeyError` outside dev/test without a
    trust dir."""
    cache = _config_key(settings, settings.handover_trust_dir)
    trust = _TRUST.get(cache)
    if trust is None:
        if settings.handover_trust_dir is not None:
            trust = HandoverTrust.from_dir(settings.handover_trust_dir)
        elif settings.is_dev:
            trust = HandoverTrust.dev(settings.handover_dev_seed.get_secret_value())
        else:
            raise _no_dir(
                "TONGBAN_HANDOVER_TRUST_DIR",
                "approval needs each office's <office_code>.pub public key",
                settings,
            )
        trust = _TRUST.setdefault(cache, trust)
    return trust


def clear_key_cache() -> None:
    """Forget loaded keys (tests; a process picks up new key files on restart)."""
    _KEYS.clear()
    _TRUST.clear()


def write_office_keys(
    out_dir: Path, office_code: str, *, force: bool = False
) -> tuple[str, Path, Path]:
    """A new key pair for the office: `<office>.key` (mode 0600) and `<office>.pub`.
    Returns (key_id, private path, public path); refuses to overwrite unless `force`."""
    _check_office_code(office_code)
    key = Ed25519PrivateKey.generate()
    private_path = out_dir / (office_code + PRIVATE_SUFFIX)
    public_path = out_dir / (office_code + PUBLIC_SUFFIX)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(private_path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(
            fd,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    finally:
        os.close(fd)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    public_path.chmod(0o644)
    return key_id_for(office_code, key.public_key()), private_path, public_path


# --------------------------------------------------------------------------- sign and verify


def sign_handover(
    *,
    case_id: str,
    application: Application,
    office_code: str,
    signed_at: datetime,
    keys: HandoverKeys,
) -> Handover:
    """The intake office's signed, time-stamped handover of the case as submitted."""
    if application.office_code != office_code:
        raise ValueError(
            f"office {office_code} cannot sign an application taken at {application.office_code}"
        )
    key = keys.private_key(office_code)
    digest = handover_digest(
        case_id=case_id, application=application, office_code=office_code, signed_at=signed_at
    )
    signature = key.sign(bytes.fromhex(digest))
    return Handover(
        office_code=office_code,
        signed_at=signed_at,
        digest=digest,
        algorithm=ALGORITHM,
        key_id=key_id_for(office_code, key.public_key()),
        signature=base64.b64encode(signature).decode("ascii"),
    )


class HandoverRefusal(StrEnum):
    """Why a handover is refused; every one is flagged for operators."""

    missing = "missing"  # an entrusted counter case arrived without a handover
    unsupported_algorithm = "unsupported_algorithm"
    office_mismatch = "office_mismatch"  # signed by another office than the one that took it
    unknown_office = "unknown_office"  # no trusted key for the office
    unknown_key = "unknown_key"  # the office is known, the key id is not (rotated? forged?)
    bad_signature = "bad_signature"  # the signature does not verify: forged or damaged
    digest_mismatch = "digest_mismatch"  # the office signed other data: altered on the way
    signed_in_future = "signed_in_future"  # signed_at beyond the allowed clock skew


@dataclass(frozen=True, slots=True)
class HandoverCheck:
    ok: bool
    reason: HandoverRefusal | None = None
    detail: str = ""
    office_code: str | None = None
    key_id: str | None = None

    def describe(self) -> str:
        """One line for an event or a log: `digest_mismatch: ...` (no personal data)."""
        return "ok" if self.ok else f"{self.reason}: {self.detail}"


def requires_handover(application: Application, path: Mode | str) -> bool:
    """Entrusted intake at a counter must come with a handover."""
    return path == Mode.entrusted and application.channel is Channel.counter


def verify_handover(
    handover: Handover | None,
    *,
    case_id: str,
    application: Application,
    trust: HandoverTrust,
    now: datetime | None = None,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
) -> HandoverCheck:
    """Check a handover against the case as it arrived. Pure apart from the crypto; the
    `detail` names offices, keys and the case, never the applicant."""

    def refuse(reason: HandoverRefusal, detail: str) -> HandoverCheck:
        return HandoverCheck(
            False,
            reason,
            detail,
            office_code=handover.office_code if handover else None,
            key_id=handover.key_id if handover else None,
        )

    if handover is None:
        return refuse(HandoverRefusal.missing, f"case {case_id} carries no signed handover")
    office = handover.office_code
    if handover.algorithm != ALGORITHM:
        return refuse(
            HandoverRefusal.unsupported_algorithm,
            f"algorithm {handover.algorithm!r} is not supported (only {ALGORITHM})",
        )
    if application.office_code != office:
        return refuse(
            HandoverRefusal.office_mismatch,
            f"signed by office {office}, but the application names office "
            f"{application.office_code}",
        )
    known = trust.keys_of(office)
    if known is None:
        return refuse(HandoverRefusal.unknown_office, f"no trusted key for office {office}")
    key = known.get(handover.key_id)
    if key is None:
        return refuse(
            HandoverRefusal.unknown_key,
            f"key {handover.key_id} is not a trusted key of office {office} "
            f"(trusted: {', '.join(sorted(known))})",
        )
    try:
        signature = base64.b64decode(handover.signature, validate=True)
        key.verify(signature, bytes.fromhex(handover.digest))
    except (InvalidSignature, binascii.Error, ValueError):
        return refuse(
            HandoverRefusal.bad_signature,
            f"the signature does not verify with key {handover.key_id} of office {office}",
        )
    digest = handover_digest(
        case_id=case_id,
        application=application,
        office_code=office,
        signed_at=handover.signed_at,
    )
    if digest != handover.digest:
        return refuse(
            HandoverRefusal.digest_mismatch,
            f"case {case_id} differs from what office {office} signed: data altered after intake",
        )
    now = now or datetime.now(UTC)
    if handover.signed_at - now > max_skew:
        return refuse(
            HandoverRefusal.signed_in_future,
            f"signed_at {rfc3339(handover.signed_at)} is more than {max_skew} ahead of "
            f"{rfc3339(now)}",
        )
    return HandoverCheck(True, office_code=office, key_id=handover.key_id)
