"""Which events `tongban tail` shows. The facts, the per-case memory and the matching are
shared with the console (services.operators.event_facts); what is the tail's own is refusing a
filter value that can never match (a typo, an unknown district or path) before tailing, and
reading an `EventView`.

`CaseMemory` remembers what earlier events of the same case showed during this tail, so
`--path delegated` keeps following a case after its `routed` event.
"""

from __future__ import annotations

from contracts.common import Mode
from services.cli.ops.events import EventView
from services.operators.event_facts import CaseMemory, EventFilter, Facts, facts_of
from services.policy.catalog_index import CatalogIndex


class FilterError(ValueError):
    """A filter value that can never match (a typo, an unknown district or path)."""


def check_filters(filters: EventFilter, catalog: CatalogIndex | None = None) -> None:
    paths = {m.value for m in Mode}
    bad_paths = sorted(set(filters.paths) - paths)
    if bad_paths:
        raise FilterError(f"unknown path {bad_paths}; choose from {', '.join(sorted(paths))}")
    if filters.districts:
        if catalog is None:
            raise FilterError("--district needs the catalog (--catalog FILE or catalog.v1)")
        unknown = sorted(set(filters.districts) - set(catalog.districts))
        if unknown:
            raise FilterError(
                f"unknown district {unknown}; the catalog's districts are "
                f"{', '.join(sorted(catalog.districts)) or '(none)'}"
            )


def facts_of_view(view: EventView) -> Facts:
    return facts_of(view.data, view.headers.get("ce_handledby"), view.headers.get("ce_fromcity"))


def select(
    view: EventView,
    filters: EventFilter,
    *,
    memory: CaseMemory | None = None,
    catalog: CatalogIndex | None = None,
) -> bool:
    """The whole decision for one event: its facts, merged with its case's, then the match."""
    facts = Facts()
    if filters.needs_facts:
        facts = facts_of_view(view)
        if memory is not None:
            facts = memory.learn(view.case_id, facts)
    return filters.matches(case_id=view.case_id, event_type=view.type, facts=facts, catalog=catalog)
