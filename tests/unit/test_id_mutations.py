"""Any single-character change or adjacent swap in a valid resident ID number or unified
social credit code is refused (GB 11643 / GB 32100 check characters catch them all)."""

from __future__ import annotations

import random
from datetime import date

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from contracts.common import Category
from services.cli.applicants import USCC_ALPHABET, credit_code, resident_id
from services.intake.domain.validation import id_number_problem

pytestmark = pytest.mark.unit

TODAY = date(2026, 11, 29)
RIC_ALPHABET = "0123456789X"

seeds = st.integers(min_value=0, max_value=2**32)


def _mutations(valid: str, position: int, replacement: str) -> str:
    return valid[:position] + replacement + valid[position + 1 :]


@settings(max_examples=400)
@given(seed=seeds, position=st.integers(0, 17), replacement=st.sampled_from(RIC_ALPHABET))
def test_any_single_character_change_of_a_resident_id_is_refused(
    seed: int, position: int, replacement: str
) -> None:
    valid = resident_id(random.Random(seed))
    assert id_number_problem(Category.individual, valid, today=TODAY) is None
    changed = _mutations(valid, position, replacement)
    assume(changed != valid)
    assert id_number_problem(Category.individual, changed, today=TODAY) is not None


@settings(max_examples=400)
@given(seed=seeds, position=st.integers(0, 16))
def test_any_adjacent_swap_in_a_resident_id_is_refused(seed: int, position: int) -> None:
    valid = resident_id(random.Random(seed))
    swapped = valid[:position] + valid[position + 1] + valid[position] + valid[position + 2 :]
    assume(swapped != valid)
    assert id_number_problem(Category.individual, swapped, today=TODAY) is not None


@settings(max_examples=400)
@given(seed=seeds, position=st.integers(0, 17), replacement=st.sampled_from(USCC_ALPHABET))
def test_any_single_character_change_of_a_credit_code_is_refused(
    seed: int, position: int, replacement: str
) -> None:
    valid = credit_code(random.Random(seed))
    assert id_number_problem(Category.enterprise, valid, today=TODAY) is None
    changed = _mutations(valid, position, replacement)
    assume(changed != valid)
    assert id_number_problem(Category.enterprise, changed, today=TODAY) is not None


@settings(max_examples=400)
@given(seed=seeds, position=st.integers(0, 16))
def test_any_adjacent_swap_in_a_credit_code_is_refused(seed: int, position: int) -> None:
    valid = credit_code(random.Random(seed))
    swapped = valid[:position] + valid[position + 1] + valid[position] + valid[position + 2 :]
    assume(swapped != valid)
    assert id_number_problem(Category.enterprise, swapped, today=TODAY) is not None
