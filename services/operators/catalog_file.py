"""A catalog file (DESIGN.md §3) read into the plain dict that `validate_catalog`
(services/common/catalog.py) checks: `tongban catalog load FILE`, `tongban tail --catalog`,
the demo and the bench. Routing itself takes the catalog as JSON over REST.

- `load_catalog_file`: JSON for `.json`, YAML for `.yaml`/`.yml`, else by its content;
- `parse_catalog_text`: the same from text.
Codes stay the strings they were written as (`0101` is not the number 65).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


class CatalogFileError(ValueError):
    """The file cannot be read as a catalog at all (syntax, encoding, not a mapping)."""


class _CatalogYamlLoader(yaml.SafeLoader):
    """Safe YAML without implicit integers: codes like `0101` or `310101` stay the strings they
    were written as (YAML 1.1 would read `0101` as octal 65). Integer fields such as
    `time_limit_days` still validate: pydantic reads "5" as 5."""


_CatalogYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_catalog_text(text: str, *, fmt: str | None = None) -> dict[str, Any]:
    """Parse catalog text; `fmt` is "json" or "yaml", or None to tell by the content."""
    text = text.lstrip("\ufeff")
    if fmt is None:
        fmt = "json" if text.lstrip().startswith("{") else "yaml"
    try:
        if fmt == "json":
            data = json.loads(text)
        elif fmt == "yaml":
            data = yaml.load(text, Loader=_CatalogYamlLoader)  # a SafeLoader subclass
        else:
            raise CatalogFileError(f"unknown catalog format {fmt!r}: use json or yaml")
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise CatalogFileError(f"not valid {fmt.upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogFileError(
            "a catalog is a mapping with city, districts, offices, departments, calendar, items; "
            f"got {type(data).__name__}"
        )
    return data


def load_catalog_file(path: str | Path) -> dict[str, Any]:
    """Read a catalog file: JSON for `.json`, YAML for `.yaml`/`.yml`, else by its content."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogFileError(f"cannot read {path}: {exc}") from exc
    suffix = path.suffix.lower()
    fmt = "json" if suffix == ".json" else "yaml" if suffix in {".yaml", ".yml"} else None
    return parse_catalog_text(text, fmt=fmt)
