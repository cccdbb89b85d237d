"""Entrusted intake handover: signing at the counter, verification on arrival, office keys."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from typer.testing import CliRunner

from contracts.common import (
    Applicant,
    Application,
    Category,
    Channel,
    Delivery,
    DeliveryMethod,
    Handover,
    Material,
    Mode,
)
from contracts.events import CaseSubmitted
from services.cli.main import app as cli
from services.common.handover import (
    HandoverCheck,
    HandoverKeyError,
    HandoverKeys,
    HandoverRefusal,
    HandoverSettings,
    HandoverTrust,
    canonical_payload,
    clear_key_cache,
    derive_dev_key,
    key_id_for,
    load_keys,
    load_trust,
    requires_handover,
    sign_handover,
    verify_handover,
    write_office_keys,
)
from services.common.refusals import Refused
from services.intake.handlers import submission_handover
from tests.unit.catalog_data import base_catalog, credit_code, resident_id

pytestmark = pytest.mark.unit

OFFICE = "T11-SC"
OTHER = "T12-SC"
CASE = "T-20260615-ABCDE12345"
SIGNED_AT = datetime(2026, 6, 15, 9, 30, 12, 345678, tzinfo=UTC)
NOW = SIGNED_AT + timedelta(seconds=3)
SEED = "unit-test-seed"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def application(office: str | None = OFFICE) -> Application:
    return Application(
        item_code="SOC-0002",
        channel=Channel.counter if office else Channel.online,
        office_code=office,
        applicant=Applicant(
            category=Category.individual,
            name="王小明",
            id_number=resident_id(),
            phone="13812341234",
            division_code="T11",
        ),
        materials=[
            Material(code="S01", sha256=_sha("身份证")),
            Material(code="S02", sha256=_sha("户口簿")),
            Material(code="S03", e_license_id="EL-2026-0001"),
        ],
        delivery=Delivery(method=DeliveryMethod.postal, address="海城市湖滨路1号"),
    )


@pytest.fixture(autouse=True)
def _fresh_key_cache() -> Iterator[None]:
    clear_key_cache()
    yield
    clear_key_cache()


@pytest.fixture
def keys() -> HandoverKeys:
    return HandoverKeys.dev(SEED)


@pytest.fixture
def trust(keys: HandoverKeys) -> HandoverTrust:
    return HandoverTrust.from_keys(keys, [OFFICE, OTHER])


def sign(keys: HandoverKeys, app: Application | None = None, **kw: Any) -> Handover:
    app = app or application()
    args: dict[str, Any] = {
        "case_id": CASE,
        "application": app,
        "office_code": app.office_code,
        "signed_at": SIGNED_AT,
        "keys": keys,
    }
    return sign_handover(**(args | kw))


def verify(
    handover: Handover | None, trust: HandoverTrust, app: Application | None = None, **kw: Any
) -> HandoverCheck:
    return verify_handover(
        handover,
        case_id=kw.pop("case_id", CASE),
        application=app or application(),
        trust=trust,
        now=kw.pop("now", NOW),
        **kw,
    )


# --------------------------------------------------------------------------- round trip


def test_sign_verify_round_trip(keys: HandoverKeys, trust: HandoverTrust) -> None:
    handover = sign(keys)
    assert handover.algorithm == "ed25519"
    assert handover.office_code == OFFICE
    assert handover.key_id == keys.key_id(OFFICE)
    assert handover.key_id.startswith(f"{OFFICE}:") and len(handover.key_id) == len(OFFICE) + 9
    assert (
        handover.digest
        == hashlib.sha256(
            canonical_payload(
                case_id=CASE, application=application(), office_code=OFFICE, signed_at=SIGNED_AT
            )
        ).hexdigest()
    )
    check = verify(handover, trust)
    assert check.ok and check.reason is None and check.describe() == "ok"
    assert check.key_id == handover.key_id


def test_survives_the_trip_through_kafka_json(keys: HandoverKeys, trust: HandoverTrust) -> None:
    """The event is serialised to JSON and parsed again (and the time zone may differ)."""
    local = SIGNED_AT.astimezone(ZoneInfo("Asia/Shanghai"))
    event = CaseSubmitted(
        case_id=CASE,
        application=application(),
        submitted_at=local,
        handover=sign(keys, signed_at=local),
    )
    arrived = CaseSubmitted.model_validate(json.loads(event.model_dump_json()))
    check = verify_handover(
        arrived.handover,
        case_id=arrived.case_id,
        application=arrived.application,
        trust=trust,
        now=NOW,
    )
    assert check.ok, check.describe()


def test_canonical_payload_is_sorted_compact_utf8() -> None:
    raw = canonical_payload(
        case_id=CASE, application=application(), office_code=OFFICE, signed_at=SIGNED_AT
    )
    text = raw.decode("utf-8")
    assert "王小明" in text and ", " not in text and ": " not in text
    payload = json.loads(text)
    assert list(payload) == sorted(payload)
    assert payload["signed_at"] == "2026-06-15T09:30:12.345678+00:00"
    assert payload["v"] == "tongban.handover.v1"
    assert [m.get("sha256") for m in payload["application"]["materials"]] == [
        _sha("身份证"),
        _sha("户口簿"),
        None,
    ]


def test_naive_signing_time_is_refused(keys: HandoverKeys) -> None:
    with pytest.raises(ValueError, match="offset"):
        sign(keys, signed_at=datetime(2026, 6, 15, 9, 30))


def test_an_office_signs_only_what_it_took(keys: HandoverKeys) -> None:
    with pytest.raises(ValueError, match="cannot sign"):
        sign(keys, office_code=OTHER)


# --------------------------------------------------------------------------- altered data


def _replace(app: Application, **update: Any) -> Application:
    return app.model_copy(update=update)


ALTERATIONS: dict[str, Any] = {
    "material hash": lambda a: _replace(
        a,
        materials=[a.materials[0].model_copy(update={"sha256": _sha("forged")}), *a.materials[1:]],
    ),
    "material dropped": lambda a: _replace(a, materials=a.materials[:-1]),
    "material added": lambda a: _replace(a, materials=[*a.materials, Material(code="S09")]),
    "materials reordered": lambda a: _replace(a, materials=list(reversed(a.materials))),
    "applicant id number": lambda a: _replace(
        a, applicant=a.applicant.model_copy(update={"id_number": resident_id("11010519800101001")})
    ),
    "applicant name": lambda a: _replace(
        a, applicant=a.applicant.model_copy(update={"name": "王小名"})
    ),
    "item code": lambda a: _replace(a, item_code="SOC-0003"),
    "delivery method": lambda a: _replace(
        a, delivery=Delivery(method=DeliveryMethod.counter_pickup)
    ),
    "delivery address": lambda a: _replace(
        a, delivery=a.delivery.model_copy(update={"address": "海城市湖滨路2号"})
    ),
}


@pytest.mark.parametrize("what", sorted(ALTERATIONS))
def test_any_change_to_the_application_is_detected(
    what: str, keys: HandoverKeys, trust: HandoverTrust
) -> None:
    handover = sign(keys)
    altered = ALTERATIONS[what](application())
    assert altered != application()
    check = verify(handover, trust, altered)
    assert not check.ok
    assert check.reason is HandoverRefusal.digest_mismatch
    assert "altered" in check.detail


def test_another_case_id_is_detected(keys: HandoverKeys, trust: HandoverTrust) -> None:
    check = verify(sign(keys), trust, case_id="T-20260615-0000000000")
    assert check.reason is HandoverRefusal.digest_mismatch


def test_a_changed_signing_time_is_detected(keys: HandoverKeys, trust: HandoverTrust) -> None:
    handover = sign(keys).model_copy(update={"signed_at": SIGNED_AT - timedelta(days=3)})
    assert verify(handover, trust).reason is HandoverRefusal.digest_mismatch


def test_refusal_detail_carries_no_personal_data(keys: HandoverKeys, trust: HandoverTrust) -> None:
    app = application()
    altered = ALTERATIONS["applicant id number"](app)
    check = verify(sign(keys), trust, altered)
    for secret in (app.applicant.id_number, altered.applicant.id_number, app.applicant.name):
        assert secret not in check.describe()


# --------------------------------------------------------------------------- forged, unknown


def test_signed_with_another_offices_key_is_refused(
    keys: HandoverKeys, trust: HandoverTrust
) -> None:
    forger = HandoverKeys({OFFICE: keys.private_key(OTHER)})
    forged = sign(forger)
    check = verify(forged, trust)
    assert not check.ok and check.reason is HandoverRefusal.unknown_key
    # Claiming the genuine key id does not help: the signature does not verify.
    claimed = forged.model_copy(update={"key_id": keys.key_id(OFFICE)})
    check = verify(claimed, trust)
    assert not check.ok and check.reason is HandoverRefusal.bad_signature


def test_recomputed_digest_without_the_key_is_refused(
    keys: HandoverKeys, trust: HandoverTrust
) -> None:
    """Altering the data and recomputing the digest: the signature no longer matches."""
    altered = ALTERATIONS["material hash"](application())
    handover = sign(keys)
    digest = hashlib.sha256(
        canonical_payload(
            case_id=CASE, application=altered, office_code=OFFICE, signed_at=SIGNED_AT
        )
    ).hexdigest()
    check = verify(handover.model_copy(update={"digest": digest}), trust, altered)
    assert check.reason is HandoverRefusal.bad_signature


@pytest.mark.parametrize("signature", ["not base64!", "AAAA", ""])
def test_garbled_signature_is_refused(
    signature: str, keys: HandoverKeys, trust: HandoverTrust
) -> None:
    handover = sign(keys).model_copy(update={"signature": signature})
    assert verify(handover, trust).reason is HandoverRefusal.bad_signature


def test_unknown_office_is_refused(keys: HandoverKeys) -> None:
    trust = HandoverTrust.from_keys(keys, [OTHER])
    check = verify(sign(keys), trust)
    assert not check.ok and check.reason is HandoverRefusal.unknown_office
    assert OFFICE in check.detail


def test_office_must_match_the_application(keys: HandoverKeys, trust: HandoverTrust) -> None:
    moved = application().model_copy(update={"office_code": OTHER})
    check = verify(sign(keys), trust, moved)
    assert check.reason is HandoverRefusal.office_mismatch


def test_unsupported_algorithm_is_refused(keys: HandoverKeys, trust: HandoverTrust) -> None:
    handover = sign(keys).model_copy(update={"algorithm": "hmac-sha256"})
    assert verify(handover, trust).reason is HandoverRefusal.unsupported_algorithm


def test_missing_handover_is_refused(trust: HandoverTrust) -> None:
    check = verify(None, trust)
    assert check.reason is HandoverRefusal.missing
    assert check.describe().startswith("missing: ")


def test_signing_time_in_the_future_is_refused(keys: HandoverKeys, trust: HandoverTrust) -> None:
    ahead = sign(keys, signed_at=NOW + timedelta(minutes=6))
    assert verify(ahead, trust).reason is HandoverRefusal.signed_in_future
    slightly = sign(keys, signed_at=NOW + timedelta(minutes=4))
    assert verify(slightly, trust).ok
    assert verify(ahead, trust, max_skew=timedelta(minutes=10)).ok


def test_requires_handover_only_for_entrusted_counter_intake() -> None:
    assert requires_handover(application(), Mode.entrusted)
    assert requires_handover(application(), "entrusted")
    assert not requires_handover(application(), Mode.delegated)
    assert not requires_handover(application(office=None), Mode.entrusted)


# --------------------------------------------------------------------------- keys


def test_dev_derivation_is_deterministic_and_per_office() -> None:
    a1, a2 = derive_dev_key(SEED, OFFICE), derive_dev_key(SEED, OFFICE)
    b = derive_dev_key(SEED, OTHER)
    c = derive_dev_key("another seed", OFFICE)
    raw = [k.public_key().public_bytes_raw() for k in (a1, a2, b, c)]
    assert raw[0] == raw[1]
    assert len({raw[0], raw[2], raw[3]}) == 3
    assert HandoverKeys.dev(SEED).key_id(OFFICE) == HandoverKeys.dev(SEED).key_id(OFFICE)


def test_dev_processes_agree_without_setup() -> None:
    """intake and approval each load dev keys from the same settings: they verify."""
    env = HandoverSettings(environment="dev", handover_key_dir=None, handover_trust_dir=None)
    handover = sign(load_keys(env))
    clear_key_cache()  # another process
    assert verify(handover, load_trust(env)).ok
    other = HandoverSettings(
        environment="test",
        handover_key_dir=None,
        handover_trust_dir=None,
        handover_dev_seed=SecretStr("x"),
    )
    assert verify(handover, load_trust(other)).reason is HandoverRefusal.unknown_key


def test_keys_are_loaded_once_per_process() -> None:
    env = HandoverSettings(environment="test", handover_key_dir=None)
    assert load_keys(env) is load_keys(env)
    assert load_trust(env) is load_trust(env)


def test_key_dir_round_trip(tmp_path: Path) -> None:
    ids = {o: write_office_keys(tmp_path, o)[0] for o in (OFFICE, OTHER)}
    private = tmp_path / f"{OFFICE}.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert (tmp_path / f"{OFFICE}.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    env = HandoverSettings(
        environment="production", handover_key_dir=tmp_path, handover_trust_dir=tmp_path
    )
    keys = load_keys(env)
    assert keys.offices == [OFFICE, OTHER]
    assert keys.key_id(OFFICE) == ids[OFFICE]
    trust = load_trust(env)
    assert trust.offices == [OFFICE, OTHER]
    assert verify(sign(keys), trust).ok
    # Dev keys are not these keys.
    assert verify(sign(HandoverKeys.dev(SEED)), trust).reason is HandoverRefusal.unknown_key
    # An office without a key file cannot sign.
    with pytest.raises(HandoverKeyError, match="T21-SC"):
        keys.private_key("T21-SC")


def test_key_files_are_not_overwritten_unless_forced(tmp_path: Path) -> None:
    first = write_office_keys(tmp_path, OFFICE)[0]
    with pytest.raises(FileExistsError):
        write_office_keys(tmp_path, OFFICE)
    second = write_office_keys(tmp_path, OFFICE, force=True)[0]
    assert first != second
    assert stat.S_IMODE((tmp_path / f"{OFFICE}.key").stat().st_mode) == 0o600


def test_rotated_keys_are_all_trusted(tmp_path: Path) -> None:
    old_dir, new_dir, trust_dir = tmp_path / "old", tmp_path / "new", tmp_path / "trust"
    for d in (old_dir, new_dir, trust_dir):
        d.mkdir()
    write_office_keys(old_dir, OFFICE)
    write_office_keys(new_dir, OFFICE)
    (trust_dir / f"{OFFICE}.pub").write_bytes(
        (old_dir / f"{OFFICE}.pub").read_bytes() + (new_dir / f"{OFFICE}.pub").read_bytes()
    )
    trust = HandoverTrust.from_dir(trust_dir)
    for d in (old_dir, new_dir):
        assert verify(sign(HandoverKeys.from_dir(d)), trust).ok


def test_office_code_must_be_a_safe_file_name(tmp_path: Path) -> None:
    with pytest.raises(HandoverKeyError, match="cannot name a key file"):
        write_office_keys(tmp_path, "../evil")
    with pytest.raises(HandoverKeyError, match="cannot name a key file"):
        HandoverKeys(key_dir=tmp_path).private_key("../evil")


def test_wrong_key_kinds_are_refused(tmp_path: Path) -> None:
    (tmp_path / f"{OFFICE}.key").write_text("not a key")
    with pytest.raises(HandoverKeyError, match="PKCS#8"):
        HandoverKeys.from_dir(tmp_path)
    (tmp_path / f"{OFFICE}.pub").write_text("nothing here")
    with pytest.raises(HandoverKeyError, match="no PEM public key"):
        HandoverTrust.from_dir(tmp_path)


@pytest.mark.parametrize("environment", ["production", "staging"])
def test_production_without_a_key_dir_is_a_clear_startup_error(environment: str) -> None:
    env = HandoverSettings(environment=environment, handover_key_dir=None, handover_trust_dir=None)
    with pytest.raises(HandoverKeyError, match="TONGBAN_HANDOVER_KEY_DIR is not set") as err:
        load_keys(env)
    assert "tongban handover-keys generate" in str(err.value)
    with pytest.raises(HandoverKeyError, match="TONGBAN_HANDOVER_TRUST_DIR is not set"):
        load_trust(env)


def test_key_dir_that_is_missing_or_empty_is_an_error(tmp_path: Path) -> None:
    missing = HandoverSettings(environment="production", handover_key_dir=tmp_path / "nope")
    with pytest.raises(HandoverKeyError, match="is not a directory"):
        load_keys(missing)
    empty = HandoverSettings(environment="dev", handover_key_dir=tmp_path)
    with pytest.raises(HandoverKeyError, match="holds no <office_code>.key"):
        load_keys(empty)


# --------------------------------------------------------------------------- intake


def test_intake_signs_counter_submissions_only(keys: HandoverKeys, trust: HandoverTrust) -> None:
    handover = submission_handover(
        case_id=CASE, application=application(), submitted_at=SIGNED_AT, keys=keys
    )
    assert handover is not None and handover.signed_at == SIGNED_AT
    assert verify(handover, trust).ok
    online = submission_handover(
        case_id=CASE, application=application(office=None), submitted_at=SIGNED_AT, keys=keys
    )
    assert online is None


def test_intake_without_the_offices_key_refuses_with_503(tmp_path: Path) -> None:
    write_office_keys(tmp_path, OTHER)
    with pytest.raises(Refused) as err:
        submission_handover(
            case_id=CASE,
            application=application(),
            submitted_at=SIGNED_AT,
            keys=HandoverKeys.from_dir(tmp_path),
        )
    refusal = err.value.refusal
    assert refusal.status == 503 and refusal.code == "handover_key_missing"


# --------------------------------------------------------------------------- CLI


def test_cli_generates_a_key_pair_per_catalog_office(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(base_catalog(), ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "keys"
    runner = CliRunner()
    result = runner.invoke(
        cli, ["handover-keys", "generate", "--catalog", str(catalog), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    offices = [o["code"] for o in base_catalog()["offices"]]
    for office in offices:
        assert stat.S_IMODE((out / f"{office}.key").stat().st_mode) == 0o600
        assert (out / f"{office}.pub").is_file()
    keys = HandoverKeys.from_dir(out)
    assert keys.offices == sorted(offices)
    assert keys.key_id(OFFICE).split(":")[1] in result.output
    again = runner.invoke(
        cli, ["handover-keys", "generate", "--catalog", str(catalog), "--out", str(out)]
    )
    assert again.exit_code == 1 and "exist already" in again.output
    help_text = runner.invoke(cli, ["handover-keys", "generate", "--help"])
    assert help_text.exit_code == 0 and "--catalog" in help_text.output


# --------------------------------------------------------------------------- property

_CODE = st.from_regex(r"[A-Z]{1,4}-[0-9]{1,4}", fullmatch=True)
_HASH = st.binary(min_size=1, max_size=16).map(lambda b: hashlib.sha256(b).hexdigest())
# No control characters: contracts.common.Text and Code refuse them (NUL; any, in codes).
_TEXT = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=30).filter(
    lambda s: s.strip() != ""
)

# Every field of the application, with a strategy for a value of its type.
FIELDS: dict[tuple[Any, ...], Any] = {
    ("item_code",): _CODE,
    ("channel",): st.sampled_from([c.value for c in Channel]),
    ("applicant", "category"): st.sampled_from([c.value for c in Category]),
    ("applicant", "name"): _TEXT,
    ("applicant", "id_number"): st.one_of(
        st.builds(resident_id, st.from_regex(r"[1-6][0-9]{16}", fullmatch=True)),
        st.builds(credit_code, st.just("91350100M000100Y4")),
    ),
    ("applicant", "phone"): st.one_of(st.none(), st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True)),
    ("applicant", "division_code"): _CODE,
    ("materials", 0, "code"): _CODE,
    ("materials", 0, "sha256"): st.one_of(st.none(), _HASH),
    ("materials", 1, "sha256"): st.one_of(st.none(), _HASH),
    ("materials", 2, "e_license_id"): st.one_of(st.none(), _TEXT),
    ("delivery", "method"): st.sampled_from([m.value for m in DeliveryMethod]),
    ("delivery", "address"): st.one_of(st.none(), _TEXT),
}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_random_single_field_change_is_always_detected(
    data: st.DataObject, keys: HandoverKeys, trust: HandoverTrust
) -> None:
    original = application()
    handover = sign(keys, original)
    path = data.draw(st.sampled_from(sorted(FIELDS, key=str)), label="field")
    value = data.draw(FIELDS[path], label="value")
    raw = original.model_dump(mode="json")
    holder = raw
    for step in path[:-1]:
        holder = holder[step]
    assume(holder[path[-1]] != value)
    holder[path[-1]] = value
    altered = Application.model_validate(raw)
    check = verify(handover, trust, altered)
    assert not check.ok
    assert check.reason is HandoverRefusal.digest_mismatch


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(office=st.sampled_from([OFFICE, OTHER, "T-MC", "T1-DC"]), flip=st.integers(0, 63))
def test_a_flipped_signature_bit_is_always_refused(
    office: str, flip: int, keys: HandoverKeys
) -> None:
    app = application(office)
    handover = sign(keys, app)
    raw = bytearray(base64.b64decode(handover.signature))
    raw[flip] ^= 0x01
    tampered = handover.model_copy(update={"signature": base64.b64encode(bytes(raw)).decode()})
    check = verify(tampered, HandoverTrust.dev(SEED), app)
    assert check.reason is HandoverRefusal.bad_signature


def test_key_id_names_office_and_fingerprint() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    kid = key_id_for(OFFICE, key)
    office, fingerprint = kid.split(":")
    assert office == OFFICE and len(fingerprint) == 8
    assert fingerprint == hashlib.sha256(key.public_bytes_raw()).hexdigest()[:8]
