"""A service consumer's fetch is bounded (CommonSettings.consumer_fetch_max_bytes and
consumer_partition_fetch_bytes): the client buffers a whole fetch response, so with the
library's defaults (50 MiB, 1 MiB a partition) a consumer that fell behind held tens of MB."""

from __future__ import annotations

import pytest

from services.common.kafka import make_consumer
from services.common.settings import CommonSettings

pytestmark = pytest.mark.unit


async def test_a_service_consumer_fetches_what_its_settings_allow() -> None:
    settings = CommonSettings(consumer_fetch_max_bytes=65_536, consumer_partition_fetch_bytes=8_192)
    consumer = make_consumer(settings, "case.intake.v1", group_id="intake-events")
    # What aiokafka hands its fetcher at start() (no broker is contacted here).
    assert consumer._fetch_max_bytes == 65_536
    assert consumer._max_partition_fetch_bytes == 8_192


def test_the_default_fetch_is_about_one_batch() -> None:
    settings = CommonSettings()
    assert settings.consumer_fetch_max_bytes <= 2 * 1024 * 1024
    assert settings.consumer_partition_fetch_bytes <= settings.consumer_fetch_max_bytes
