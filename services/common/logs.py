"""Structured JSON logs (structlog) with personal data masked before anything is written.

Resident ID numbers, credit codes, phones and names travel through every service; a log line
is read by operators who must never see them in clear (DESIGN: personal data is masked).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

# Keys whose values are personal data wherever they appear in a log event or a payload.
# Names and addresses of people, masked to their first character (item_name, department names
# are not personal and stay); ID numbers and phones under any prefix (`applicant_id_number`,
# `holder_phone`) get their own masks.
PERSONAL_KEYS = frozenset({"name", "applicant_name", "holder_name", "address", "delivery_address"})

_ID_LIKE = re.compile(r"(?<![0-9A-Za-z])([0-9A-HJ-NPQRTUWXY]{18})(?![0-9A-Za-z])")
_PHONE_LIKE = re.compile(r"(?<!\d)(1[3-9]\d{9})(?!\d)")


def mask_id_number(value: str) -> str:
    """`110101199003070012` -> `1101**********0012`: region and last 4 stay for support."""
    if len(value) <= 8:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


def mask_phone(value: str) -> str:
    """`13812341234` -> `138****1234`."""
    if len(value) < 7:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


def mask_name(value: str) -> str:
    """`张三` -> `张*`, `Li Lei` -> `L*****`: the first character only."""
    if not value:
        return value
    return value[0] + "*" * (len(value) - 1)


def mask_text(text: str) -> str:
    """Mask ID numbers, credit codes and mobile numbers embedded in free text."""
    text = _ID_LIKE.sub(lambda m: mask_id_number(m.group(1)), text)
    return _PHONE_LIKE.sub(lambda m: mask_phone(m.group(1)), text)


def _mask_value(key: str, value: Any) -> Any:
    if isinstance(value, Mapping):
        return mask_personal_data(value)
    if isinstance(value, list | tuple):
        return [_mask_value(key, v) for v in value]
    if not isinstance(value, str):
        return value
    if key == "id_number" or key.endswith("_id_number"):
        return mask_id_number(value)
    if key == "phone" or key.endswith("_phone"):
        return mask_phone(value)
    if key in PERSONAL_KEYS:
        return mask_name(value)
    return mask_text(value)


def mask_personal_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `data` (nested dicts and lists too) with every personal field masked."""
    return {k: _mask_value(k, v) for k, v in data.items()}


def _mask_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return mask_personal_data(event_dict)


def configure_logging(*, service: str, level: str = "INFO", json: bool = True) -> None:
    """Route structlog and the standard library through one JSON (or console) renderer."""
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if json
        else structlog.dev.ConsoleRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _mask_processor,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries (aiokafka, uvicorn, sqlalchemy) log through stdlib; render them the same way.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
