"""`python -m services.bench`: raw pipeline, tongban ladder, and the combined report.

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

from services.bench import e2e, loadgen, members, raw
from services.bench.report import (
    ROUTED_P99_AT_RATE,
    build_report,
    members_table,
    plot_report,
    print_report,
    print_tracing_cost,
)
from services.bench.stats import rate_ladder
from services.common.settings import CommonSettings
from services.operators.catalog_file import load_catalog_file

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CATALOG = ROOT / "deploy" / "demo" / "catalog.yaml"

app = typer.Typer(
    help="tongban bench (issue 8): the raw Kafka+PostgreSQL limit, tongban end to end, report.",
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


IntakeUrls = Annotated[
    list[str] | None,
    typer.Option(help="intake base URL, repeat per replica (default: from the pid files)"),
]
RoutingUrl = Annotated[
    str | None, typer.Option(help="routing base URL (default 127.0.0.1:8002 + offset)")
]


@app.command("raw")
def raw_command(
    messages: Annotated[int, typer.Option(help="burst size (throughput phase)", min=100)] = 20_000,
    paced_rate: Annotated[float, typer.Option(help="open-loop rate of the latency phase")] = 100.0,
    paced_seconds: Annotated[float, typer.Option(help="length of the latency phase")] = 5.0,
    payload_bytes: Annotated[int, typer.Option(help="padding per message")] = 512,
    hops: Annotated[int, typer.Option(min=1, max=8)] = 4,
    timeout: Annotated[float, typer.Option(help="max s to wait for a phase to finish")] = 90.0,
    fetch_max_wait_ms: Annotated[
        int, typer.Option(help="consumer long-poll wait (500 = aiokafka's and tongban's)")
    ] = 500,
    out: Annotated[Path, typer.Option(help="result JSON")] = Path(".run/bench/raw.json"),
) -> None:
    """(a) The raw limit: 4 hop processes, batch -> one transaction -> idempotent produce."""
    settings = CommonSettings()
    cfg = raw.RawConfig(
        bootstrap=settings.kafka_bootstrap,
        database_url=settings.database_url,
        run_id=raw.new_run_id(),
        hops=hops,
        partitions=settings.kafka_partitions,
        max_records=settings.consumer_max_records,
        poll_ms=settings.consumer_poll_ms,
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    with _progress() as progress:
        tasks: dict[str, Any] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(f"raw {phase}", total=total, note="")
            progress.update(tasks[phase], completed=done)

        result = asyncio.run(
            raw.run_raw(
                cfg,
                messages=messages,
                paced_rate=paced_rate,
                paced_seconds=paced_seconds,
                payload_bytes=payload_bytes,
                timeout=timeout,
                run_dir=run_dir(),
                on_progress=on_progress,
            )
        )
    burst = result["burst"]
    console.print(
        f"raw: {burst['msgs_per_s']} msgs/s at hop {hops} "
        f"(p99 {result['paced']['latency']['p99_ms']} ms at {paced_rate:g}/s)"
    )
    _write(out, result)


@app.command("e2e")
def e2e_command(
    label: Annotated[str, typer.Option(help="name of this run, e.g. replicas=1")] = "replicas=1",
    intake_url: IntakeUrls = None,
    routing_url: RoutingUrl = None,
    rates: Annotated[
        str | None,
        typer.Option(help="comma-separated offered rates (default: 25 doubling to --max-rate)"),
    ] = None,
    start_rate: Annotated[float, typer.Option()] = 25.0,
    max_rate: Annotated[float, typer.Option()] = 800.0,
    step_seconds: Annotated[float, typer.Option(help="submission time per rate")] = 10.0,
    drain_timeout: Annotated[float, typer.Option(help="max wait for a step's cases")] = 40.0,
    min_gain: Annotated[
        float, typer.Option(help="stop when closed/s rises less than this share")
    ] = 0.10,
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


@app.command("build-loadgen")
def build_loadgen_command() -> None:
    """Build the compiled load generator (Go) if its sources changed; print its path."""
    try:
        binary = loadgen.build()
    except loadgen.LoadgenUnavailable as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print(str(binary))


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
    runs: Annotated[list[Path], typer.Argument(help="e2e result JSON files, in order")],
    raw_file: Annotated[Path | None, typer.Option("--raw", help="raw result JSON")] = None,
    out: Annotated[Path, typer.Option(help="combined JSON")] = Path(".run/bench/bench.json"),
    plot: Annotated[Path, typer.Option(help="PNG plot")] = Path(".run/bench/bench.png"),
    tracing_off: Annotated[
        Path | None,
        typer.Option(help="e2e result JSON of the first run's setup with tracing off"),
    ] = None,
    members_file: Annotated[
        Path | None, typer.Option("--members", help="cost per member result JSON")
    ] = None,
) -> None:
    """Combine raw and e2e results: targets, table, JSON and PNG."""
    raw_result = json.loads(raw_file.read_text()) if raw_file and raw_file.exists() else None
    untraced = json.loads(tracing_off.read_text()) if tracing_off and tracing_off.exists() else None
    e2e_results = [json.loads(p.read_text()) for p in runs if p.exists()]
    per_member = (
        json.loads(members_file.read_text()) if members_file and members_file.exists() else None
    )
    meta = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.platform(),
        "nice": os.nice(0),  # the bench's (and, via make, the stack's) scheduling priority
        "loadavg_at_report": [round(x, 2) for x in os.getloadavg()],
        "latency_clock": "Kafka record timestamp of the event minus the time the bench sent it",
    }
    report = build_report(raw_result, e2e_results, meta, untraced, per_member)
    print_report(report, console)
    print_tracing_cost(report, console)
    _write(out, report)
    plot_report(report, plot)
    console.print(f"wrote {plot}")
