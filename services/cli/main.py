"""The `tongban` command: operators' and developers' entry point (`tongban --help`)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.common import migrations
from services.common.kafka import ensure_topics, standard_topics
from services.common.settings import CommonSettings

SERVICES = ("intake", "routing", "approval", "delivery")

app = typer.Typer(
    help="tongban: route government-service cases across administrative levels.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.command()
def migrate(
    service: Annotated[
        list[str] | None,
        typer.Argument(help="services to migrate (default: all four)", show_default=False),
    ] = None,
) -> None:
    """Bring each service's PostgreSQL schema to its newest Alembic revision."""
    settings = CommonSettings()
    chosen = service or list(SERVICES)
    unknown = sorted(set(chosen) - set(SERVICES))
    if unknown:
        raise typer.BadParameter(f"unknown service {unknown}; choose from {', '.join(SERVICES)}")
    for name in chosen:
        migrations.upgrade(name, settings.database_url)
        console.print(f"[green]migrated[/] {name}")


@app.command()
def topics() -> None:
    """Create the case, dead-letter and catalog topics that do not exist yet."""
    settings = CommonSettings()
    specs = standard_topics()
    created = asyncio.run(ensure_topics(settings, specs))
    table = Table("topic", "partitions", "replication", "state")
    for spec in specs:
        table.add_row(
            spec.name,
            str(spec.partitions or settings.kafka_partitions),
            str(settings.kafka_replication),
            "created" if spec.name in created else "exists",
        )
    console.print(table)


if __name__ == "__main__":
    app()
