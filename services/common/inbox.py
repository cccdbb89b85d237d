"""Inbox pruning: the inbox stays as big as the window in which a copy of an event can come.

The guarantee: a consumer skips an event it applied as long as a copy of it can still arrive,
that is while the event is on its topic (retention) or can be replayed from the dead-letter
topic. Past that window, its inbox row protects against nothing, and a city's years of events
would make the inbox the largest table. So every process deletes inbox rows older than
`TONGBAN_INBOX_RETENTION_DAYS` (default 30: the dead-letter topic's retention, longer than the
case topics' 7 days):

- off the hot path: a background task, every `TONGBAN_INBOX_PRUNE_INTERVAL_S`;
- in small batches (`TONGBAN_INBOX_PRUNE_BATCH` rows, one short transaction each, a pause
  between them), oldest first along the `processed_at` index, so consumers never wait long
  on it;
- safe from every replica at once: rows are taken with `FOR UPDATE SKIP LOCKED`, a row
  another replica is deleting is skipped, none is deleted twice;
- never the catalog follower's rows: `catalog.v1` is compacted, not retained, and every
  process re-reads it from the beginning at start-up, so its dead-letter marks must stay.

Case records and the audit trail are not touched: they are kept as the law asks.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.failures import describe_error, is_infrastructure_error
from services.common.logs import get_logger
from services.common.metrics import INBOX_PRUNED
from services.common.settings import CommonSettings

log = get_logger(__name__)

# The inbox consumer under which unreadable catalog records are marked dead-lettered.
CATALOG_FOLLOWER = "catalog-follower"


class InboxPruner:
    def __init__(
        self, settings: CommonSettings, *, sessions: async_sessionmaker[AsyncSession], schema: str
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self._stop = asyncio.Event()
        # ctid = ANY(ARRAY(...)): a TID scan of exactly the rows the index range found.
        self._delete = text(
            f'DELETE FROM "{schema}".inbox WHERE ctid = ANY(ARRAY('
            f'SELECT ctid FROM "{schema}".inbox '
            "WHERE processed_at < now() - make_interval(secs => :retention_s) "
            "AND consumer <> :kept ORDER BY processed_at LIMIT :batch "
            "FOR UPDATE SKIP LOCKED))"
        )

    def stop(self) -> None:
        self._stop.set()

    async def prune(self) -> int:
        """Delete every row past the retention, batch by batch; the number deleted."""
        total = 0
        while not self._stop.is_set():
            deleted = await self.prune_batch()
            total += deleted
            if deleted < self.settings.inbox_prune_batch:
                break
            await self._pause(self.settings.inbox_prune_pause_s)
        if total:
            log.info("inbox pruned", rows=total, older_than_days=self.settings.inbox_retention_days)
        return total

    async def prune_batch(self) -> int:
        """Delete the oldest `inbox_prune_batch` rows past the retention (one transaction)."""
        async with self.sessions() as session, session.begin():
            result = await session.execute(
                self._delete,
                {
                    "retention_s": self.settings.inbox_retention_days * 86400,
                    "kept": CATALOG_FOLLOWER,
                    "batch": self.settings.inbox_prune_batch,
                },
            )
        deleted = int(getattr(result, "rowcount", 0) or 0)
        INBOX_PRUNED.labels(self.settings.service).inc(deleted)
        return deleted

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.prune()
            except Exception as exc:
                if not is_infrastructure_error(exc):
                    raise  # a bug: the runtime's supervisor logs it and restarts the task
                log.warning(
                    "inbox pruning postponed: database unavailable", error=describe_error(exc)
                )
            await self._pause(self.settings.inbox_prune_interval_s)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass
