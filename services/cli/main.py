"""The `tongban` command: operators' and developers' entry point (`tongban --help`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, NoReturn

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from services.cli.ops.commands import register_ops_commands
from services.common import migrations
from services.common.auth import SCOPED_ROLES, AuthSettings, Role, mint_token
from services.common.kafka import ensure_topics, standard_topics
from services.common.settings import CommonSettings
from services.operators.catalog_file import CatalogFileError, load_catalog_file

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
    runtime_role: Annotated[
        str,
        typer.Option(
            help="each service's run-time role, granted its own schema after the upgrade "
            "({service} is replaced); skipped when the role does not exist"
        ),
    ] = "tongban_{service}",
) -> None:
    """Bring each service's PostgreSQL schema to its newest Alembic revision, as the schema
    owner (TONGBAN_MIGRATION_DATABASE_URL, else TONGBAN_DATABASE_URL), then grant each
    service's run-time role its tables (INSERT and SELECT only on the audit trail)."""
    settings = CommonSettings()
    chosen = service or list(SERVICES)
    unknown = sorted(set(chosen) - set(SERVICES))
    if unknown:
        raise typer.BadParameter(f"unknown service {unknown}; choose from {', '.join(SERVICES)}")
    url = settings.migration_url
    for name in chosen:
        role = runtime_role.format(service=name)
        granted = migrations.migrate(name, url, role)
        note = f", granted to {role}" if granted else f" ({role} not granted: no such role)"
        if role == migrations.role_of(url):
            note = ""
        console.print(f"[green]migrated[/] {name}{note}")


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


catalog_app = typer.Typer(help="The service-item catalog (owned by routing).", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("load")
def catalog_load(
    file: Annotated[
        Path,
        typer.Argument(
            help="catalog file, YAML or JSON (DESIGN.md §3)",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    routing_url: Annotated[
        str, typer.Option(envvar="TONGBAN_ROUTING_URL", help="routing service base URL")
    ] = "http://127.0.0.1:8002",
    token: Annotated[
        str | None,
        typer.Option(envvar="TONGBAN_TOKEN", help="an admin bearer token (dev: minted for you)"),
    ] = None,
) -> None:
    """Load a whole catalog as the next version (admins); a bad catalog is refused with every
    problem listed."""
    raw = load_catalog_file(file)
    if token is None:
        settings = AuthSettings()
        if not settings.is_dev:
            console.print("[red]give an admin token[/]: --token or TONGBAN_TOKEN")
            raise typer.Exit(2)
        token = mint_token(settings, subject="cli-admin", role=Role.admin, scope=None)
    try:
        answer = httpx.post(
            f"{routing_url}/v1/catalog",
            json=raw,
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.HTTPError as exc:
        console.print(f"[red]routing is not reachable at {routing_url}[/]: {exc}")
        raise typer.Exit(2) from None
    body = answer.json()
    if answer.status_code == 201:
        console.print(
            f"[green]catalog version {body['version']}[/] in force: city "
            f"{body['city']}, {body['items']} items"
        )
        for warning in body.get("warnings", []):
            console.print(f"  [yellow]warning[/] {warning['field']}: {warning['message']}")
        return
    console.print(f"[red]{body.get('title', 'refused')}[/]: {body.get('detail', '')}")
    if body.get("errors"):
        table = Table("where", "problem")
        for err in body["errors"]:
            table.add_row(str(err.get("field", "")), str(err.get("message", "")))
        console.print(table)
    raise typer.Exit(1)


@app.command()
def demo(
    catalog: Annotated[Path, typer.Option(help="catalog file to load")] = Path(
        "deploy/demo/catalog.yaml"
    ),
    cases: Annotated[int, typer.Option(min=1, help="how many cases to submit")] = 60,
    seed: Annotated[int, typer.Option(help="random seed of the generated applicants")] = 7,
    timeout: Annotated[float, typer.Option(help="seconds to wait for every case to end")] = 180,
    lapse_file: Annotated[
        Path | None,
        typer.Option(help="write the outstanding deferral's case id here (for demo-lapse)"),
    ] = None,
) -> None:
    """Run the case loop end to end on the running services (make demo starts them; their
    ports move with SERVICES_PORT_OFFSET, as in deploy/local/services.sh)."""
    from services.cli.demo import Endpoints, run_demo

    code = asyncio.run(
        run_demo(
            catalog,
            count=cases,
            seed=seed,
            timeout=timeout,
            endpoints=Endpoints(),
            console=console,
            lapse_file=lapse_file,
        )
    )
    raise typer.Exit(code)


@app.command("demo-lapse")
def demo_lapse(
    case_id: Annotated[str, typer.Argument(help="the demo's outstanding deferral")],
    timeout: Annotated[float, typer.Option(help="seconds to wait for it to lapse")] = 60,
) -> None:
    """Show the demo's outstanding deferral lapse: run it on services whose clock is past its
    due day (`make demo` restarts them with TONGBAN_CLOCK_OFFSET_S for this)."""
    from services.cli.demo import Endpoints, watch_lapse

    raise typer.Exit(
        asyncio.run(watch_lapse(case_id, timeout=timeout, endpoints=Endpoints(), console=console))
    )


@app.command("federation-demo")
def federation_demo(
    region1_catalog: Annotated[Path, typer.Option(help="region 1's catalog file")] = Path(
        "deploy/demo/catalog.yaml"
    ),
    region2_catalog: Annotated[Path, typer.Option(help="region 2's catalog file")] = Path(
        "deploy/demo/partner-catalog.yaml"
    ),
    region1_offset: Annotated[
        int,
        typer.Option(envvar="SERVICES_PORT_OFFSET", help="region 1's services port offset"),
    ] = 0,
    region2_offset: Annotated[
        int,
        typer.Option(envvar="REGION2_SERVICES_PORT_OFFSET", help="region 2's services port offset"),
    ] = 10000,
    cases: Annotated[int, typer.Option(min=1, help="cases each way")] = 5,
    seed: Annotated[int, typer.Option(help="random seed of the generated applicants")] = 17,
    timeout: Annotated[
        float, typer.Option(help="seconds to wait for every case to close in both regions")
    ] = 180,
) -> None:
    """Cases across regions (跨省通办) on two running regions linked by MirrorMaker 2 (`make
    federation` runs it): applicants of each city at the other's counters for cross_region
    items, decided by the handling region, closed in both regions' views; one refused
    city-scope item. Prints a table per case; exits 1 if a case does not close in both."""
    from services.cli.federation import load_region, run_federation_demo

    regions = (
        load_region("region 1", region1_catalog, region1_offset),
        load_region("region 2", region2_catalog, region2_offset),
    )
    code = asyncio.run(
        run_federation_demo(regions, per_way=cases, seed=seed, timeout=timeout, console=console)
    )
    raise typer.Exit(code)


handover_app = typer.Typer(
    help="Entrusted intake handover keys: one Ed25519 pair per intake office.",
    no_args_is_help=True,
)
app.add_typer(handover_app, name="handover-keys")


@handover_app.command("generate")
def handover_keys_generate(
    catalog: Annotated[
        Path,
        typer.Option(
            help="catalog file (YAML or JSON) naming the offices",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(help="directory for <office>.key (intake) and <office>.pub (approval)"),
    ],
    force: Annotated[bool, typer.Option(help="replace key files that already exist")] = False,
) -> None:
    """Write a key pair per office of the catalog. Give intake the .key files
    (TONGBAN_HANDOVER_KEY_DIR, mode 0600) and approval the .pub files
    (TONGBAN_HANDOVER_TRUST_DIR)."""
    from services.common.catalog import validate_catalog
    from services.common.handover import (
        PRIVATE_SUFFIX,
        PUBLIC_SUFFIX,
        HandoverKeyError,
        write_office_keys,
    )

    try:
        parsed, problems = validate_catalog(load_catalog_file(catalog))
    except CatalogFileError as exc:
        console.print(f"[red]cannot read the catalog[/]: {exc}")
        raise typer.Exit(1) from None
    if parsed is None:
        console.print(f"[red]the catalog is refused[/] ({len(problems)} problems):")
        for problem in problems:
            console.print(f"  {problem.path}: {problem.message}")
        raise typer.Exit(1)
    existing = [
        out / (o.code + suffix)
        for o in parsed.offices
        for suffix in (PRIVATE_SUFFIX, PUBLIC_SUFFIX)
        if (out / (o.code + suffix)).exists()
    ]
    if existing and not force:
        console.print(
            f"[red]{len(existing)} key files exist already[/] in {out} "
            "(--force replaces them; handovers signed with old keys then fail to verify):"
        )
        for path in existing:
            console.print(f"  {path}")
        raise typer.Exit(1)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    table = Table("office", "kind", "division", "key id", "files", title=f"handover keys in {out}")
    try:
        for office in parsed.offices:
            key_id, private_path, public_path = write_office_keys(out, office.code, force=force)
            table.add_row(
                office.code,
                office.kind.value,
                office.division,
                key_id,
                f"{private_path.name}, {public_path.name}",
            )
    except (HandoverKeyError, OSError) as exc:
        console.print(f"[red]cannot write the keys[/]: {exc}")
        raise typer.Exit(1) from None
    console.print(table)
    console.print(
        f"[green]{len(parsed.offices)} key pairs[/] in {out}: set TONGBAN_HANDOVER_KEY_DIR for "
        "intake (the .key files), copy the .pub files to approval's TONGBAN_HANDOVER_TRUST_DIR."
    )


@app.command()
def token(
    role: Annotated[Role, typer.Option(help="what the holder may do", case_sensitive=False)],
    scope: Annotated[
        str | None,
        typer.Option(help="office code (clerk) or department code (reviewer)"),
    ] = None,
    subject: Annotated[
        str | None, typer.Option(help="who the token names (default: dev-<role>[-<scope>])")
    ] = None,
    ttl: Annotated[
        int | None,
        typer.Option(min=1, help="lifetime in seconds (default: TONGBAN_AUTH_TOKEN_TTL_S, 8 h)"),
    ] = None,
) -> None:
    """Print a bearer token for the local services; dev and test environments only.

    curl -H "Authorization: Bearer $(tongban token --role clerk --scope HC01-DC)" ...
    """

    def refuse(message: str) -> NoReturn:
        typer.echo(f"tongban token: {message}", err=True)
        raise typer.Exit(2)

    environment = CommonSettings().environment
    if environment not in ("dev", "test"):
        refuse(
            f"tokens are minted here only in dev/test (TONGBAN_ENVIRONMENT={environment}); "
            "production tokens come from the identity provider"
        )
    if role in SCOPED_ROLES and not scope:
        what = "office" if role is Role.clerk else "department"
        refuse(f"a {role} token needs --scope (the {what} code)")
    try:
        settings = AuthSettings()
    except ValidationError as exc:
        refuse(f"the auth settings are not valid: {exc}")
    name = subject or "-".join(p for p in ("dev", role.value, scope) if p)
    typer.echo(mint_token(settings, subject=name, role=role, scope=scope, ttl_s=ttl))


# Operators: tail, lag and dead letters (services/cli/ops).
register_ops_commands(app)


@app.command("console")
def console_command(
    host: Annotated[
        str | None, typer.Option(help="address to listen on (default TONGBAN_HTTP_HOST, 127.0.0.1)")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="port (default TONGBAN_HTTP_PORT, 8000)", min=1, max=65535)
    ] = None,
) -> None:
    """The operators' web console (http://127.0.0.1:8000): live event stream with filters,
    case timelines, SLA board, triage queue, dead letters and consumer lag.

    No login of its own: open on localhost in dev; in production behind the city's SSO proxy.

    Outside dev/test it needs TONGBAN_CONSOLE_TOKEN (an operator token for the services)."""
    from services.console.app import ConsoleSettings, serve

    overrides = {k: v for k, v in (("http_host", host), ("http_port", port)) if v is not None}
    try:
        settings = ConsoleSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:  # the messages only: the input may hold the token
        for error in exc.errors():
            typer.echo(f"tongban console: {error['msg']}", err=True)
        raise typer.Exit(2) from None
    serve(settings)


if __name__ == "__main__":
    app()
