"""`python -m services.bench`: raw pipeline, tongban ladder, runtime cost, combined report.

`make bench` (deploy/local/bench.sh) runs them in order on a stack of its own; each command
also runs alone against whatever stack `$TONGBAN_RUN_DIR/env` describes.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from services.bench import e2e, loadgen, members, raw, runtime, soak, submission, xregion
from services.bench.report import (
    ROUTED_P99_AT_RATE,
    build_report,
    members_table,
    plot_report,
    plot_soak,
    print_report,
    print_runtime_budget,
    print_tracing_cost,
    soak_table,
    xregion_table,
)
from services.bench.stats import rate_ladder
from services.common.settings import CommonSettings
from services.operators.catalog_file import load_catalog_file

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CATALOG = ROOT / "deploy" / "demo" / "catalog.yaml"

app = typer.Typer(
    help="tongban bench (issues 8, 18): the raw Kafka+PostgreSQL limit, tongban end to end, "
    "the runtime's CPU per event, report.",
    no_args_is_help=True,
    add_completion=False,
)
# Wide enough for the report's tables when the output goes to a file or a pipe (make, CI).
console = Console(width=None if Console().is_terminal else 200)


def run_dir() -> Path:
    return Path(os.environ.get("TONGBAN_RUN_DIR") or ROOT / ".run")


def port_offset() -> int:
    return int(os.environ.get("SERVICES_PORT_OFFSET") or 0)


def default_intake_urls() -> list[str]:
    """One URL per intake replica services.sh started (port 8001 + 10*(r-1) + offset)."""
    replicas = len(list((run_dir() / "services").glob("intake-*.pid"))) or 1
    return [f"http://127.0.0.1:{8001 + 10 * r + port_offset()}" for r in range(replicas)]


def default_routing_url() -> str:
    return f"http://127.0.0.1:{8002 + port_offset()}"


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    console.print(f"wrote {path}")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
    )


# The ladder's options, the same for (a) and (b).
Rates = Annotated[
    str | None,
    typer.Option(
        help="comma-separated offered rates (default: --start-rate doubling to --max-rate)"
    ),
]
StepSeconds = Annotated[float, typer.Option(help="submission time per rate")]
DrainTimeout = Annotated[float, typer.Option(help="max wait for a step's cases")]
MinGain = Annotated[float, typer.Option(help="stop when closed/s rises less than this share")]
IntakeUrls = Annotated[
    list[str] | None,
    typer.Option(help="intake base URL, repeat per replica (default: from the pid files)"),
]
RoutingUrl = Annotated[
    str | None, typer.Option(help="routing base URL (default 127.0.0.1:8002 + offset)")
]


@app.command("raw")
def raw_command(
    rates: Rates = None,
    start_rate: Annotated[float, typer.Option()] = 100.0,
    max_rate: Annotated[float, typer.Option()] = 3200.0,
    step_seconds: StepSeconds = 10.0,
    drain_timeout: DrainTimeout = 40.0,
    min_gain: MinGain = 0.10,
    warmup: Annotated[int, typer.Option(help="warm-up cases (not counted)")] = 200,
    connections: Annotated[int, typer.Option(help="generator's keep-alive connections")] = 64,
    catalog_file: Annotated[Path, typer.Option("--catalog", exists=True)] = DEFAULT_CATALOG,
    out: Annotated[Path, typer.Option(help="result JSON")] = Path(".run/bench/raw.json"),
) -> None:
    """(a) The raw limit: tongban's case (1 POST, 7 events, 10 applications) in four processes
    with no framework, at rising open-loop rates until closed/s stops rising."""
    config = raw.RawConfig(
        rates=_offered_rates(rates, start_rate, max_rate),
        step_seconds=step_seconds,
        drain_timeout=drain_timeout,
        min_gain=min_gain,
        warmup_cases=warmup,
        connections=connections,
    )
    console.print(f"raw case pipeline: rates {', '.join(f'{r:g}' for r in config.rates)}")
    with _progress() as progress:
        result = asyncio.run(
            raw.run_raw(
                config,
                catalog=load_catalog_file(catalog_file),
                settings=CommonSettings(),
                run_dir=run_dir(),
                on_step=_step_bars(progress),
            )
        )
    console.print(f"raw: best {result['max_closed_per_s']} closed cases/s ({result['stopped']})")
    _write(out, result)


@app.command("e2e")
def e2e_command(
    label: Annotated[str, typer.Option(help="name of this run, e.g. replicas=1")] = "replicas=1",
    intake_url: IntakeUrls = None,
    routing_url: RoutingUrl = None,
    rates: Rates = None,
    start_rate: Annotated[float, typer.Option()] = 25.0,
    max_rate: Annotated[float, typer.Option()] = 800.0,
    step_seconds: StepSeconds = 10.0,
    drain_timeout: DrainTimeout = 40.0,
    min_gain: MinGain = 0.10,
    measure_up_to: Annotated[
        float, typer.Option(help="never stop the ladder for saturation below this rate")
    ] = ROUTED_P99_AT_RATE,
    max_inflight: Annotated[int, typer.Option(help="open requests before sends are skipped")] = 256,
    connections: Annotated[
        int, typer.Option(help="the load generator's keep-alive connections per intake replica")
    ] = 64,
    warmup: Annotated[int, typer.Option(help="warm-up cases at 20/s (not counted)")] = 100,
    idle_seconds: Annotated[
        float, typer.Option(help="seconds of idle CPU measured before the ladder")
    ] = 5.0,
    catalog_file: Annotated[Path, typer.Option("--catalog", exists=True)] = DEFAULT_CATALOG,
    out: Annotated[Path, typer.Option(help="result JSON")] = Path(".run/bench/e2e.json"),
) -> None:
    """(b) tongban end to end: instant cases at rising open-loop rates until closed/s stops
    rising."""
    ladder = _offered_rates(rates, start_rate, max_rate)
    config = e2e.E2EConfig(
        intake_urls=intake_url or default_intake_urls(),
        routing_url=routing_url or default_routing_url(),
        rates=ladder,
        step_seconds=step_seconds,
        drain_timeout=drain_timeout,
        min_gain=min_gain,
        max_inflight=max_inflight,
        connections=connections,
        warmup_cases=warmup,
        idle_seconds=idle_seconds,
        measure_up_to=measure_up_to,
    )
    console.print(
        f"{label}: intake {', '.join(config.intake_urls)}, routing {config.routing_url}, "
        f"rates {', '.join(f'{r:g}' for r in ladder)}"
    )
    with _progress() as progress:
        result = asyncio.run(
            e2e.run_e2e(
                config,
                catalog=load_catalog_file(catalog_file),
                settings=CommonSettings(),
                run_dir=run_dir(),
                label=label,
                on_step=_step_bars(progress),
            )
        )
    console.print(
        f"{label}: best {result['max_closed_per_s']} closed cases/s ({result['stopped']}); "
        f"load generator {result['load_generator_cpu_ms_per_request']} ms CPU per request"
    )
    _write(out, result)


@app.command("members")
def members_command(
    intake_url: IntakeUrls = None,
    routing_url: RoutingUrl = None,
    bundle_rate: Annotated[float, typer.Option(help="bundles/s (open loop)")] = 10.0,
    seconds: Annotated[float, typer.Option(help="submission time of each side")] = 20.0,
    size: Annotated[int, typer.Option("--members", help="members of the bench's bundle")] = 3,
    warmup: Annotated[int, typer.Option(help="warm-up bundles (and single cases)")] = 30,
    idle_seconds: Annotated[
        float, typer.Option(help="seconds of idle CPU measured after the warm-up")
    ] = 5.0,
    drain_timeout: Annotated[float, typer.Option(help="max wait for a side's cases")] = 60.0,
    catalog_file: Annotated[Path, typer.Option("--catalog", exists=True)] = DEFAULT_CATALOG,
    out: Annotated[Path, typer.Option(help="result JSON")] = Path(".run/bench/members.json"),
) -> None:
    """(c) Cost per member: bundles of instant items against single cases of the same items
    at the same member rate, CPU per closed member / per closed case and their ratio."""
    config = members.MembersConfig(
        intake_urls=intake_url or default_intake_urls(),
        routing_url=routing_url or default_routing_url(),
        bundle_rate=bundle_rate,
        seconds=seconds,
        members=size,
        warmup_bundles=warmup,
        idle_seconds=idle_seconds,
        drain_timeout=drain_timeout,
    )
    result = asyncio.run(
        members.run_members(
            config,
            catalog=load_catalog_file(catalog_file),
            settings=CommonSettings(),
            run_dir=run_dir(),
            on_phase=lambda phase: console.print(f"members: {phase}"),
        )
    )
    if not result["catalog_bundles_closing_alone"]:
        console.print(
            "members: no bundle of the catalog closes with no department acting; measured "
            f"{result['bundle']['code']} of its instant items instead"
        )
    console.print(members_table(result))
    _write(out, result)


PARTNER_CATALOG = ROOT / "deploy" / "demo" / "partner-catalog.yaml"


def region2_run_dir() -> Path:
    """Region 2's run folder as deploy/local/federation.sh sets it (REGION2_RUN_DIR, default
    <region 1's run folder>/region2)."""
    return Path(os.environ.get("REGION2_RUN_DIR") or run_dir() / "region2")


@app.command("xregion")
def xregion_command(
    intake_url: IntakeUrls = None,
    rate: Annotated[float, typer.Option(help="cases/s of each side (open loop)")] = 10.0,
    seconds: Annotated[float, typer.Option(help="submission time of each side")] = 20.0,
    warmup: Annotated[int, typer.Option(help="warm-up cases of each side")] = 30,
    idle_seconds: Annotated[
        float, typer.Option(help="seconds of idle CPU measured after the warm-up")
    ] = 5.0,
    drain_timeout: Annotated[float, typer.Option(help="max wait for a side's cases")] = 90.0,
    region2: Annotated[
        Path | None,
        typer.Option(help="region 2's run folder (default $REGION2_RUN_DIR or <run>/region2)"),
    ] = None,
    partner_alias: Annotated[
        str, typer.Option(help="MirrorMaker's alias of region 2 (mirror.sh: MIRROR_ALIAS_2)")
    ] = "region2",
    catalog_file: Annotated[
        Path, typer.Option("--catalog", exists=True, help="region 1's catalog (loaded)")
    ] = DEFAULT_CATALOG,
    partner_file: Annotated[
        Path, typer.Option("--partner-catalog", exists=True, help="region 2's catalog (loaded)")
    ] = PARTNER_CATALOG,
    out: Annotated[Path, typer.Option(help="result JSON")] = Path(".run/bench/xregion.json"),
) -> None:
    """Cost across regions: cases of the partner's cross_region items taken at region 1's
    counters against single cases of region 1's items of the same codes, at the same rate; CPU
    per closed case of every process of both regions and MirrorMaker 2, and the ratio. Needs
    both regions up and linked with their catalogs (deploy/local/federation.sh up)."""
    config = xregion.XRegionConfig(
        intake_urls=intake_url or default_intake_urls(),
        region2_run_dir=region2 or region2_run_dir(),
        partner_alias=partner_alias,
        rate=rate,
        seconds=seconds,
        warmup_cases=warmup,
        idle_seconds=idle_seconds,
        drain_timeout=drain_timeout,
    )
    result = asyncio.run(
        xregion.run_xregion(
            config,
            home=load_catalog_file(catalog_file),
            partner=load_catalog_file(partner_file),
            settings=CommonSettings(),
            run_dir=run_dir(),
            on_phase=lambda phase: console.print(f"xregion: {phase}"),
        )
    )
    console.print(xregion_table(result))
    _write(out, _stamped(result))


@app.command("soak")
def soak_command(
    intake_url: IntakeUrls = None,
    routing_url: RoutingUrl = None,
    minutes: Annotated[float, typer.Option(help="minutes of sustained load", min=0.1)] = 10.0,
    rate: Annotated[float, typer.Option(help="cases/s, open loop, the whole time", min=0.1)] = 50.0,
    sample_seconds: Annotated[float, typer.Option(help="s between RSS/CPU samples")] = 10.0,
    warmup: Annotated[int, typer.Option(help="warm-up cases at 20/s (not counted)")] = 100,
    drain_timeout: Annotated[float, typer.Option(help="max wait for the last cases")] = 120.0,
    catalog_file: Annotated[Path, typer.Option("--catalog", exists=True)] = DEFAULT_CATALOG,
    out: Annotated[Path, typer.Option(help="result JSON")] = Path(".run/bench/soak.json"),
    plot: Annotated[Path, typer.Option(help="PNG of RSS over time")] = Path(".run/bench/soak.png"),
) -> None:
    """Sustained load: instant cases at one steady open-loop rate for --minutes against the
    running services; RSS (and CPU) of every process sampled throughout, a line a minute, RSS
    at start, peak and end per process against the target (<= 150 MB per service process)."""
    config = soak.SoakConfig(
        intake_urls=intake_url or default_intake_urls(),
        routing_url=routing_url or default_routing_url(),
        rate=rate,
        minutes=minutes,
        sample_seconds=sample_seconds,
        warmup_cases=warmup,
        drain_timeout=drain_timeout,
    )
    console.print(
        f"soak: {rate:g} cases/s for {minutes:g} min to {', '.join(config.intake_urls)}, "
        f"samples every {sample_seconds:g} s"
    )

    def on_minute(line: dict[str, Any]) -> None:
        rss = "  ".join(f"{k} {v:.0f}" for k, v in line["rss_mb"].items())
        console.print(
            f"soak: minute {line['minute']:g}: {line['closed']} closed, "
            f"{line['closed_per_s'] if line['closed_per_s'] is not None else '-'} closed/s; "
            f"RSS MB {rss}; load {line['loadavg_1m']}"
        )

    result = asyncio.run(
        soak.run_soak(
            config,
            catalog=load_catalog_file(catalog_file),
            settings=CommonSettings(),
            run_dir=run_dir(),
            on_minute=on_minute,
        )
    )
    console.print(soak_table(result))
    _write(out, _stamped(result))
    plot_soak(result, plot)
    console.print(f"wrote {plot}")


@app.command("build-loadgen")
def build_loadgen_command() -> None:
    """Build the compiled load generator (Go) if its sources changed; print its path."""
    try:
        binary = loadgen.build()
    except loadgen.LoadgenUnavailable as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print(str(binary))


@app.command("runtime")
def runtime_command(
    events: Annotated[
        int, typer.Option(help="events of the backlog regime (0: skip)", min=0)
    ] = 5_000,
    paced_events: Annotated[
        int, typer.Option(help="events of the paced regime (0: skip)", min=0)
    ] = 500,
    paced_rate: Annotated[float, typer.Option(help="events/s of the paced regime", min=1)] = 100.0,
    idle_seconds: Annotated[
        float, typer.Option(help="s of the paced group's idle CPU, measured first", min=0.1)
    ] = 2.0,
    outbox_events: Annotated[
        int, typer.Option(help="events written to the outbox and relayed (0: skip)", min=0)
    ] = 2_000,
    outbox_per_transaction: Annotated[
        int, typer.Option(help="events a transaction of the second write figure (1: skip)", min=1)
    ] = 100,
    payload_bytes: Annotated[int, typer.Option(help="size of each event's data, at least")] = 1_024,
    timeout: Annotated[float, typer.Option(help="max s for one regime to finish")] = 120.0,
    http_submissions: Annotated[
        int,
        typer.Option(
            help="also intake's CPU per HTTP submission, over this many (0: skip; needs the "
            "services up: deploy/local/services.sh)",
            min=0,
        ),
    ] = 0,
    http_rate: Annotated[float, typer.Option(help="submissions/s", min=1)] = 50.0,
    catalog_file: Annotated[Path, typer.Option("--catalog", exists=True)] = DEFAULT_CATALOG,
    profile_dir: Annotated[
        Path | None,
        typer.Option(
            help="write each window's cProfile (<figure>.pstats) here; inflates the figures"
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="result JSON")] = Path(".run/bench/runtime.json"),
) -> None:
    """(c) The runtime's own CPU per applied and per published event (issue 18's budget), in
    this one process against the running Kafka and PostgreSQL; with --http-submissions, also
    intake's CPU per submission (routing, approval and delivery paused meanwhile)."""
    settings = CommonSettings()
    cfg = runtime.RuntimeConfig(
        bootstrap=settings.kafka_bootstrap,
        database_url=settings.database_url,
        run_id=runtime.new_run_id(),
        events=events,
        paced_events=paced_events,
        paced_rate=paced_rate,
        idle_seconds=idle_seconds,
        outbox_events=outbox_events,
        outbox_per_transaction=outbox_per_transaction,
        payload_bytes=payload_bytes,
        partitions=settings.kafka_partitions,
        timeout=timeout,
        profile_dir=str(profile_dir) if profile_dir else None,
    )
    with _progress() as progress:
        tasks: dict[str, TaskID] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total, note="")
            progress.update(tasks[phase], completed=done)

        result = asyncio.run(runtime.run_runtime(cfg, on_progress=on_progress))
    if http_submissions:
        http_config = submission.SubmissionConfig(
            intake_url=default_intake_urls()[0],
            routing_url=f"http://127.0.0.1:{8002 + port_offset()}",
            run_dir=run_dir(),
            submissions=http_submissions,
            rate=http_rate,
        )
        console.print(
            f"intake's CPU per submission: {http_submissions} at {http_rate:g}/s to "
            f"{http_config.intake_url} (routing, approval, delivery paused)"
        )
        result["figures"][runtime.HTTP_SUBMISSION] = asyncio.run(
            submission.measure_submissions(http_config, catalog=load_catalog_file(catalog_file))
        )
        result["budget"] = runtime.budget_rows(result)
    print_runtime_budget(result, console)
    console.print(
        "CPU of the event loop's thread (time.thread_time: the runtime's work; the whole "
        "process's in the JSON) over each window, per event; the events are produced by a "
        "child process; the handler does nothing. "
        + (
            f"HTTP: intake's process (psutil) less its idle CPU; includes {submission.INCLUDES}."
            if http_submissions
            else "HTTP submission (budget 1 ms): not measured (--http-submissions)."
        )
    )
    _write(out, result)


def _offered_rates(rates: str | None, start_rate: float, max_rate: float) -> list[float]:
    """`--rates` as given, else from `start_rate` doubling up to `max_rate`."""
    if rates:
        return [float(r) for r in rates.split(",") if r.strip()]
    return rate_ladder(start_rate, max_rate)


def _step_bars(progress: Progress) -> Callable[[str, dict[str, Any] | None, float, float], None]:
    """`run_e2e`'s `on_step`: a bar per step of the ladder, with its figures once measured."""
    tasks: dict[str, TaskID] = {}

    def on_step(name: str, figures: dict[str, Any] | None, done: float, total: float) -> None:
        if name not in tasks:
            tasks[name] = progress.add_task(name, total=total, note="")
        note = ""
        if figures is not None:
            note = (
                f"closed/s {figures['closed_per_s']}  "
                f"p99 routed {figures['submit_to_routed']['p99_ms']} ms  "
                f"p99 closed {figures['submit_to_closed']['p99_ms']} ms"
            )
        progress.update(tasks[name], completed=done, note=note)

    return on_step


def _stamped(result: dict[str, Any]) -> dict[str, Any]:
    """A result `make bench` does not remake (soak, across regions), with when and on which
    commit it was measured: the report says so when it is not the report's own commit."""
    return {**result, "measured": {"when": _now(), "commit": _git_commit()}}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    try:
        answer = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.stdout.strip()


@app.command("report")
def report_command(
    runs: Annotated[
        list[Path] | None, typer.Argument(help="e2e result JSON files, in order (none: no ladder)")
    ] = None,
    raw_file: Annotated[Path | None, typer.Option("--raw", help="raw result JSON")] = None,
    out: Annotated[Path, typer.Option(help="combined JSON")] = Path(".run/bench/bench.json"),
    plot: Annotated[Path, typer.Option(help="PNG plot")] = Path(".run/bench/bench.png"),
    tracing_off: Annotated[
        Path | None,
        typer.Option(help="e2e result JSON of the first run's setup with tracing off"),
    ] = None,
    runtime_file: Annotated[
        Path | None, typer.Option("--runtime", help="runtime result JSON (its budget table)")
    ] = None,
    members_file: Annotated[
        Path | None, typer.Option("--members", help="cost per member result JSON")
    ] = None,
    xregion_file: Annotated[
        Path | None, typer.Option("--xregion", help="cost across regions result JSON")
    ] = None,
    soak_file: Annotated[
        Path | None, typer.Option("--soak", help="sustained load result JSON")
    ] = None,
) -> None:
    """Combine raw and e2e results: targets, table, JSON and PNG."""
    raw_result = json.loads(raw_file.read_text()) if raw_file and raw_file.exists() else None
    untraced = json.loads(tracing_off.read_text()) if tracing_off and tracing_off.exists() else None
    runtime_result = (
        json.loads(runtime_file.read_text()) if runtime_file and runtime_file.exists() else None
    )
    e2e_results = [json.loads(p.read_text()) for p in runs or [] if p.exists()]
    per_member, across, sustained = (
        json.loads(f.read_text()) if f and f.exists() else None
        for f in (members_file, xregion_file, soak_file)
    )
    meta = {
        "when": _now(),
        "commit": _git_commit(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.platform(),
        "nice": os.nice(0),  # the bench's (and, via make, the stack's) scheduling priority
        "loadavg_at_report": [round(x, 2) for x in os.getloadavg()],
        "latency_clock": "Kafka record timestamp of the event minus the time the bench sent it",
    }
    report = build_report(
        raw_result, e2e_results, meta, untraced, runtime_result, per_member, across, sustained
    )
    print_report(report, console)
    print_tracing_cost(report, console)
    _write(out, report)
    plot_report(report, plot)
    console.print(f"wrote {plot}")
