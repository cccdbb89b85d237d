"""The audit hash chain, pure: what verify_chain detects, and what it cannot."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.common.audit import (
    GENESIS_HASH,
    AuditEntry,
    AuditRow,
    ChainHead,
    chain,
    clean_detail,
    entry_hash,
    lock_id,
    verify_chain,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def entries(n: int) -> list[AuditEntry]:
    return [
        AuditEntry(
            seq=i,
            at=T0 + timedelta(seconds=i, microseconds=i),
            actor=f"clerk-{i % 3}",
            role="clerk",
            scope="HC01-DC",
            action="case.read" if i % 2 else "case.decide",
            case_id=f"HC-{i:04d}",
            detail={"decision": "approve"} if i % 2 == 0 else {},
        )
        for i in range(1, n + 1)
    ]


def tamper(rows: list[AuditRow], seq: int, **changes: object) -> list[AuditRow]:
    """Change one row's content in place, keeping its stored hashes (a plain UPDATE)."""
    return [
        replace(r, entry=replace(r.entry, **changes)) if r.entry.seq == seq else r  # type: ignore[arg-type]
        for r in rows
    ]


def test_intact_chain_is_ok_and_names_its_head() -> None:
    rows = chain(entries(10))
    report = verify_chain(rows)
    assert report.ok and report.problem is None and report.first_broken_seq is None
    assert report.rows_checked == 10
    assert (report.head_seq, report.head_hash) == (10, rows[-1].hash)
    assert rows[0].prev_hash == GENESIS_HASH


def test_empty_chain_is_ok() -> None:
    report = verify_chain([])
    assert report.ok and report.rows_checked == 0 and report.head_seq is None


def test_hash_is_sha256_over_prev_hash_and_sorted_canonical_json() -> None:
    import hashlib

    entry = entries(1)[0]
    expected_json = (
        '{"action":"case.read","actor":"clerk-1","at":"2026-03-02T09:00:01.000001+00:00",'
        '"case_id":"HC-0001","detail":{},"role":"clerk","scope":"HC01-DC","seq":1}'
    )
    assert (
        entry_hash(GENESIS_HASH, entry)
        == hashlib.sha256((GENESIS_HASH + expected_json).encode()).hexdigest()
    )


def test_the_same_instant_in_another_zone_hashes_the_same() -> None:
    entry = entries(1)[0]
    shanghai = replace(entry, at=entry.at.astimezone(timezone(timedelta(hours=8))))
    assert entry_hash(GENESIS_HASH, shanghai) == entry_hash(GENESIS_HASH, entry)


@pytest.mark.parametrize(
    "changes",
    [
        {"detail": {"decision": "deny"}},
        {"actor": "mallory"},
        {"at": T0 + timedelta(days=1)},
        {"case_id": "HC-9999"},
        {"action": "case.read"},
        {"role": "admin"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_altered_row_is_reported_at_its_seq(changes: dict[str, object]) -> None:
    rows = tamper(chain(entries(10)), 6, **changes)
    report = verify_chain(rows)
    assert not report.ok
    assert (report.first_broken_seq, report.problem) == (6, "altered")
    assert "seq 6" in report.message and "altered" in report.message
    assert report.rows_checked == 6


def test_deleted_middle_row_is_a_gap() -> None:
    rows = chain(entries(10))
    report = verify_chain([r for r in rows if r.entry.seq != 4])
    assert not report.ok
    assert (report.first_broken_seq, report.problem) == (4, "missing")
    assert "seq 4 missing after seq 3" in report.message


def test_deleted_run_of_rows_names_the_range() -> None:
    rows = chain(entries(10))
    report = verify_chain([r for r in rows if not 4 <= r.entry.seq <= 6])
    assert (report.first_broken_seq, report.problem) == (4, "missing")
    assert "seq 4..6" in report.message


def test_deleted_first_row_is_a_gap_at_one() -> None:
    report = verify_chain(chain(entries(5))[1:])
    assert (report.first_broken_seq, report.problem) == (1, "missing")


def test_deleted_and_renumbered_rows_break_the_link() -> None:
    """A tamperer deletes seq 4 and renumbers the rest (recomputing each row's own hash but
    not the chain): the link from seq 3 no longer holds."""
    rows = chain(entries(10))
    renumbered = [
        AuditRow(entry=(e := replace(r.entry, seq=r.entry.seq - 1)), prev_hash=r.prev_hash,
                 hash=entry_hash(r.prev_hash, e))
        for r in rows[4:]
    ]  # fmt: skip
    report = verify_chain([*rows[:3], *renumbered])
    assert (report.first_broken_seq, report.problem) == (4, "relinked")


def test_rewritten_row_with_a_fresh_hash_breaks_the_next_link() -> None:
    rows = chain(entries(10))
    forged_entry = replace(rows[5].entry, actor="mallory")
    forged = AuditRow(
        entry=forged_entry,
        prev_hash=rows[5].prev_hash,
        hash=entry_hash(rows[5].prev_hash, forged_entry),
    )
    report = verify_chain([*rows[:5], forged, *rows[6:]])
    assert (report.first_broken_seq, report.problem) == (7, "relinked")
    assert "seq 6" in report.message


def test_reordered_rows_are_detected() -> None:
    rows = chain(entries(10))
    # Rows handed over out of seq order.
    swapped = [*rows[:3], rows[4], rows[3], *rows[5:]]
    assert not verify_chain(swapped).ok
    # Two rows swap places and seq numbers, each rehashed on its own: the links break.
    a, b = rows[3].entry, rows[4].entry
    moved = [
        AuditRow(entry=(e := replace(b, seq=4)), prev_hash=rows[4].prev_hash,
                 hash=entry_hash(rows[4].prev_hash, e)),
        AuditRow(entry=(e := replace(a, seq=5)), prev_hash=rows[3].prev_hash,
                 hash=entry_hash(rows[3].prev_hash, e)),
    ]  # fmt: skip
    report = verify_chain([*rows[:3], *moved, *rows[5:]])
    assert (report.first_broken_seq, report.problem) == (4, "relinked")


def test_duplicated_row_is_out_of_order() -> None:
    rows = chain(entries(5))
    report = verify_chain([*rows[:3], rows[2], *rows[3:]])
    assert (report.first_broken_seq, report.problem) == (3, "out_of_order")


def test_forged_genesis_link_is_detected() -> None:
    rows = chain(entries(3), prev_hash="f" * 64)
    report = verify_chain(rows)
    assert (report.first_broken_seq, report.problem) == (1, "relinked")


def test_deleted_newest_rows_are_invisible_to_the_chain_alone() -> None:
    """A limitation by construction: a chain cut at its end is a shorter intact chain.
    The mitigation is an anchor: publish `head()` periodically outside the database's reach
    and check against the last published head."""
    rows = chain(entries(10))
    published = ChainHead(seq=10, hash=rows[-1].hash)
    truncated = rows[:8]
    assert verify_chain(truncated).ok  # undetectable without an anchor
    report = verify_chain(truncated, anchor=published)
    assert not report.ok
    assert (report.first_broken_seq, report.problem) == (9, "missing")
    assert "anchored seq 10" in report.message
    assert verify_chain(rows, anchor=published).ok
    # Rows appended after the anchor was taken are fine.
    assert verify_chain(rows, anchor=ChainHead(seq=7, hash=rows[6].hash)).ok


def test_a_chain_rebuilt_from_scratch_differs_from_the_anchor() -> None:
    rows = chain(entries(10))
    published = ChainHead(seq=10, hash=rows[-1].hash)
    rebuilt = chain(tamper(rows, 2, actor="mallory")[i].entry for i in range(10))
    assert verify_chain(rebuilt).ok  # every hash recomputed: consistent on its own
    report = verify_chain(rebuilt, anchor=published)
    assert (report.first_broken_seq, report.problem) == (10, "anchor_mismatch")


def test_detail_is_masked_and_kept_json_stable() -> None:
    cleaned = clean_detail({"phone": "13812341234", "note": "id 11010519491231002X", "n": 3})
    assert cleaned == {"phone": "138****1234", "note": "id 1101**********002X", "n": 3}
    assert clean_detail(None) == {}
    with pytest.raises(TypeError, match="float"):
        clean_detail({"score": 0.5})
    with pytest.raises(ValueError, match="bytes"):
        clean_detail({"blob": "x" * 5000})


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        entry_hash(GENESIS_HASH, replace(entries(1)[0], at=datetime(2026, 1, 1)))


def test_lock_id_is_stable_per_schema_and_fits_bigint() -> None:
    assert lock_id("intake") == lock_id("intake") != lock_id("routing")
    assert -(2**63) <= lock_id("intake") < 2**63
