import io
import json
import sys
from typing import Any

import pytest
import structlog

from services.common.logs import (
    configure_logging,
    mask_id_number,
    mask_name,
    mask_personal_data,
    mask_phone,
    mask_text,
)

pytestmark = pytest.mark.unit


def test_id_number_keeps_region_and_last_four() -> None:
    assert mask_id_number("11010519491231002X") == "1101**********002X"


def test_phone_keeps_prefix_and_last_four() -> None:
    assert mask_phone("13812341234") == "138****1234"


def test_name_keeps_first_character() -> None:
    assert mask_name("张三丰") == "张**"
    assert mask_name("") == ""


def test_free_text_is_masked() -> None:
    text = "applicant 11010519491231002X called from 13812341234 about 91350100M000100Y43"
    masked = mask_text(text)
    assert "11010519491231002X" not in masked
    assert "13812341234" not in masked
    assert "91350100M000100Y43" not in masked
    assert "1101**********002X" in masked and "138****1234" in masked


def test_nested_payloads_are_masked() -> None:
    data: dict[str, Any] = {
        "case_id": "HC-1",
        "applicant": {"name": "李四", "id_number": "11010519491231002X", "phone": "13912345678"},
        "materials": [{"code": "M01"}],
    }
    masked = mask_personal_data(data)
    assert masked["applicant"] == {
        "name": "李*",
        "id_number": "1101**********002X",
        "phone": "139****5678",
    }
    assert masked["case_id"] == "HC-1" and masked["materials"] == [{"code": "M01"}]
    assert data["applicant"]["name"] == "李四"  # the original is untouched


def test_log_lines_never_carry_personal_data(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging(service="unit", level="INFO", json=True)
    try:
        structlog.get_logger().info(
            "case taken 11010519491231002X", applicant={"name": "王五", "phone": "13812341234"}
        )
    finally:
        structlog.reset_defaults()
    line = json.loads(buffer.getvalue().strip().splitlines()[-1])
    assert line["event"] == "case taken 1101**********002X"
    assert line["applicant"] == {"name": "王*", "phone": "138****1234"}
    assert line["service"] == "unit" and line["level"] == "info"


def test_decision_events_fields_are_masked_under_their_prefixed_names() -> None:
    masked = mask_personal_data(
        {
            "applicant_name": "赵六",
            "applicant_id_number": "11010519491231002X",
            "delivery_address": "云州市青山区某路1号",
            "item": {"name": "食品经营许可"},
            "holder_phone": "13812341234",
        }
    )
    assert masked["applicant_name"] == "赵*"
    assert masked["applicant_id_number"] == "1101**********002X"
    assert masked["delivery_address"].startswith("云") and "*" in masked["delivery_address"]
    assert masked["holder_phone"] == "138****1234"
    # A catalog item's name is not personal data... but it sits under "name": masked too, on
    # the safe side; operators see item codes in full.
    assert masked["item"]["name"] == "食*****"
