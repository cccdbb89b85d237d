"""The cost per member (issue 18, item 2): what a bundle (一件事, DESIGN.md §8) costs the stack
per member case that closed, against what a single case of the same items costs, in one run.

Pure figures over plain data (no I/O), so the picking of the bench's bundle, the member counting
and the ratio are unit-tested (tests/unit/test_bench_member_cost.py). The measuring itself is in
services/bench/members.py, the table in services/bench/report.py.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

from services.bench.procs import BENCH_CLIENT, LOAD_GENERATOR, MACHINE

# Issue 18's target: a bundle member costs at most 1.5 x a single case. Reported, never asserted.
MEMBER_COST_RATIO_TARGET = 1.5
BENCH_BUNDLE_CODE = "B-BENCH"
# Not the stack under test: the machine's total, the rest of it, the bench and its generator.
NOT_UNDER_TEST = (MACHINE, "others", BENCH_CLIENT, LOAD_GENERATOR)


def in_force(entry: Mapping[str, Any], today: date) -> bool:
    iso = today.isoformat()
    return str(entry.get("effective_from") or "0000") <= iso and (
        entry.get("effective_to") is None or str(entry["effective_to"]) >= iso
    )


def closes_alone(catalog: Mapping[str, Any], bundle: Mapping[str, Any], today: date) -> bool:
    """Every member of the bundle (whatever the answers) is an instant item in force: with
    electronic delivery the bundle closes with no department acting."""
    items = {i["code"]: i for i in catalog["items"]}
    return all(
        (item := items.get(m["item"])) is not None and item.get("instant") and in_force(item, today)
        for m in bundle["members"]
    )


def bundles_closing_alone(catalog: Mapping[str, Any], today: date) -> list[str]:
    """Codes of the catalog's bundles in force that close with no department acting."""
    return [
        b["code"]
        for b in catalog.get("bundles", [])
        if in_force(b, today) and closes_alone(catalog, b, today)
    ]


def bench_bundle(catalog: Mapping[str, Any], today: date, size: int = 3) -> dict[str, Any]:
    """A bundle of `size` instant online items in force of one category (the category with the
    most such items; an online item may be taken at any counter, so at the bundle's window),
    each of another owner where the catalog allows: what the bench measures when no bundle of
    the catalog closes alone."""
    if size < 2:
        raise ValueError("a bundle has at least two members")
    by_category: dict[str, list[dict[str, Any]]] = {}
    for item in sorted(catalog["items"], key=lambda i: str(i["code"])):
        if item.get("instant") and item["mode"] == "online" and in_force(item, today):
            by_category.setdefault(item["category"], []).append(item)
    category, candidates = max(
        by_category.items(), key=lambda kv: (len(kv[1]), kv[0]), default=("", [])
    )
    if len(candidates) < size:
        raise ValueError(
            f"the catalog has no {size} instant online items of one category "
            f"(at most {len(candidates)}): no bundle of them can close alone"
        )
    # Other owners first (members go to several departments, as a bundle's do), then the rest.
    owners: set[str] = set()
    chosen: list[dict[str, Any]] = []
    for item in candidates:
        if item["owner"] not in owners:
            owners.add(item["owner"])
            chosen.append(item)
    chosen += [i for i in candidates if i not in chosen]
    members = chosen[:size]
    return {
        "code": BENCH_BUNDLE_CODE,
        "name": "压测一件事 (bench)",
        "category": category,
        "lead": members[0]["owner"],
        "time_limit_days": 5,
        "members": [{"item": m["code"]} for m in members],
    }


def with_bundle(catalog: Mapping[str, Any], bundle: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the catalog with `bundle` added (replacing one of the same code)."""
    out = copy.deepcopy(dict(catalog))
    out["bundles"] = [b for b in out.get("bundles", []) if b["code"] != bundle["code"]]
    out["bundles"].append(copy.deepcopy(dict(bundle)))
    return out


def closed_members(
    bundle_ids: Iterable[str],
    members_of: Mapping[str, list[str]],
    closed: Mapping[str, float] | set[str],
) -> int:
    """Members of these bundles that closed (a bundle whose members are not known yet counts
    none: its submission was not read)."""
    return sum(1 for b in bundle_ids for case in members_of.get(b, []) if case in closed)


def bundle_done(
    bundle_id: str,
    members_of: Mapping[str, list[str]],
    closed: Mapping[str, float] | set[str],
) -> bool:
    """Every member of the bundle known and closed."""
    members = members_of.get(bundle_id) or []
    return bool(members) and all(case in closed for case in members)


def per_unit_ms(cpu_s: Mapping[str, float], units: int) -> dict[str, float]:
    """CPU ms per unit (closed case or member) of each process under test, and `stack`: their
    sum (services, PostgreSQL, Kafka); empty when nothing closed."""
    if units <= 0:
        return {}
    ours = {k: v for k, v in cpu_s.items() if k not in NOT_UNDER_TEST}
    out = {k: round(1000 * v / units, 3) for k, v in sorted(ours.items())}
    out["stack"] = round(1000 * sum(ours.values()) / units, 3)
    return out


def net_of_idle(
    cpu_s: Mapping[str, float], idle_per_s: Mapping[str, float], wall_s: float
) -> dict[str, float]:
    """CPU seconds of each process beyond what it spends idle over `wall_s` (never below 0):
    the work the cases caused. A bundle's members close together after its last one, so its
    side lasts longer; its idle polling is not a cost of the members."""
    return {k: round(max(0.0, v - idle_per_s.get(k, 0.0) * wall_s), 3) for k, v in cpu_s.items()}


def cost_ratios(per_member: Mapping[str, float], per_case: Mapping[str, float]) -> dict[str, float]:
    """Bundle CPU per member / single case CPU per case, per process and for the `stack`
    (only where both were measured and the single case cost something)."""
    return {
        k: round(per_member[k] / per_case[k], 3)
        for k in per_member
        if k in per_case and per_case[k] > 0
    }


def stack_cost_ratio(result: Mapping[str, Any] | None) -> float | None:
    """The stack's ratio of a comparison result (the cost per member's, across regions'):
    None when not measured."""
    if not result:
        return None
    value = (result.get("ratio") or {}).get("stack")
    return None if value is None else float(value)
