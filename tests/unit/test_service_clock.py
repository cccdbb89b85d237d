"""The services' clock (services/common/clock.py) and its one setting, TONGBAN_CLOCK_OFFSET_S:
shifted in dev and test, refused elsewhere, read by every service and by the events it emits."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from contracts.events import CaseWithdrawn
from services.approval.app import ApprovalSettings
from services.common.clock import ServiceClock
from services.common.service import ServiceRuntime, ServiceSettings
from services.common.settings import CommonSettings
from services.delivery.app import DeliverySettings
from services.intake.app import IntakeSettings
from services.routing.app import RoutingSettings

DAY = 24 * 3600
SERVICE_SETTINGS = (IntakeSettings, RoutingSettings, ApprovalSettings, DeliverySettings)


def test_an_unshifted_clock_is_the_wall_clock_in_utc() -> None:
    before = datetime.now(UTC)
    now = ServiceClock().now()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
    assert before <= now <= datetime.now(UTC)


def test_a_shifted_clock_runs_ahead_by_its_offset() -> None:
    before = datetime.now(UTC)
    now = ServiceClock.shifted_by(3 * DAY).now()
    assert before + timedelta(days=3) <= now <= datetime.now(UTC) + timedelta(days=3)


def test_today_is_the_citys_date_not_utcs() -> None:
    # 17:00 UTC on 1 January is 01:00 on 2 January in the city (UTC+8).
    target = datetime(2030, 1, 1, 17, 0, tzinfo=UTC)
    clock = ServiceClock(target - datetime.now(UTC))
    assert clock.now().date() == date(2030, 1, 1)
    assert clock.today() == date(2030, 1, 2)


@pytest.mark.parametrize("settings_class", SERVICE_SETTINGS)
def test_every_service_reads_the_offset_from_the_environment(
    settings_class: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TONGBAN_CLOCK_OFFSET_S", str(2 * DAY))
    settings = settings_class(environment="test")
    before = datetime.now(UTC)
    assert ServiceRuntime(settings).clock.now() >= before + timedelta(days=2)


@pytest.mark.parametrize("environment", ["production", "staging"])
@pytest.mark.parametrize("settings_class", [CommonSettings, *SERVICE_SETTINGS])
def test_a_shifted_clock_is_refused_outside_dev_and_test(
    settings_class: type[CommonSettings], environment: str
) -> None:
    # A token key of its own, as production needs (the other start-up checks pass).
    production: dict[str, Any] = {"environment": environment, "auth_jwt_secret": "k" * 40}
    with pytest.raises(ValidationError, match="TONGBAN_CLOCK_OFFSET_S .* dev and test only"):
        settings_class(**production, clock_offset_s=60)
    # Unshifted, the same settings are taken.
    assert settings_class(**production).clock_offset_s == 0


def test_the_clock_only_goes_ahead() -> None:
    with pytest.raises(ValidationError, match="clock_offset_s"):
        CommonSettings(environment="dev", clock_offset_s=-60)


def test_emitted_events_carry_the_shifted_time() -> None:
    runtime = ServiceRuntime(ServiceSettings(service="intake", clock_offset_s=10 * DAY))
    before = datetime.now(UTC)
    _topic, envelope = runtime.envelope(CaseWithdrawn(case_id="C-1", withdrawn_at=before))
    assert envelope.time >= before + timedelta(days=10)
    assert envelope.time <= runtime.clock.now()
