"""What a service wrote into its outbox for a test's cases, held back from the stack's relay.

Integration tests that call a service's handlers directly write into that service's real
schema, where the stack's own services (the e2e services run through the whole test session)
are at work too: their relay would publish every committed row to the real topics and then
delete it, and their schedulers may act on the test's rows (approval's SLA scheduler fires
due timers whoever armed them). While an `OutboxCapture` is open, a trigger on the outbox marks
every row whose key starts with the test's prefix as sent when it is inserted, by whichever
process: the relay reads only unsent rows, so it never sees them, and they stay exactly as
committed (a transaction that rolls back takes its rows with it) for the test to read.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

_MATCH = "position(CAST(:prefix AS bytea) IN key) = 1"


@dataclass(frozen=True)
class EmittedEvent:
    case_id: str
    type: str
    data: dict[str, Any]


class OutboxCapture:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], schema: str, key_prefix: str
    ) -> None:
        self.sessions = sessions
        self.schema = schema
        self.key_prefix = key_prefix
        self._hold = f'"{schema}".hold_{uuid.uuid4().hex[:12]}'

    async def __aenter__(self) -> OutboxCapture:
        prefix = self.key_prefix.replace("'", "''")
        await self._run(
            f"CREATE FUNCTION {self._hold}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF position(convert_to('{prefix}', 'UTF8') IN NEW.key) = 1 THEN "
            "NEW.sent_at := now(); END IF; RETURN NEW; END $$",
            f'CREATE TRIGGER {self._hold.split(".")[1]} BEFORE INSERT ON "{self.schema}".outbox '
            f"FOR EACH ROW EXECUTE FUNCTION {self._hold}()",
        )
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        await self._run(f"DROP FUNCTION {self._hold}() CASCADE")  # and its trigger

    async def _run(self, *statements: str) -> None:
        async with self.sessions() as session, session.begin():
            for statement in statements:
                await session.execute(text(statement))

    async def events(self) -> list[EmittedEvent]:
        """Every event written under the prefix, in the order it was written."""
        async with self.sessions() as session:
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

    async def types(self, case_id: str) -> list[str]:
        return [e.type for e in await self.events() if e.case_id == case_id]

    async def discard(self) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(
                text(f'DELETE FROM "{self.schema}".outbox WHERE {_MATCH}'),
                {"prefix": self.key_prefix.encode()},
            )
