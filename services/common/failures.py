"""What kind of failure is this, and the fault injector that proves we handle it.

Infrastructure failures (the database or the network went away, a commit's outcome is
unknown) are never the event's or the request's fault: consumers retry the batch, REST
answers 503 with Retry-After. Everything else is a bug or bad input.
"""

from __future__ import annotations

import random
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from services.common.logs import mask_text

_SQLSTATE_RETRYABLE = {"40001", "40P01", "57P01", "57P02", "57P03", "08000", "08003", "08006"}


class AmbiguousCommitError(TimeoutError):
    """The commit's answer was lost: it may or may not have happened (here: it did).

    Raised only by the fault injector, after a real commit, to prove that every writer
    retries safely: the retry must find its own effect (inbox row, idempotency key) and add
    nothing a second time.
    """


def is_infrastructure_error(exc: BaseException) -> bool:
    """True for failures of the database or network, which retrying will heal."""
    if isinstance(exc, asyncpg.DataError):
        # A value asyncpg cannot send (a lone surrogate, an int beyond int64): the data's
        # fault, never healed by a retry, although asyncpg derives it from InterfaceError.
        return False
    if isinstance(exc, OSError | TimeoutError | ConnectionError | asyncpg.InterfaceError):
        return True
    if isinstance(exc, asyncpg.InternalClientError):
        # asyncpg's protocol met a state it did not expect, as when a terminated backend's
        # FATAL is still being read: a fresh connection heals it (db.forget_if_dead).
        return True
    if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.CannotConnectNowError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return getattr(exc, "sqlstate", None) in _SQLSTATE_RETRYABLE
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(
            exc, sa_exc.OperationalError | sa_exc.InterfaceError
        ):
            return True
        return exc.orig is not None and is_infrastructure_error(exc.orig.__cause__ or exc.orig)
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.ResourceClosedError):
        return True
    cause = exc.__cause__
    return cause is not None and cause is not exc and is_infrastructure_error(cause)


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of the PostgreSQL error behind `exc` (through SQLAlchemy's wrappers)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str):
            return state
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None


def is_data_error(exc: BaseException) -> bool:
    """True when PostgreSQL (or asyncpg) refused the values themselves: SQLSTATE class 22
    (too long for its column, NUL, out of range, malformed). The same values fail the same
    way every time, so retrying is pointless: the event is dead-lettered at once."""
    if isinstance(exc, asyncpg.DataError | UnicodeError):
        return True
    state = _sqlstate(exc)
    return state is not None and state.startswith("22")


def describe_error(exc: BaseException) -> str:
    """A short reason for a dead letter or a log line, without the statement's parameters
    (they may hold personal data): the driver's class, SQLSTATE and first line."""
    cause: BaseException = exc
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException):
        cause = orig.__cause__ or orig
    state = _sqlstate(exc)
    message = (str(cause).splitlines() or [""])[0]
    if isinstance(cause, asyncpg.DataError):
        # "invalid input for query argument $1: <the value> (...)": keep only the first part.
        message = message.split(":", 1)[0]
    text = f"{type(cause).__name__}" + (f" [{state}]" if state else "")
    return f"{text}: {mask_text(message)[:500]}" if message else text


class AmbiguousCommits:
    """Fault injection (tests only): a share of successful commits report a timeout.

    Installed on a session class by `install`; `rate` 0 installs nothing. The exception is
    raised from SQLAlchemy's `after_commit` hook, i.e. after PostgreSQL has made the
    transaction durable, exactly like a connection that dies before the COMMIT's answer
    arrives.
    """

    def __init__(self, rate: float, rng: random.Random | None = None) -> None:
        self.rate = rate
        self.rng = rng or random.Random()
        self.injected = 0

    def install(self, session_class: type[Session]) -> None:
        if self.rate > 0:
            event.listen(session_class, "after_commit", self._after_commit)

    def _after_commit(self, session: Any) -> None:
        self.maybe_raise()

    def maybe_raise(self) -> None:
        """Call right after a commit succeeded (writers outside SQLAlchemy sessions)."""
        if self.rate > 0 and self.rng.random() < self.rate:
            self.injected += 1
            raise AmbiguousCommitError(
                "fault injection: the commit succeeded but its answer was lost"
            )
