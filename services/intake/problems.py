"""Intake's refusals as RFC 9457 problems: the HTTP edge's reading of `validation`'s pure
outcome (the domain module knows nothing of the web, as `approval/review.py` does not)."""

from __future__ import annotations

from typing import Any

from services.common.web import Problem
from services.intake.validation import ValidationResult


def submission_problem(result: ValidationResult) -> Problem:
    """Status 422, the first refusal's code, title and detail, every field error, and
    `guidance` (where to go instead) when an office was refused."""
    first = result.refusal
    if first is None:
        raise ValueError("an accepted submission has no problem")
    errors = [e.as_dict() for r in result.refusals for e in r.errors]
    extra: dict[str, Any] = {}
    guidance = next((r.guidance for r in result.refusals if r.guidance is not None), None)
    if guidance is not None:
        extra["guidance"] = dict(guidance)
    others = [r.detail for r in result.refusals[1:]]
    detail = first.detail + ("" if not others else " Also: " + " ".join(others))
    return Problem(first.status, first.code, first.title, detail, errors=errors, **extra)


def refusal_problem(result: ValidationResult) -> Problem | None:
    """The problem to answer with, or None when the submission is taken."""
    return None if result.ok else submission_problem(result)
