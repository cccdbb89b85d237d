"""Refusals: why a request or a command cannot apply, said in domain words, without the web.

The one error style of the services (the shape `approval/review.py` set): domain code and
handlers return a `Refusal` (pure rules that decide) or raise `Refused` (handlers inside a
unit of work, so the transaction rolls back); only the HTTP edge turns a refusal into RFC 9457
problem JSON (`services.common.web.problem_of`, and the app's handler for `Refused`). No domain
or handler module imports web types.

`status` is the HTTP status the refusal is answered with: a stable part of the REST contract
(DESIGN.md §4), like `code`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class FieldError:
    """One field to fix: where (`applicant.id_number`, `materials.0.code`), what is wrong, and
    optionally the stable code of that field's problem."""

    field: str
    message: str
    code: str | None = None

    def as_dict(self) -> dict[str, str]:
        out = {"field": self.field, "message": self.message}
        if self.code is not None:
            out["code"] = self.code
        return out


@dataclass(frozen=True, slots=True)
class Refusal:
    """Stable `code`, `status`, a short `title`, the `detail` that says how to fix it, the
    fields at fault, and any further members of the answer (`guidance`, `retry_after`)."""

    status: int
    code: str
    title: str
    detail: str
    errors: tuple[FieldError, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


class Refused(Exception):
    """Raised by a handler whose command is refused; the transaction it runs in rolls back."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.detail)
        self.refusal = refusal


def refused(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    errors: tuple[FieldError, ...] = (),
    **extra: Any,
) -> Refused:
    """`raise refused(404, "case_not_found", ...)`: a refusal ready to raise."""
    return Refused(Refusal(status, code, title, detail, errors, extra))
