"""`python -m tests.faults`: the fault suite on the running local stack (`make faults`)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from services.common.settings import CommonSettings
from tests.faults.harness import RUN, Stack, Verdict, run_scenario
from tests.faults.setup import load_demo_catalog
from tests.faults.suite import HEADERS, OverloadReport, overload, scenarios, verdict_rows

app = typer.Typer(add_completion=False, help=__doc__)
console = Console(width=190)


def _quiet_clients() -> None:
    # The harness's own Kafka clients complain loudly while a broker is down on purpose.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _progress(scenario: str, message: str) -> None:
    console.print(f"[dim]{scenario}:[/dim] {message}")


async def run_suite(
    size: str, only: list[str], replicas: int
) -> tuple[list[Verdict], OverloadReport | None]:
    _quiet_clients()
    settings = CommonSettings()
    stack = Stack(replicas=replicas)
    catalog = await load_demo_catalog(replicas)
    verdicts = []
    for spec in scenarios(size):
        if only and not any(o.lower() in spec.name.lower() for o in only):
            continue
        verdict = await run_scenario(
            spec,
            stack,
            catalog,
            settings,
            progress=_progress,
            drain_s=600 if size == "full" else 240,
        )
        verdicts.append(verdict)
        _table([verdict])
        if not verdict.passed:
            console.print(
                f"[red]{verdict.scenario}[/red]: {json.dumps(verdict.details, default=str)[:3000]}"
            )
    report = None
    if not only or any("overload" in o for o in only):
        report = await overload(stack, catalog, settings, progress=_progress)
    return verdicts, report


def _table(verdicts: list[Verdict]) -> None:
    table = Table(title="tongban under faults")
    for header in HEADERS:
        table.add_column(header, justify="left" if header == "scenario" else "right")
    for row in verdict_rows(verdicts):
        table.add_row(*row)
    console.print(table)


@app.command()
def main(
    size: Annotated[str, typer.Option(help="full (make faults) or reduced (make test)")] = "full",
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="run only scenarios whose name contains this (repeatable; 'overload': the "
            "overload check)"
        ),
    ] = None,
    replicas: Annotated[int, typer.Option(help="processes per service (services.sh REPLICAS)")] = 2,
    report: Annotated[Path, typer.Option(help="where to write the JSON report")] = RUN
    / "faults"
    / "report.json",
) -> None:
    """Run the fault scenarios on the running 3-broker stack and print one row per scenario;
    exit 1 on any lost case, duplicate effect or order violation."""
    if size not in ("full", "reduced"):
        raise typer.BadParameter("size is full or reduced")
    verdicts, overload_report = asyncio.run(run_suite(size, only or [], replicas))
    _table(verdicts)
    body: dict[str, Any] = {"scenarios": [v.as_dict() for v in verdicts]}
    if overload_report is not None:
        body["overload"] = {**overload_report.__dict__, "passed": overload_report.passed}
        console.print(
            f"overload: capacity {overload_report.capacity_per_s}/s, offered "
            f"{overload_report.offered_per_s}/s, answers {overload_report.answers}, timeouts "
            f"{overload_report.timeouts}, slowest answer {overload_report.max_answer_s}s, accepted "
            f"{overload_report.accepted}, lost {overload_report.lost}: "
            + ("PASS" if overload_report.passed else "FAIL")
        )
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(body, indent=2, default=str))
    console.print(f"report: {report}")
    failed = [v for v in verdicts if not v.passed]
    for v in failed:
        console.print(f"[red]{v.scenario}[/red]: {json.dumps(v.details, default=str)[:3000]}")
    if failed or (overload_report is not None and not overload_report.passed):
        sys.exit(1)


if __name__ == "__main__":
    app()
