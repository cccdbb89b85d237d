"""The bench report: one JSON document, the targets of issues 8 and 18 with their ratios, tables,
a plot."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from services.bench.member_cost import MEMBER_COST_RATIO_TARGET, stack_cost_ratio
from services.bench.procs import BENCH_CLIENT, LOAD_GENERATOR
from services.bench.xregion_cost import PARTNER_PREFIX, REGION_TOTALS, XREGION_COST_RATIO_TARGET

# Issue 8's targets. Reported with the measured value and measured/target; never asserted.
CLOSED_PER_S_TARGET = 500.0
# Issue 18: tongban's closed cases/s at least half the raw case pipeline's of the same run.
RATIO_TARGET = 0.5
ROUTED_P99_MS_TARGET = 50.0
ROUTED_P99_AT_RATE = 100.0
RSS_MB_TARGET = 150.0
# Issue 18: the bench measures tongban, not its load generator.
LOADGEN_CPU_MS_TARGET = 0.5


@dataclass(frozen=True)
class Target:
    name: str
    want: str  # ">=" or "<="
    target: float
    measured: float | None
    where: str = ""

    @property
    def ratio(self) -> float | None:
        """measured / target (>= 1 meets a `>=` target, <= 1 meets a `<=` target)."""
        return None if self.measured is None else self.measured / self.target

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured >= self.target if self.want == ">=" else self.measured <= self.target

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "want": self.want,
            "target": self.target,
            "measured": self.measured,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "met": self.met,
            "where": self.where,
        }


def raw_limit(raw: dict[str, Any] | None) -> float | None:
    """The raw case pipeline's closed cases/s: its best rung (services/bench/raw.py)."""
    if not raw or not raw.get("max_closed_per_s"):
        return None
    return float(raw["max_closed_per_s"])


def step_at(run: dict[str, Any], rate: float) -> dict[str, Any] | None:
    return next((s for s in run.get("steps", []) if float(s["rate"]) == rate), None)


def evaluate_targets(raw: dict[str, Any] | None, runs: Sequence[dict[str, Any]]) -> list[Target]:
    """The four targets of issue 8 and the load generator's budget of issue 18 from the measured
    figures (None where not measured)."""
    best_run = max(runs, key=lambda r: r.get("max_closed_per_s") or 0.0, default=None)
    best = float(best_run["max_closed_per_s"]) if best_run else None
    limit = raw_limit(raw)
    first = runs[0] if runs else None
    at_rate = step_at(first, ROUTED_P99_AT_RATE) if first else None
    p99 = at_rate["submit_to_routed"]["p99_ms"] if at_rate else None
    rss = [
        (float(p["peak_rss_mb"]), f"{r['label']} {p['name']}")
        for r in runs
        for p in r.get("processes", [])
        if p.get("kind") == "service"
    ]
    worst_rss = max(rss, default=None)
    generator = max(
        (
            (float(r["load_generator_cpu_ms_per_request"]), r["label"])
            for r in runs
            if r.get("load_generator_cpu_ms_per_request") is not None
        ),
        default=(None, ""),
    )
    return [
        Target(
            "closed cases/s",
            ">=",
            CLOSED_PER_S_TARGET,
            best,
            best_run["label"] if best_run else "",
        ),
        Target(
            "tongban / raw case pipeline closed/s",
            ">=",
            RATIO_TARGET,
            None if best is None or not limit else round(best / limit, 4),
            f"{best} / {limit} closed cases/s" if best is not None and limit else "",
        ),
        Target(
            f"p99 submit->routed at {ROUTED_P99_AT_RATE:g}/s (ms)",
            "<=",
            ROUTED_P99_MS_TARGET,
            p99,
            first["label"] if first and at_rate else "",
        ),
        Target(
            "peak RSS per service process (MB)",
            "<=",
            RSS_MB_TARGET,
            worst_rss[0] if worst_rss else None,
            worst_rss[1] if worst_rss else "",
        ),
        Target("load generator CPU per request (ms)", "<=", LOADGEN_CPU_MS_TARGET, *generator),
    ]


def tracing_cost(
    traced: dict[str, Any] | None, untraced: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Per offered rate run both ways: stack CPU ms per closed case and p99 submit->routed,
    with tracing on (spans with ids, recorded only when exported) and off (traceparent passed
    through only)."""
    if not traced or not untraced:
        return []
    rows = []
    for on in traced.get("steps", []):
        off = step_at(untraced, on["rate"])
        if off is None or not on.get("closed") or not off.get("closed"):
            continue
        cpu_on = stack_cpu_ms_per_unit(on.get("cpu_s", {}), int(on["closed"]))
        cpu_off = stack_cpu_ms_per_unit(off.get("cpu_s", {}), int(off["closed"]))
        rows.append(
            {
                "rate": on["rate"],
                "cpu_ms_per_case_on": cpu_on,
                "cpu_ms_per_case_off": cpu_off,
                "cpu_cost_share": (cpu_on / cpu_off - 1) if cpu_on and cpu_off else None,
                "p99_routed_ms_on": on.get("submit_to_routed", {}).get("p99_ms"),
                "p99_routed_ms_off": off.get("submit_to_routed", {}).get("p99_ms"),
                "closed_per_s_on": on.get("closed_per_s"),
                "closed_per_s_off": off.get("closed_per_s"),
            }
        )
    return rows


def build_report(
    raw: dict[str, Any] | None,
    runs: Sequence[dict[str, Any]],
    meta: dict[str, Any],
    untraced: dict[str, Any] | None = None,
    runtime: dict[str, Any] | None = None,
    members: dict[str, Any] | None = None,
    xregion: dict[str, Any] | None = None,
    soak: dict[str, Any] | None = None,
) -> dict[str, Any]:
    targets = [
        *evaluate_targets(raw, runs),
        member_cost_target(members),
        earlier_run(xregion_cost_target(xregion), xregion, meta),
        earlier_run(soak_rss_target(soak), soak, meta),
    ]
    return {
        "meta": meta,
        "raw": raw,
        "tongban": list(runs),
        "raw_limit_closed_per_s": raw_limit(raw),
        "targets": [t.as_dict() for t in targets],
        "tracing_off": untraced,
        "tracing_cost": tracing_cost(runs[0] if runs else None, untraced),
        "runtime": runtime,
        "members": members,
        "xregion": xregion,
        "soak": soak,
    }


def earlier_run(target: Target, result: dict[str, Any] | None, meta: dict[str, Any]) -> Target:
    """A target measured by a run of its own (`make bench-soak`, `make bench-xregion`), whose
    result file the report picks up as it finds it: said so when it is not of the report's
    commit, with the commit and day it is of (or that it has none: older than the stamp)."""
    if result is None:
        return target
    measured = result.get("measured") or {}
    commit, when = measured.get("commit"), measured.get("when")
    if commit is not None and commit == meta.get("commit"):
        return target
    of = f"{commit}, {when}" if commit else "no commit recorded"
    note = f"an earlier run ({of})"
    return replace(target, where=f"{target.where}; {note}" if target.where else note)


def member_cost_target(members: dict[str, Any] | None) -> Target:
    """Issue 18's: a bundle member costs the stack at most 1.5 x a single case of its items."""
    bundle = (members or {}).get("bundle") or {}
    return Target(
        "bundle CPU per member / single case's",
        "<=",
        MEMBER_COST_RATIO_TARGET,
        stack_cost_ratio(members),
        f"{bundle['code']} x{len(bundle['members'])}" if bundle else "",
    )


def xregion_cost_target(xregion: dict[str, Any] | None) -> Target:
    """Issue 18's: a case across regions costs both regions and the link at most 1.5 x a
    single case of an item of the same code."""
    return Target(
        "cross-region CPU per case / single case's",
        "<=",
        XREGION_COST_RATIO_TARGET,
        stack_cost_ratio(xregion),
        ", ".join(i["partner"] for i in (xregion or {}).get("items", [])),
    )


def soak_rss_target(soak: dict[str, Any] | None) -> Target:
    """Issue 18's: every service process at most 150 MB resident after ten minutes of
    sustained load (the soak's end, its largest service)."""
    worst = (soak or {}).get("worst_service_end") or {}
    where = ""
    if soak:
        where = f"{worst.get('name', '-')} after {soak['minutes']:g} min at {soak['rate']:g}/s"
    return Target(
        "RSS per service process after sustained load (MB)",
        "<=",
        RSS_MB_TARGET,
        worst.get("end_mb"),
        where,
    )


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def machine_busy_share(step: dict[str, Any], cpus: int | None) -> float | None:
    """Share of the machine's CPU capacity in use during a step (all processes)."""
    busy = step.get("cpu_s", {}).get("machine")
    wall = step.get("wall_s")
    if busy is None or not wall or not cpus:
        return None
    return float(busy) / (float(wall) * cpus)


NOT_UNDER_TEST = ("machine", "others", BENCH_CLIENT, LOAD_GENERATOR)


def stack_cpu_ms_per_unit(cpu_s: dict[str, float], units: int) -> float | None:
    """CPU ms per case (or message) of the processes under test: services or hop workers,
    PostgreSQL and Kafka; not the load generator, not the rest of the machine."""
    if units <= 0 or not cpu_s:
        return None
    return 1000 * sum(v for k, v in cpu_s.items() if k not in NOT_UNDER_TEST) / units


def _triple(summary: dict[str, Any]) -> str:
    return "/".join(_fmt(summary[k], 0) for k in ("p50_ms", "p95_ms", "p99_ms"))


def _kb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def print_tracing_cost(report: dict[str, Any], console: Console) -> None:
    rows = report.get("tracing_cost") or []
    if not rows:
        return
    table = Table(
        title="cost of tracing (one process per service; spans made, recorded only when exported)"
    )
    for col in ("offered/s", "CPU ms/case on", "off", "cost", "p99 routed ms on", "off"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(
            _fmt(row["rate"], 0),
            _fmt(row["cpu_ms_per_case_on"]),
            _fmt(row["cpu_ms_per_case_off"]),
            _pct(row["cpu_cost_share"]),
            _fmt(row["p99_routed_ms_on"], 0),
            _fmt(row["p99_routed_ms_off"], 0),
        )
    console.print(table)


def print_runtime_budget(runtime: dict[str, Any] | None, console: Console) -> None:
    """(c): the runtime's CPU per event (services/bench/runtime.py) beside issue 18's budget."""
    rows = (runtime or {}).get("budget") or []
    if not rows:
        return
    traced = (
        "spans as the services make them" if runtime and runtime.get("traced") else "tracing off"
    )
    if runtime and runtime.get("profiled"):
        traced += "; PROFILED: figures inflated"
    table = Table(title=f"(d) runtime budget: CPU per event in services/common ({traced})")
    for col in ("figure", "events", "events/batch", "CPU ms/event", "budget ms", "ratio"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for row in rows:
        ratio = row["ratio"]
        colour = "green" if ratio is not None and ratio <= 1 else "red"
        table.add_row(
            row["figure"],
            str(row["events"]),
            _fmt(row["events_per_batch"]),
            _fmt(row["cpu_ms_per_event"], 3),
            _fmt(row["budget_ms"], 2),
            "-" if ratio is None else f"[{colour}]{ratio:.2f}[/]",
        )
    paced = (runtime or {}).get("figures", {}).get("applied, paced") or {}
    if paced.get("idle_cpu_ms_per_s") is not None:
        table.caption = (
            f"paced: {paced['rate']:g} events/s; the runner costs "
            f"{paced['idle_cpu_ms_per_s']:.1f} ms of CPU a second with nothing to apply"
        )
    console.print(table)


def print_report(report: dict[str, Any], console: Console) -> None:
    cpus = report.get("meta", {}).get("cpus")
    raw = report.get("raw")
    if raw:
        shape = raw.get("shape") or {}
        console.print(
            _ladder_table(
                raw,
                cpus,
                title=(
                    f"(a) raw case pipeline, no framework: 1 POST, {shape.get('events')} events, "
                    f"{shape.get('applications')} applications a case "
                    f"(stopped: {raw['stopped']})"
                ),
            )
        )
        console.print("CPU ms/case = the four raw processes + PostgreSQL + Kafka")
        console.print(_processes_table(raw))
    for run in report.get("tongban", []):
        console.print(_ladder_table(run, cpus))
        console.print(
            "latencies in ms from the POST's scheduled send (open loop); 'other' = refused, "
            "skipped or failed submissions; CPU ms/case = services + PostgreSQL + Kafka; "
            "gen CPU ms/req = the load generator's CPU per request sent; "
            "'others CPU s' = CPU taken by processes outside the bench and the stack under test"
        )
        console.print(_processes_table(run))
    print_runtime_budget(report.get("runtime"), console)
    if report.get("members"):
        console.print(members_table(report["members"]))
    if report.get("xregion"):
        console.print(xregion_table(report["xregion"]))
    if report.get("soak"):
        console.print(soak_table(report["soak"]))
    console.print(_targets_table(report["targets"]))


def _ladder_table(run: dict[str, Any], cpus: int | None, *, title: str | None = None) -> Table:
    """One run of (a) or (b): a row per offered rate of the ladder."""
    table = Table(
        title=title or f"(b) tongban end to end, {run['label']} (stopped: {run['stopped']})"
    )
    cols = [
        "offered/s",
        "sent/s",
        "201",
        "other",
        "closed",
        "closed/s",
        "routed ms p50/p95/p99",
        "closed ms p50/p95/p99",
        "http p99 ms",
        "CPU ms/case",
        "gen CPU ms/req",
        "PG write xacts/case",
        "WAL KB/case",
        "machine busy",
        "others CPU s",
    ]
    for col in cols:
        table.add_column(col, justify="right")
    for s in run["steps"]:
        other = sum(v for k, v in s["statuses"].items() if k != "201")
        other += s["skipped_inflight_cap"] + sum(s["errors"].values())
        table.add_row(
            _fmt(s["rate"], 0),
            _fmt(s["submit_rate"]),
            str(s["submitted"]),
            str(other),
            str(s["closed"]),
            _fmt(s["closed_per_s"]),
            _triple(s["submit_to_routed"]),
            _triple(s["submit_to_closed"]),
            _fmt(s["http"]["p99_ms"], 0),
            _fmt(stack_cpu_ms_per_unit(s.get("cpu_s", {}), s["closed"])),
            _fmt(s.get("load_generator", {}).get("cpu_ms_per_request"), 3),
            _fmt(s.get("pg_per_closed_case", {}).get("write_xacts")),
            _kb(s.get("pg_per_closed_case", {}).get("wal_bytes")),
            _pct(machine_busy_share(s, cpus)),
            _fmt(s.get("cpu_s", {}).get("others")),
        )
    return table


def _processes_table(run: dict[str, Any]) -> Table:
    """One run of (a) or (b): what each process spent during the ladder."""
    procs = Table(title=f"processes during the ladder, {run['label']}")
    for col in ("process", "kind", "CPU s", "CPU ms/closed case", "idle CPU %", "peak RSS MB"):
        procs.add_column(col, justify="left" if col in ("process", "kind") else "right")
    idle = run.get("idle_cpu_s_per_s") or {}
    closed = sum(s["closed"] for s in run["steps"]) or 1
    for p in run["processes"]:
        procs.add_row(
            p["name"],
            p["kind"],
            _fmt(p["cpu_s"]),
            _fmt(1000 * p["cpu_s"] / closed, 2),
            _pct(idle.get(p["name"])),
            _fmt(p["peak_rss_mb"]) if p["kind"] != "infra" else f"({_fmt(p['peak_rss_mb'])})",
        )
    return procs


def _cost_table(
    title: str,
    other: str,
    per_case: dict[str, float],
    per_other: dict[str, float],
    ratios: dict[str, float],
    gross: dict[str, float],
    order: Callable[[str], Any] = lambda n: (n == "stack", n),
) -> Table:
    """One row per process (and total): CPU ms per single case, per `other`, their ratio net
    of idle and gross."""
    table = Table(title=title)
    cols = ("process", "single ms/case", other, "ratio", "with idle: ratio")
    for col in cols:
        table.add_column(col, justify="left" if col == "process" else "right")
    for name in sorted(set(per_case) | set(per_other), key=order):
        table.add_row(
            name,
            _fmt(per_case.get(name), 2),
            _fmt(per_other.get(name), 2),
            _fmt(ratios.get(name), 2),
            _fmt(gross.get(name), 2),
        )
    return table


def members_table(result: dict[str, Any]) -> Table:
    """One row per process: CPU ms per single case, per bundle member, and the ratio."""
    singles, bundles = result["singles"], result["bundles"]
    bundle = result["bundle"]
    table = _cost_table(
        f"(c) cost per member: {bundles['rate']:g} bundles/s of {len(bundle['members'])} "
        f"members ({bundle['code']}: {', '.join(m['item'] for m in bundle['members'])}) "
        f"against {singles['rate']:g} single cases/s of the same items",
        "bundle ms/member",
        singles["cpu_ms_per_unit"],
        bundles["cpu_ms_per_unit"],
        result["ratio"],
        result.get("ratio_with_idle") or {},
    )
    table.caption = (
        f"singles: {singles['closed']} closed of {singles['submitted']} taken "
        f"({singles.get('offered', '-')} offered), p99 closed "
        f"{_fmt(singles['submit_to_closed']['p99_ms'], 0)} ms; bundles: "
        f"{bundles['closed_members']} members closed of {bundles['submitted']} bundles taken "
        f"({bundles.get('offered', '-')} offered), p99 "
        f"closed {_fmt(bundles['submit_to_closed']['p99_ms'], 0)} ms; CPU net of each "
        f"process's idle CPU over the side's time ('with idle': gross); target ratio <= "
        f"{MEMBER_COST_RATIO_TARGET:g}"
    )
    return table


def xregion_table(result: dict[str, Any]) -> Table:
    """One row per process of both regions and the link, then per region and in all: CPU ms
    per single case, per case across regions, and the ratio."""
    singles, cross = result["singles"], result["cross_region"]
    items = ", ".join(i["partner"] for i in result["items"])
    table = _cost_table(
        f"cost across regions: {cross['rate']:g} cases/s of {result['partner_city']}'s "
        f"cross_region items ({items}) taken in {result['home_city']} against "
        f"{singles['rate']:g} single cases/s of {result['home_city']}'s items of the same codes",
        "across regions ms/case",
        singles["cpu_ms_per_unit"],
        cross["cpu_ms_per_unit"],
        result["ratio"],
        result.get("ratio_with_idle") or {},
        order=lambda n: (n == "stack", n in REGION_TOTALS, n),
    )
    table.caption = (
        f"singles: {singles['closed']} closed of {singles['submitted']} taken "
        f"({singles.get('offered', '-')} offered), p99 closed "
        f"{_fmt(singles['submit_to_closed']['p99_ms'], 0)} ms; across regions: "
        f"{cross['closed']} closed of {cross['submitted']} taken "
        f"({cross.get('offered', '-')} offered), p99 closed "
        f"{_fmt(cross['submit_to_closed']['p99_ms'], 0)} ms; '{PARTNER_PREFIX.strip()} ...' "
        "are the handling region's processes; CPU net of each process's idle CPU over the "
        f"side's time ('with idle': gross); target ratio <= {XREGION_COST_RATIO_TARGET:g}"
    )
    return table


def soak_table(result: dict[str, Any]) -> Table:
    """One row per process: RSS at the start, peak and end of the sustained load, its growth
    (in all and over the second half), CPU ms per closed case."""
    table = Table(
        title=(
            f"sustained load: {result['rate']:g} cases/s for {result['minutes']:g} min "
            f"({result['closed']} closed of {result['submitted']} taken of "
            f"{result.get('offered', '-')} offered, statuses {result.get('statuses', {})}; "
            f"{_fmt(result['closed_per_s'])} closed/s)"
        )
    )
    cols = ("process", "RSS start MB", "peak MB", "end MB", "growth MB", "2nd half MB")
    for col in (*cols, "CPU ms/closed case"):
        table.add_column(col, justify="left" if col == "process" else "right")
    services = set(result["services"])
    per_case = result["cpu_ms_per_closed_case"]
    for name, rss in result["rss"].items():
        table.add_row(
            name if name in services else f"({name})",
            _fmt(rss["start_mb"]),
            _fmt(rss["peak_mb"]),
            _fmt(rss["end_mb"]),
            _fmt(rss["growth_mb"]),
            _fmt(rss["second_half_growth_mb"]),
            _fmt(per_case.get(name), 2),
        )
    worst = result.get("worst_service_end") or {}
    table.caption = (
        f"RSS sampled every {result['sample_seconds']:g} s; (infra): PostgreSQL with its "
        f"backends (shared memory counted in each) and Kafka's JVM, not under the target; "
        f"target <= {RSS_MB_TARGET:g} MB per service process at the end: largest "
        f"{worst.get('name', '-')} {_fmt(worst.get('end_mb'))} MB; all processes under test: "
        f"{_fmt(per_case.get('stack'), 2)} ms CPU per closed case (idle included); p99 "
        f"submit->closed {_fmt(result['submit_to_closed']['p99_ms'], 0)} ms"
    )
    return table


def plot_soak(result: dict[str, Any], path: Path) -> None:
    """RSS of each service process over the sustained load against the target, and the closed
    cases per second between samples against the offered rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    minutes = [s["t"] / 60 for s in samples]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    for name in result["services"]:
        left.plot(minutes, [s["rss_mb"].get(name) for s in samples], "-", label=name, linewidth=1.5)
    left.axhline(RSS_MB_TARGET, color="green", linestyle=":", label=f"target {RSS_MB_TARGET:g} MB")
    left.set(
        xlabel="minutes of sustained load",
        ylabel="RSS MB",
        title=f"resident memory per service process at {result['rate']:g} cases/s",
    )
    left.set_ylim(bottom=0)
    pace = [
        (b["t"] / 60, (b["closed"] - a["closed"]) / (b["t"] - a["t"]))
        for a, b in zip(samples, samples[1:], strict=False)
        if b["t"] > a["t"]
    ]
    right.plot([p[0] for p in pace], [p[1] for p in pace], "-", label="closed/s between samples")
    right.axhline(result["rate"], color="grey", linestyle=":", label="offered")
    right.set(xlabel="minutes of sustained load", ylabel="cases/s", title="throughput")
    right.set_ylim(bottom=0)
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _targets_table(targets: list[dict[str, Any]]) -> Table:
    table = Table(title="targets of issues 8 and 18 (ratio = measured / target)")
    for col in ("target", "want", "measured", "ratio", "met", "where"):
        table.add_column(col)
    for t in targets:
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[t["met"]]
        table.add_row(
            t["name"],
            f"{t['want']} {t['target']:g}",
            _fmt(t["measured"], 3),
            _fmt(t["ratio"], 2),
            met,
            t["where"],
        )
    return table


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Throughput and latency against the offered rate, the raw case pipeline in red and one
    colour per replica setting of tongban (log scales: the rates span two orders of magnitude)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    rates_seen: set[float] = set()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    raw = report.get("raw")
    runs = [*([raw] if raw else []), *report.get("tongban", [])]
    for n, run in enumerate(runs):
        colour = "red" if run is raw else colours[n % len(colours)]
        steps = run["steps"]
        rates = [s["rate"] for s in steps]
        rates_seen.update(rates)
        left.plot(rates, [s["closed_per_s"] for s in steps], "o-", color=colour, label=run["label"])
        for key, style, name in (
            ("submit_to_routed", "o--", "routed"),
            ("submit_to_closed", "s-", "closed"),
        ):
            right.plot(
                rates,
                [s[key]["p99_ms"] for s in steps],
                style,
                color=colour,
                label=f"{run['label']} p99 {name}",
            )
            right.plot(
                rates,
                [s[key]["p50_ms"] for s in steps],
                style,
                color=colour,
                alpha=0.35,
                label=f"{run['label']} p50 {name}",
            )
    if rates_seen:
        low, high = min(rates_seen), max(rates_seen)
        left.plot([low, high], [low, high], ":", color="grey", label="closed = offered")
    limit = report.get("raw_limit_closed_per_s")
    if limit:
        left.axhline(limit, color="red", linestyle="-.", label=f"raw case pipeline {limit:.0f}/s")
        left.axhline(
            RATIO_TARGET * limit, color="orange", linestyle=":", label=f"{RATIO_TARGET:g} x raw"
        )
    left.axhline(
        CLOSED_PER_S_TARGET, color="green", linestyle=":", label=f"target {CLOSED_PER_S_TARGET:g}/s"
    )
    left.set(xlabel="offered cases/s", ylabel="closed cases/s", title="throughput")
    right.axhline(
        ROUTED_P99_MS_TARGET, color="green", linestyle=":", label="target p99 submit->routed"
    )
    right.set(xlabel="offered cases/s", ylabel="ms from the POST", title="latency")
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_yscale("log")
        if rates_seen:
            axis.set_xticks(sorted(rates_seen))
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(ScalarFormatter(useOffset=False))
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.grid(True, which="major", alpha=0.3)
    left.legend(fontsize=7)
    right.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
