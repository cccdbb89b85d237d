"""What a service's handlers wrote into its outbox, held back from the stack's relay.

Integration tests that call a service's handlers directly write into that service's real
schema, where the stack's own relay (the e2e services run through the whole test session)
would publish every committed row to the real topics and then delete it. While an
`OutboxCapture` is active, the rows whose key starts with the test's prefix are marked sent in
the transaction that wrote them, right after the outbox flushed them (`before_commit`): the
relay reads only unsent rows, so it never sees them, and they stay exactly as committed (a
transaction that rolls back or dies takes its mark with it) for the test to read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

import services.common.outbox  # noqa: F401  # its before_commit flush must be registered first

_MATCH = "position(CAST(:prefix AS bytea) IN key) = 1"


@dataclass(frozen=True)
class EmittedEvent:
    case_id: str
    type: str
    data: dict[str, Any]


class OutboxCapture:
    def __init__(self, schema: str, key_prefix: str) -> None:
        self.schema = schema
        self.key_prefix = key_prefix

    def __enter__(self) -> OutboxCapture:
        # Listeners run in the order they were added: the outbox's own flush comes first.
        event.listen(Session, "before_commit", self._hold)
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        event.remove(Session, "before_commit", self._hold)

    def _hold(self, session: Session) -> None:
        session.execute(
            text(
                f'UPDATE "{self.schema}".outbox SET sent_at = now() '
                f"WHERE sent_at IS NULL AND {_MATCH}"
            ),
            {"prefix": self.key_prefix.encode()},
        )

    async def events(self, sessions: async_sessionmaker[AsyncSession]) -> list[EmittedEvent]:
        """Every event written under the prefix, in the order it was written."""
        async with sessions() as session:
            rows = await session.execute(
                text(
                    f'SELECT key, value, headers FROM "{self.schema}".outbox '
                    f"WHERE {_MATCH} ORDER BY id"
                ),
                {"prefix": self.key_prefix.encode()},
            )
            return [
                EmittedEvent(r.key.decode(), dict(r.headers)["ce_type"], json.loads(r.value))
                for r in rows
            ]

    async def types(self, sessions: async_sessionmaker[AsyncSession], case_id: str) -> list[str]:
        return [e.type for e in await self.events(sessions) if e.case_id == case_id]

    async def discard(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        async with sessions() as session, session.begin():
            await session.execute(
                text(f'DELETE FROM "{self.schema}".outbox WHERE {_MATCH}'),
                {"prefix": self.key_prefix.encode()},
            )
