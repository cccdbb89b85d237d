"""Department topics: every routed case is also written to its department's own topic.

`gov.case.routed.v1` goes to `case.routing.v1` (approval and intake read it) and, as the very
same record (same `ce_id`, the same `ce_*` headers with `ce_handledby`, key = case id), to
`dept.<code>.cases.v1` of the handling department (`services.common.kafka.department_topic`),
so broker ACLs can let a department's system read its own cases and nothing else
(deploy/README.md). Both rows go into the outbox in the routing transaction.

Topics are created (idempotently) when a catalog version is loaded, after its commit, for every
department in it, and again at start-up for the latest version. Auto-creation is off on our
brokers, so a department topic that does not exist would hold the outbox relay (it retries the
same batch until the publish succeeds, keeping order). Hence creation never depends on one
attempt:

- the routing path calls `DepartmentTopics.want(code)` (no I/O) for every department it writes
  a copy for; a topic this process has not seen created is queued;
- a background task (`run`) creates the queued topics, retrying with backoff while the broker
  is away or refuses, and logs every failed attempt;
- the same task checks now and then (`recheck_s`) that the topics it has seen still exist,
  and creates again one deleted under a running process;
- the relay's producer waits for the topic's metadata on each attempt, so the held events go
  out as soon as the topic exists. The hold lasts as long as the broker cannot create the
  topic, and no longer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from services.common.envelope import Envelope
from services.common.kafka import department_topic, ensure_department_topics
from services.common.logs import get_logger
from services.common.outbox import Outbox
from services.common.settings import CommonSettings

log = get_logger(__name__)

Ensure = Callable[[CommonSettings, Iterable[str]], Awaitable[list[str]]]

# The outbox's `event_id` is unique per row; the department copy carries the same CloudEvent
# (same ce_id on the wire) under this row id.
COPY_SUFFIX = ":dept"


def department_copy_rows(
    topic: str, envelope: Envelope, department: str | None
) -> list[dict[str, Any]]:
    """The outbox rows of one event: itself on `topic`, and, when a department handles it, the
    same record on the department's topic (same key, value and headers)."""
    rows = [Outbox.row(topic, envelope)]
    if department is not None:
        copy = Outbox.row(department_topic(department), envelope)
        copy["event_id"] = f"{envelope.id}{COPY_SUFFIX}"
        rows.append(copy)
    return rows


class DepartmentTopics:
    """Which department topics exist (as far as this process knows) and the healer that
    creates the missing ones."""

    def __init__(
        self,
        settings: CommonSettings,
        *,
        timeout_s: float = 10.0,
        ensure: Ensure = ensure_department_topics,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        recheck_s: float = 60.0,
    ) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._ensure = ensure
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._recheck_s = recheck_s
        self.known: set[str] = set()  # topic names seen to exist (created or found)
        self._known_codes: set[str] = set()  # their departments
        self.pending: set[str] = set()  # department codes whose topic is still to be created
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()

    def want(self, code: str) -> str:
        """The department's topic; queued for creation unless known to exist. No I/O."""
        topic = department_topic(code)
        if topic not in self.known and code not in self.pending:
            self.pending.add(code)
            self._wake.set()
        return topic

    async def ensure(self, codes: Iterable[str], *, reason: str, recheck: bool = False) -> bool:
        """Create the missing topics of these departments now (bounded wait); `recheck` asks
        the broker even for topics seen before. On failure the codes stay queued for the
        background task; never raises."""
        wanted = {code for code in codes if recheck or department_topic(code) not in self.known}
        if not wanted:
            return True
        try:
            created = await asyncio.wait_for(
                self._ensure(self.settings, sorted(wanted)), self.timeout_s
            )
        except Exception as exc:  # broker away, refused (ACLs), timed out: retried later
            self.pending |= wanted
            self._wake.set()
            log.error(
                "department topics not checked; they are checked again in the background"
                if recheck
                else "department topics not created; routed cases for these departments wait "
                "in the outbox until they exist; retrying in the background",
                reason=reason,
                departments=sorted(wanted),
                error=repr(exc),
            )
            return False
        self.known.update(department_topic(code) for code in wanted)
        self._known_codes |= wanted
        self.pending -= wanted
        if created or not recheck:
            log.info(
                "department topics ready",
                reason=reason,
                departments=len(wanted),
                created=created,
            )
        return True

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Create queued topics until stopped, backing off while creation fails; every
        `recheck_s`, create again any topic seen before that has gone."""
        backoff = self._backoff_s
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._recheck_s)
            except TimeoutError:
                if self._known_codes and not self.pending:
                    await self.ensure(set(self._known_codes), reason="recheck", recheck=True)
                continue
            self._wake.clear()
            if self._stop.is_set() or not self.pending:
                continue
            if await self.ensure(set(self.pending), reason="retry"):
                backoff = self._backoff_s
                continue
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, self._backoff_max_s)
            self._wake.set()  # still pending: try again
