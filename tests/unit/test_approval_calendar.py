"""approval's copy of the catalog calendar: the version a route names, else the latest."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from contracts.events import CatalogPublished
from services.approval.handlers import build_calendar, calendar_for
from services.common.catalog_follower import CatalogFollower
from services.common.settings import CommonSettings
from services.common.workdays import WorkCalendar

pytestmark = pytest.mark.unit


def published(version: int, covers_until: str) -> CatalogPublished:
    return CatalogPublished(
        version=version,
        loaded_at=datetime(2026, 1, 1, tzinfo=UTC),
        catalog={
            "calendar": {
                "covers_until": covers_until,
                "holidays": ["2026-10-01"],
                "workdays": ["2026-10-10"],
            }
        },
    )


def test_the_calendar_of_a_catalog_version() -> None:
    calendar = build_calendar(published(1, "2026-12-31"))
    assert calendar == WorkCalendar(
        covers_until=date(2026, 12, 31),
        holidays=frozenset({date(2026, 10, 1)}),
        workdays=frozenset({date(2026, 10, 10)}),
    )


def test_a_catalog_without_calendar_is_unreadable_not_a_crash() -> None:
    # The follower skips a record whose build raises ValueError (pydantic's ValidationError).
    with pytest.raises(ValueError):
        build_calendar(CatalogPublished(version=1, loaded_at=datetime.now(UTC), catalog={}))


def test_the_route_names_the_version_else_the_latest() -> None:
    follower: CatalogFollower[WorkCalendar] = CatalogFollower(CommonSettings(), build_calendar)
    assert calendar_for(follower, 1) is None
    follower.apply(published(1, "2026-12-31"))
    follower.apply(published(2, "2027-12-31"))
    assert calendar_for(follower, 1) is not None
    assert calendar_for(follower, 1).covers_until == date(2026, 12, 31)  # type: ignore[union-attr]
    assert calendar_for(follower, 2).covers_until == date(2027, 12, 31)  # type: ignore[union-attr]
    assert calendar_for(follower, 7).covers_until == date(2027, 12, 31)  # type: ignore[union-attr]
