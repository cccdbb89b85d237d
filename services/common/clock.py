"""The service's clock: what every time-based rule calls "now" (deadlines, SLA timers, the
catalog version in force, issue times, the `ce_time` of emitted events).

In production it is the wall clock. In dev and test `TONGBAN_CLOCK_OFFSET_S` runs it ahead by
a fixed amount (services/common/settings.py refuses it elsewhere), so end-to-end tests pass due
dates by restarting the services shifted, never by sleeping. Handlers read it from
`runtime.clock` and hand `now` / `today` to the domain functions, which stay pure.
Plumbing times (token expiry, logs, metrics, retry backoff, inbox pruning) stay on the wall
clock: a shifted clock must not expire the caller's token or prune the inbox early.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from services.common.city import CITY_TZ


@dataclass(frozen=True, slots=True)
class ServiceClock:
    offset: timedelta = timedelta(0)

    @classmethod
    def shifted_by(cls, seconds: float) -> ServiceClock:
        return cls(timedelta(seconds=seconds))

    def now(self) -> datetime:
        """The current instant, aware, in UTC (shifted by the offset)."""
        return datetime.now(UTC) + self.offset

    def today(self) -> date:
        """The current date in the city's time zone (shifted by the offset)."""
        return self.now().astimezone(CITY_TZ).date()
