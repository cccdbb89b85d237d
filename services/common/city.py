"""The city's time zone: dates of deadlines, licences, rating periods and operator views are
city-local, whatever zone the machine runs in."""

from __future__ import annotations

from zoneinfo import ZoneInfo

CITY_TZ = ZoneInfo("Asia/Shanghai")
