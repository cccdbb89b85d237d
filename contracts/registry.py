"""The checked-in contract artefacts, for code and tests that check data against them.

`contracts/generate.py` writes them from the models; this module only reads the files, so
what it hands out is exactly what other systems get (DESIGN.md §4):

- `schema_for("gov.case.routed.v1")`: the JSON Schema (draft 2020-12) of that event's data;
- `validate_event(type, data)`: raise `jsonschema.ValidationError` unless `data` (the decoded
  record value) satisfies it, formats included (`date-time` needs an RFC 3339 offset);
- `rest_schema_for("SubmissionResponse")`, `catalog_schema()`, `asyncapi_document()`.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import yaml
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for as _jsonschema_validator_for

SCHEMA_BASE_URL = "https://tongban.example/schemas/"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_ROOT = files("contracts")

# JSON Schema's `date-time` is RFC 3339 `date-time`: the offset is mandatory. jsonschema checks
# it only when the optional rfc3339-validator is installed, so check it here.
_RFC3339_DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})$", re.IGNORECASE
)


def _is_rfc3339_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if not _RFC3339_DATE_TIME.match(instance):
        return False
    datetime.fromisoformat(instance.upper())  # ValueError for a day or hour out of range
    return True


FORMAT_CHECKER = FormatChecker(formats=())
FORMAT_CHECKER.checkers.update(Draft202012Validator.FORMAT_CHECKER.checkers)
FORMAT_CHECKER.checks("date-time", raises=ValueError)(_is_rfc3339_date_time)


def _path(*parts: str) -> Traversable:
    return _ROOT.joinpath(*parts)


@cache
def _load_json(*parts: str) -> dict[str, Any]:
    node = _path(*parts)
    if not node.is_file():
        raise FileNotFoundError(
            f"no contract file {'/'.join(parts)} (python -m contracts.generate)"
        )
    loaded: dict[str, Any] = json.loads(node.read_text(encoding="utf-8"))
    return loaded


def event_types() -> list[str]:
    """The event types that have a checked-in schema, sorted."""
    return sorted(
        node.name.removesuffix(".json")
        for node in _path("schemas").iterdir()
        if node.is_file() and node.name.endswith(".json") and node.name != "catalog.json"
    )


def schema_for(event_type: str) -> dict[str, Any]:
    """The JSON Schema of the data of `event_type` (a CloudEvents type), as checked in."""
    try:
        return copy.deepcopy(_load_json("schemas", f"{event_type}.json"))
    except FileNotFoundError:
        raise KeyError(f"no contract schema for event type {event_type!r}") from None


schemas_for = schema_for
"""Alias of `schema_for`."""


def rest_schema_for(name: str) -> dict[str, Any]:
    """The JSON Schema of a REST body of contracts/rest.py, e.g. `SubmissionResponse`."""
    try:
        return copy.deepcopy(_load_json("schemas", "rest", f"{name}.json"))
    except FileNotFoundError:
        raise KeyError(f"no contract schema for REST body {name!r}") from None


def catalog_schema() -> dict[str, Any]:
    """The JSON Schema of a catalog (raises FileNotFoundError until contracts.catalog exists)."""
    return copy.deepcopy(_load_json("schemas", "catalog.json"))


def make_validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A draft 2020-12 validator for one of the generated schemas, checking formats."""
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FORMAT_CHECKER)


@cache
def validator_for(event_type: str) -> Draft202012Validator:
    return make_validator(schema_for(event_type))


def validate_event(event_type: str, data: Any) -> None:
    """Raise `jsonschema.ValidationError` (the most relevant error) unless `data` conforms."""
    validator_for(event_type).validate(data)


def asyncapi_document() -> dict[str, Any]:
    """The checked-in AsyncAPI 3.0 document (contracts/asyncapi.yaml)."""
    loaded: dict[str, Any] = yaml.safe_load(_path("asyncapi.yaml").read_text(encoding="utf-8"))
    return loaded


def asyncapi_validator() -> Validator:
    """A validator for the official AsyncAPI 3.0.0 JSON Schema, vendored (no network needed).

    The vendored file is the bundled variant of @asyncapi/specs whose `$ref`s are all local,
    validated with the draft-07 validator it declares.
    """
    schema = _load_json("vendor", "asyncapi-3.0.0.schema.json")
    cls = _jsonschema_validator_for(schema)
    cls.check_schema(schema)
    validator: Validator = cls(schema)
    return validator
