"""The operator commands as typer commands; `register_ops_commands(app)` adds them to `tongban`.

Results go to standard output (tables, lines, or JSON with `--json`); notes, progress and
errors go to standard error, so `tongban tail --json | jq` sees JSON only. Exit codes: 0 done,
1 something asked for was not found or refused, 2 bad arguments or Kafka unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from contracts.events import ReplayRecord
from services.cli.ops.dlq import (
    LetterFilters,
    ReplayOutcome,
    load_letters,
    load_letters_at,
    load_replays,
    parse_ref,
    partition_count,
    printable,
    refusal,
    replay_letters,
)
from services.cli.ops.events import EventView, parse_when
from services.cli.ops.filters import FilterError, check_filters
from services.cli.ops.kafka_io import StartAt, StartKind, latest_catalog
from services.cli.ops.lag import fetch_lag, service_of, totals
from services.cli.ops.merge import DEFAULT_DELAY_S, DEFAULT_RUN_SIZE
from services.cli.ops.render import event_line, json_line, masked_headers
from services.cli.ops.tail import TailError, TailOptions, run_tail
from services.common.catalog import validate_catalog as _validate_catalog
from services.common.city import CITY_TZ
from services.common.logs import mask_text
from services.common.settings import CommonSettings
from services.operators.catalog_file import CatalogFileError, load_catalog_file
from services.operators.dead_letters import REPLAYS_TOPIC, DeadLetter
from services.operators.event_facts import EventFilter, mask_event_data, short_type
from services.policy.catalog_index import CatalogIndex

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

T = TypeVar("T")


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[red]error[/]: {message}")
    raise typer.Exit(code)


def _run(coro: Coroutine[Any, Any, T], settings: CommonSettings) -> T:
    """asyncio.run with Kafka trouble turned into a short message and exit code 2."""
    try:
        return asyncio.run(coro)
    except (KafkaError, OSError) as exc:
        _fail(f"Kafka at {settings.kafka_bootstrap}: {exc!r}")
    except (LookupError, TailError, FilterError) as exc:
        _fail(str(exc))


def _when(option: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_when(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def _local(moment: datetime) -> str:
    return moment.astimezone(CITY_TZ).strftime("%Y-%m-%d %H:%M:%S")


# -- tail ----------------------------------------------------------------------------------------

TAIL_HELP = f"""Follow the case topics live: one line per event, merged in time order.

Default: every case topic (case.intake/routing/decisions/approval/delivery.v1) from now on;
--dlq adds the dead-letter topic, --topic chooses topics. Events of all topics and partitions
are merged by event time (ce_time; ties by record timestamp, topic, partition, offset).

A backlog (--from-beginning, --from-time, --from-offset): every record from there up to the
end offsets seen at the start is read first, then printed in exact event-time order, however
large (past {DEFAULT_RUN_SIZE:,} records, sorted runs go to temporary files). Live events
after it print through a reorder buffer: each is held at most --order-delay seconds (default
{DEFAULT_DELAY_S}), so one arriving up to that late still prints in its place; one arriving
later prints when due, after younger ones. No event is dropped.

Filters (repeat one to allow several values; different filters must all match): --case and
--type take globs (--type routed, --type 'gov.case.*'); --department, --office and --path
match what the event names, or what an earlier event of its case named during this tail.
--district needs the catalog: --catalog FILE, or else the newest version on catalog.v1; an
office, department or applicant division is in a district only if the catalog says so.
--bundle (an id or glob) follows a bundle (一件事): its own events on bundle.v1, read by
default then, and every event of its members (each names its `bundle_id`; an event that does
not, a department's decision say, matches when an earlier event of its case named it).

Personal data is always masked. Ctrl-C stops cleanly (exit 0).
"""


TailTopics = Annotated[
    list[str] | None,
    typer.Option("--topic", "-t", help="topic to follow (repeat); default: every case topic"),
]
FollowDlq = Annotated[bool, typer.Option("--dlq", help="follow the dead-letter topic too")]
FromBeginning = Annotated[
    bool, typer.Option("--from-beginning", help="start at the oldest record kept")
]
FromTime = Annotated[
    str | None,
    typer.Option(
        "--from-time",
        metavar="WHEN",
        help="start at this time: ISO 8601 (city time without offset) or 30m, 2h, 1d ago",
    ),
]
FromOffset = Annotated[
    int | None,
    typer.Option("--from-offset", min=0, help="start at this offset of every partition"),
]
CaseGlobs = Annotated[list[str] | None, typer.Option("--case", "-c", help="case id or glob")]
TypeGlobs = Annotated[
    list[str] | None,
    typer.Option("--type", help="event type or glob, full or short (routed, sla_*)"),
]
Departments = Annotated[
    list[str] | None, typer.Option("--department", "-d", help="handling department code")
]
Offices = Annotated[list[str] | None, typer.Option("--office", help="intake office code")]
Districts = Annotated[
    list[str] | None,
    typer.Option("--district", help="district code (office, department or applicant's)"),
]
BundleGlobs = Annotated[
    list[str] | None,
    typer.Option("--bundle", "-b", help="bundle id or glob: its events and its members'"),
]
RoutePaths = Annotated[
    list[str] | None,
    typer.Option("--path", help="route path: online, delegated, entrusted, municipal"),
]
DistrictsCatalog = Annotated[
    Path | None,
    typer.Option(
        help="catalog file for --district (default: newest on catalog.v1)",
        exists=True,
        dir_okay=False,
        readable=True,
    ),
]
TailJson = Annotated[
    bool, typer.Option("--json", help="JSON lines: coordinates, headers, masked data")
]
MaxEvents = Annotated[int | None, typer.Option("--max", min=1, help="stop after this many events")]
IdleTimeout = Annotated[
    float | None,
    typer.Option(
        min=0.1,
        help="stop after this many seconds without a new record (once any backlog is read)",
    ),
]
OrderDelay = Annotated[
    float,
    typer.Option(min=0, max=60, help="seconds an event may wait for older ones (0: none)"),
]


def tail(
    topic: TailTopics = None,
    dlq: FollowDlq = False,
    from_beginning: FromBeginning = False,
    from_time: FromTime = None,
    from_offset: FromOffset = None,
    case: CaseGlobs = None,
    event_type: TypeGlobs = None,
    department: Departments = None,
    office: Offices = None,
    district: Districts = None,
    path: RoutePaths = None,
    bundle: BundleGlobs = None,
    catalog: DistrictsCatalog = None,
    as_json: TailJson = False,
    max_events: MaxEvents = None,
    timeout: IdleTimeout = None,
    order_delay: OrderDelay = DEFAULT_DELAY_S,
) -> None:
    """Follow the case topics live (help: TAIL_HELP)."""
    settings = CommonSettings()
    start = _start_at(from_beginning, from_time, from_offset)
    filters = EventFilter.of(
        cases=case or (),
        types=event_type or (),
        departments=department or (),
        offices=office or (),
        districts=district or (),
        paths=path or (),
        bundles=bundle or (),
    )
    try:
        check_filters(replace(filters, districts=frozenset()))
    except FilterError as exc:
        raise typer.BadParameter(str(exc), param_hint="--path") from None
    options = TailOptions(
        topics=tuple(topic or ()),
        include_dlq=dlq,
        start=start,
        filters=filters,
        catalog=_catalog_index(catalog) if filters.districts and catalog is not None else None,
        max_events=max_events,
        idle_timeout=timeout,
        order_delay=order_delay,
    )
    output = _TailOutput(as_json=as_json)
    with output.reading:
        _run(_follow(settings, options, output), settings)
    output.close()
    err.print(f"[dim]tail stopped ({output.why_stopped}): {output.written} events shown[/]")


def _start_at(from_beginning: bool, from_time: str | None, from_offset: int | None) -> StartAt:
    """Where the tail starts reading: at most one of the --from-* options, else now."""
    starts = [from_beginning, from_time is not None, from_offset is not None]
    if sum(starts) > 1:
        raise typer.BadParameter(
            "choose one of --from-beginning, --from-time, --from-offset", param_hint="--from-*"
        )
    if from_beginning:
        return StartAt(StartKind.beginning)
    if from_time is not None:
        return StartAt(StartKind.time, time=_when("--from-time", from_time))
    if from_offset is not None:
        return StartAt(StartKind.offset, offset=from_offset)
    return StartAt(StartKind.now)


class _TailOutput:
    """Where the tail's events go: a line (or JSON line) each on standard output, and while a
    backlog is read a progress bar on standard error. A closed pipe (`tongban tail | head`)
    stops the tail quietly."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.stop = asyncio.Event()
        self.broken_pipe = False
        self.written = 0
        # The bar shows while a backlog is read (nothing is printed then) and goes away before
        # its first line; on a terminal only.
        self.reading = Progress(
            TextColumn("reading the backlog"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        )

    def emit(self, view: EventView) -> None:
        if self.broken_pipe:
            return
        try:
            if self.as_json:
                text = json_line(view) + "\n"
            else:
                # Rendered here and written below, so that a closed pipe reaches us (rich
                # would exit with status 1 itself).
                with out.capture() as captured:
                    out.print(event_line(view))
                text = captured.get()
            sys.stdout.write(text)
            sys.stdout.flush()
            self.written += 1
        except BrokenPipeError:  # `tongban tail | head`: the reader is gone; stop quietly
            self.broken_pipe = True
            self.stop.set()

    def backlog_read(self, done: int, total: int) -> None:
        if not self.reading.tasks:
            self.reading.add_task("backlog", total=total)
        self.reading.update(self.reading.tasks[0].id, completed=done, total=total)
        if done >= total:
            self.reading.stop()

    def close(self) -> None:
        if self.broken_pipe:
            # Keep the interpreter from complaining about the closed pipe when it exits.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    @property
    def why_stopped(self) -> str:
        return (
            "output closed" if self.broken_pipe else "interrupted" if self.stop.is_set() else "done"
        )


async def _follow(settings: CommonSettings, options: TailOptions, output: _TailOutput) -> int:
    """Run the tail until it stops (Ctrl-C, SIGTERM, --max, --timeout, a closed pipe), with
    the catalog of catalog.v1 for --district when no file was given."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, output.stop.set)
    if options.filters.districts and options.catalog is None:
        found = await latest_catalog(settings)
        if found is None:
            raise FilterError("--district: no catalog on catalog.v1; give --catalog FILE")
        err.print(f"[dim]districts from catalog version {found[0]} on catalog.v1[/]")
        options = replace(options, catalog=found[1])
    check_filters(options.filters, options.catalog)
    return await run_tail(
        settings,
        options,
        emit=output.emit,
        note=lambda m: err.print(f"[dim]{m}[/]"),
        stop=output.stop,
        progress=output.backlog_read,
    )


def _catalog_index(catalog: Path) -> CatalogIndex:
    try:
        parsed, problems = _validate_catalog(load_catalog_file(catalog))
    except CatalogFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--catalog") from None
    if parsed is None:
        raise typer.BadParameter(
            f"the catalog is refused ({len(problems)} problems; first: {problems[0]})",
            param_hint="--catalog",
        )
    return CatalogIndex(parsed)


# -- lag -----------------------------------------------------------------------------------------


def lag(
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="only this consumer group (repeat)")
    ] = None,
    everything: Annotated[
        bool,
        typer.Option("--all", help="every consumer group, not only tongban services' groups"),
    ] = False,
    lagging: Annotated[
        bool, typer.Option("--lagging", help="only partitions that are behind")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of tables")] = False,
) -> None:
    """Consumer-group lag per service, topic and partition: end offset minus committed offset.

    Groups of the services (intake-*, routing-*, approval-*, delivery-*) by default. A topic
    shows once the group has committed on it; its partitions without a commit count from
    their first offset.
    """
    settings = CommonSettings()
    with err.status("reading consumer groups and offsets...", spinner="dots"):
        infos, rows = _run(fetch_lag(settings, names=group or (), everything=everything), settings)
    total = sum(r.lag for r in rows)
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "groups": [vars(i) for i in infos],
                    "partitions": [r.as_dict() for r in rows],
                    "total_lag": total,
                }
            )
        )
        return
    if not infos:
        err.print("[yellow]no consumer groups found[/]" + ("" if group else " (try --all)"))
        raise typer.Exit(1 if group else 0)
    shown = [r for r in rows if r.lag > 0 or not lagging]
    table = Table("group", "service", "topic", "partition", "committed", "end", "lag")
    table.title = "consumer lag per partition"
    for r in shown:
        table.add_row(
            r.group,
            service_of(r.group) or "-",
            r.topic,
            str(r.partition),
            "-" if r.committed is None else str(r.committed),
            str(r.end),
            f"[red]{r.lag}[/]" if r.lag else "0",
        )
    if shown:
        out.print(table)
    sums = Table("group", "state", "members", "topic", "lag", title="totals")
    per_topic = totals(rows)
    for info in infos:
        topics = sorted(t for g, t in per_topic if g == info.group) or ["-"]
        for t in topics:
            value = per_topic.get((info.group, t), 0)
            sums.add_row(
                info.group, info.state, str(info.members), t, f"[red]{value}[/]" if value else "0"
            )
    out.print(sums)
    out.print(f"total lag: [bold]{total}[/] records across {len(infos)} groups")


# -- dlq -----------------------------------------------------------------------------------------

dlq_app = typer.Typer(
    help="Dead letters: list them, show one, replay them to their topic after a fix. "
    "A dead letter is named PARTITION:OFFSET in the dead-letter topic.",
    no_args_is_help=True,
)

DlqTopic = Annotated[
    str | None,
    typer.Option(
        "--dlq-topic", help="the dead-letter topic (default: TONGBAN_DLQ_TOPIC or case.dlq.v1)"
    ),
]
ReplaysTopic = Annotated[str, typer.Option("--replays-topic", help="where replays are recorded")]
Since = Annotated[
    str | None,
    typer.Option(metavar="WHEN", help="only dead letters since: ISO 8601 or 30m, 2h, 1d ago"),
]
Reason = Annotated[
    str | None, typer.Option(help="only dead letters whose reason contains this text")
]
Types = Annotated[
    list[str] | None, typer.Option("--type", help="only this event type or glob (repeat)")
]
Cases = Annotated[list[str] | None, typer.Option("--case", help="only this case id (repeat)")]


def _letter_filters(
    since: str | None, reason: str | None, types: list[str] | None, cases: list[str] | None
) -> LetterFilters:
    return LetterFilters(
        since=_when("--since", since),
        reason=reason,
        types=tuple(types or ()),
        cases=tuple(cases or ()),
    )


def _original(letter: DeadLetter) -> str:
    if not letter.original_topic:
        return "?"
    return f"{letter.original_topic}/{letter.original_partition}@{letter.original_offset}"


def _letter_data(value: bytes) -> tuple[Any, str | None]:
    """(the value as masked JSON, None), or (None, its head as printable masked text) when
    it is not JSON that can be written out again (a dead letter may hold anything)."""
    try:
        parsed = json.loads(value.decode("utf-8"))
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")  # lone surrogates fail here
    except (ValueError, RecursionError):  # not UTF-8, not JSON, 5000-digit numbers, nesting
        return None, printable(mask_text(value[:2000].decode("utf-8", errors="replace")), 2000)
    return (mask_event_data(parsed) if isinstance(parsed, dict) else parsed), None


def _letter_dict(letter: DeadLetter, replays: list[ReplayRecord]) -> dict[str, Any]:
    data: Any = None
    value_text: str | None = None
    if letter.value is not None:
        data, value_text = _letter_data(letter.value)
    return {
        "ref": letter.ref,
        "dlq_topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "time": letter.time.astimezone(CITY_TZ).isoformat(timespec="milliseconds"),
        "original": {
            "topic": letter.original_topic,
            "partition": letter.original_partition,
            "offset": letter.original_offset,
        },
        "type": printable(letter.event_type) if letter.event_type is not None else None,
        "event_id": printable(letter.event_id) if letter.event_id is not None else None,
        "case_id": printable(mask_text(letter.case_id)) if letter.case_id else None,
        "source": printable(letter.source),
        "reason": printable(mask_text(letter.reason), 2000),
        "headers": masked_headers(
            {
                printable(k, 100): printable(v.decode("utf-8", "replace"), 500)
                for k, v in letter.headers
            }
        ),
        "data": data,
        **({"value_text": value_text} if value_text is not None else {}),
        "replays": [r.model_dump(mode="json") for r in replays],
    }


@dlq_app.command("list")
def dlq_list(
    dlq_topic: DlqTopic = None,
    since: Since = None,
    reason: Reason = None,
    event_type: Types = None,
    case: Cases = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="show only the newest N that match")
    ] = None,
    replays_topic: ReplaysTopic = REPLAYS_TOPIC,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """Table of dead letters, oldest first: where they came from, why, and if replayed."""
    settings = CommonSettings()
    topic = dlq_topic or settings.dlq_topic
    filters = _letter_filters(since, reason, event_type, case)

    async def main() -> tuple[list[DeadLetter], dict[tuple[str, int, int], list[ReplayRecord]]]:
        return await load_letters(settings, topic, filters), await load_replays(
            settings, replays_topic
        )

    with err.status(f"reading {topic}...", spinner="dots"):
        letters, history = _run(main(), settings)
    matched = len(letters)
    if limit is not None:
        letters = letters[-limit:]
    if as_json:
        for letter in letters:
            entry = _letter_dict(letter, history.get((topic, letter.partition, letter.offset), []))
            sys.stdout.write(json.dumps(entry, ensure_ascii=False) + "\n")
        return
    table = Table(
        "ref", "time", "original", "type", "case", "source", "reason", "replayed", title=topic
    )
    for letter in letters:
        replays = history.get((topic, letter.partition, letter.offset), [])
        table.add_row(
            letter.ref,
            _local(letter.time),
            Text(printable(_original(letter))),
            # Text(): what a dead letter holds is never read as rich markup.
            Text(printable(short_type(letter.event_type), 60) if letter.event_type else "(none)"),
            Text(printable(mask_text(letter.case_id or "-"), 60)),
            Text(printable(letter.source or "-", 60)),
            Text(printable(mask_text(letter.reason), 100)),
            f"[green]{len(replays)}x[/]" if replays else "-",
        )
    out.print(table)
    out.print(
        f"{matched} dead letters"
        + (" match" if filters.any else "")
        + (f", newest {len(letters)} shown" if len(letters) < matched else "")
    )


@dlq_app.command("show")
def dlq_show(
    ref: Annotated[str, typer.Argument(help="PARTITION:OFFSET (a bare OFFSET: one partition)")],
    dlq_topic: DlqTopic = None,
    replays_topic: ReplaysTopic = REPLAYS_TOPIC,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of tables")] = False,
) -> None:
    """One dead letter: headers, reason, masked data and its replays."""
    settings = CommonSettings()
    topic = dlq_topic or settings.dlq_topic

    async def main() -> tuple[DeadLetter | None, list[ReplayRecord]]:
        count = await partition_count(settings, topic)
        if count is None:
            raise LookupError(f"topic {topic} does not exist")
        try:
            place = parse_ref(ref, partitions=count)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="REF") from None
        letter = (await load_letters_at(settings, topic, [place]))[place]
        history = await load_replays(settings, replays_topic)
        return letter, history.get((topic, *place), [])

    letter, replays = _run(main(), settings)
    if letter is None:
        _fail(f"no dead letter at {ref} in {topic}", code=1)
    entry = _letter_dict(letter, replays)
    if as_json:
        out.print_json(json.dumps(entry, ensure_ascii=False))
        return
    facts = Table(show_header=False, title=f"dead letter {letter.ref} in {topic}")
    facts.add_column(style="bold")
    facts.add_column()
    for label, value in (
        ("time", _local(letter.time)),
        ("original", printable(_original(letter))),
        ("type", entry["type"] or "(none)"),
        ("event id", entry["event_id"] or "(none)"),
        ("case", entry["case_id"] or "-"),
        ("source", entry["source"] or "-"),
        ("reason", entry["reason"]),
    ):
        facts.add_row(label, Text(value))  # never read as rich markup
    out.print(facts)
    headers = Table("header", "value", title="headers")
    for name, value in entry["headers"].items():
        headers.add_row(Text(name), Text(value))
    out.print(headers)
    if replays:
        done = Table("replayed at", "operator", "to", "forced", title="replays")
        for r in replays:
            done.add_row(
                _local(r.replayed_at),
                r.operator,
                f"{r.original_topic}/{r.replayed_to_partition}@{r.replayed_to_offset}",
                "yes" if r.forced else "no",
            )
        out.print(done)
    else:
        out.print("[dim]never replayed[/]")
    out.print("data (personal data masked):")
    if entry["data"] is not None:
        out.print_json(json.dumps(entry["data"], ensure_ascii=False))
    else:
        out.print(Text(entry.get("value_text") or "(no value)"))


ReplayRefs = Annotated[
    list[str] | None,
    typer.Argument(help="dead letters to replay: PARTITION:OFFSET ...", show_default=False),
]
AllMatching = Annotated[
    bool,
    typer.Option(
        "--all-matching", help="replay every dead letter that matches the filters instead"
    ),
]
Operator = Annotated[
    str | None, typer.Option(help="who replays, recorded with each replay (default: $USER)")
]
Force = Annotated[
    bool,
    typer.Option(help="replay even if replayed before, or not a valid CloudEvent"),
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="only show what would be replayed")]
AssumeYes = Annotated[bool, typer.Option("--yes", "-y", help="no confirmation for --all-matching")]
ReplayHistory = dict[tuple[str, int, int], list[ReplayRecord]]


@dlq_app.command("replay")
def dlq_replay(
    refs: ReplayRefs = None,
    all_matching: AllMatching = False,
    dlq_topic: DlqTopic = None,
    since: Since = None,
    reason: Reason = None,
    event_type: Types = None,
    case: Cases = None,
    operator: Operator = None,
    force: Force = False,
    dry_run: DryRun = False,
    yes: AssumeYes = False,
    replays_topic: ReplaysTopic = REPLAYS_TOPIC,
) -> None:
    """Re-publish dead letters to their original topic (key, value and headers as they were,
    without the dlq_* headers; idempotent producer) and record each replay on
    case.dlq.replays.v1. A dead letter replayed before is refused unless --force.

    The event keeps its id: consumers never recorded a dead-lettered event as processed, so
    it is applied once; an accidental second replay is dropped by their inbox.
    """
    settings = CommonSettings()
    topic = dlq_topic or settings.dlq_topic
    filters = _letter_filters(since, reason, event_type, case)
    if bool(refs) == all_matching:
        raise typer.BadParameter("give dead letters (PARTITION:OFFSET) or --all-matching")
    if refs and filters.any:
        raise typer.BadParameter("filters go with --all-matching, not with named dead letters")
    who = operator or os.environ.get("USER") or _login() or "unknown"
    with err.status(f"reading {topic} and {replays_topic}...", spinner="dots"):
        letters, missing, history = _run(
            _letters_to_replay(
                settings, topic, replays_topic, None if all_matching else refs or [], filters
            ),
            settings,
        )
    for text in missing:
        err.print(f"[red]no dead letter at {text}[/] in {topic}")

    def earlier(letter: DeadLetter) -> list[ReplayRecord]:
        return history.get((topic, letter.partition, letter.offset), [])

    if all_matching and not force:
        skipped = [x for x in letters if earlier(x)]
        letters = [x for x in letters if not earlier(x)]
        if skipped:
            err.print(f"[dim]{len(skipped)} matching dead letters were replayed before: skipped[/]")
    if dry_run or (all_matching and letters and not yes):
        _print_plan(letters, earlier, topic=topic, force=force)
        if dry_run:
            return
        if not typer.confirm(f"replay {len(letters)} dead letters as {who}?", err=True):
            raise typer.Exit(1)
    if not letters:
        err.print("nothing to replay")
        raise typer.Exit(1 if missing else 0)
    outcomes = _replay_with_progress(
        settings, letters, operator=who, replays_topic=replays_topic, force=force, history=history
    )
    _print_outcomes(outcomes, topic)
    refused = [o for o in outcomes if o.entry is None]
    raise typer.Exit(1 if refused or missing else 0)


async def _letters_to_replay(
    settings: CommonSettings,
    topic: str,
    replays_topic: str,
    refs: list[str] | None,
    filters: LetterFilters,
) -> tuple[list[DeadLetter], list[str], ReplayHistory]:
    """(the letters named by `refs`, or matching `filters` when `refs` is None; the refs
    that name no letter; every replay recorded so far)."""
    history = await load_replays(settings, replays_topic)
    if refs is None:
        return await load_letters(settings, topic, filters), [], history
    count = await partition_count(settings, topic)
    if count is None:
        raise LookupError(f"topic {topic} does not exist")
    places: dict[tuple[int, int], str] = {}
    for text in refs:
        try:
            places.setdefault(parse_ref(text, partitions=count), text)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="REFS") from None
    found = await load_letters_at(settings, topic, places)
    missing = [text for place, text in places.items() if found[place] is None]
    return [x for x in found.values() if x is not None], missing, history


def _print_plan(
    letters: list[DeadLetter],
    earlier: Callable[[DeadLetter], list[ReplayRecord]],
    *,
    topic: str,
    force: bool,
) -> None:
    """What a replay would do with each letter (--dry-run, or before confirming)."""
    plan = Table("ref", "original", "type", "case", "would", title=f"replay plan ({topic})")
    for letter in letters:
        why = refusal(letter, earlier(letter), force=force)
        plan.add_row(
            letter.ref,
            _original(letter),
            short_type(letter.event_type),
            mask_text(letter.case_id or "-"),
            f"[yellow]refuse[/]: {why}" if why else "replay",
        )
    out.print(plan)


def _replay_with_progress(
    settings: CommonSettings,
    letters: list[DeadLetter],
    *,
    operator: str,
    replays_topic: str,
    force: bool,
    history: ReplayHistory,
) -> list[ReplayOutcome]:
    """Replay the letters, with a bar on standard error when there are several."""
    progress = Progress(
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=len(letters) < 2,
    )
    with progress:
        task = progress.add_task("replay", total=len(letters))
        return _run(
            replay_letters(
                settings,
                letters,
                operator=operator,
                replays_topic=replays_topic,
                force=force,
                history=history,
                progress=lambda _o: progress.advance(task),
            ),
            settings,
        )


def _print_outcomes(outcomes: list[ReplayOutcome], topic: str) -> None:
    table = Table("ref", "event id", "case", "outcome", title=f"replays from {topic}")
    for o in outcomes:
        if o.entry is not None:
            e = o.entry
            what = (
                f"[green]replayed[/] to {e.original_topic}/{e.replayed_to_partition}"
                f"@{e.replayed_to_offset}" + (" (forced)" if e.forced else "")
            )
        else:
            what = f"[red]refused[/]: {o.refused}"
        table.add_row(
            o.letter.ref, o.letter.event_id or "-", mask_text(o.letter.case_id or "-"), what
        )
    out.print(table)
    done = sum(1 for o in outcomes if o.entry is not None)
    out.print(f"{done} replayed, {len(outcomes) - done} refused")


def _login() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


# -- registration --------------------------------------------------------------------------------


def register_ops_commands(app: typer.Typer) -> None:
    """Add `tail`, `lag` and `dlq` to the `tongban` command."""
    app.command("tail", help=TAIL_HELP)(tail)
    app.command("lag")(lag)
    app.add_typer(dlq_app, name="dlq")
