"""The console's JSON API (`/api/...`, listed in app.py's docstring): the page's only data
source. Views of the services and of Kafka answer `{"available": false, "reason": ...}` when
what they read does not answer, so the page shows the rest.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from contracts.events import EVENT_TYPES, XREGION_TOPIC
from services.common.city import CITY_TZ
from services.common.kafka import ReadableFetch
from services.common.logs import get_logger
from services.common.web import Problem, errors
from services.console.events import cross_region
from services.console.kafka_views import STREAM_TOPICS
from services.console.links import link_row
from services.console.state import Console
from services.console.stream import LiveStream, sse
from services.operators.event_facts import EventFilter, Facts, facts_of_case_view

log = get_logger(__name__)

router = APIRouter(prefix="/api", tags=["console"])

SLA_WITHIN_DAYS = 3  # the SLA board's "at risk": due within three days
FilterValue = Annotated[str | None, Query(max_length=2000)]
CaseId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


def _running_console(request: Request) -> Console:
    """The console of the app serving the request (`create_app` puts it on app.state)."""
    console: Console = request.app.state.console
    return console


ConsoleDep = Annotated[Console, Depends(_running_console)]


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses=errors(422, 503),
)
async def stream(
    request: Request,
    console: ConsoleDep,
    case: FilterValue = None,
    type: FilterValue = None,
    department: FilterValue = None,
    office: FilterValue = None,
    district: FilterValue = None,
    path: FilterValue = None,
    bundle: FilterValue = None,
    start: Annotated[datetime | None, Query(alias="from")] = None,
) -> StreamingResponse:
    """Live case events as Server-Sent Events: `event: ready` once the reader is
    positioned, then one `data:` JSON line per event that passes the filters."""
    settings = console.settings
    if console.streams >= settings.stream_max_clients:
        raise Problem(
            503,
            "too_many_streams",
            "Too many live streams open",
            f"at most {settings.stream_max_clients}; close a console tab",
            retry_after=5,
        )
    if start is not None and start.tzinfo is None:
        start = start.replace(tzinfo=CITY_TZ)
    filters = EventFilter.parse(
        case=case,
        type=type,
        department=department,
        office=office,
        district=district,
        path=path,
        bundle=bundle,
    )
    live = LiveStream(
        filters,
        facts=console.facts,
        lookup=console.lookup,
        catalog=lambda: console.catalogs.latest,
        partner_names=console.partner_names,
        own_city=console.own_city,
    )
    return StreamingResponse(
        _events(console, live, request, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/cases/{case_id}", responses=errors(404, 422, 502, 503))
async def case_view(case_id: CaseId, console: ConsoleDep) -> JSONResponse:
    """Intake's view of the case (status, route, deadline, whole timeline, deferred materials),
    masked, with approval's view of it under `approval` (the materials that came from
    e-licences, what a held approval waits for), or why not, and under `cross_region` this
    region's part in a case across regions and the partner's city (null for other cases).
    Intake's 404 and 503 come through as they are; any other refusal (the console's own token
    refused, say) is the console's problem with intake: 502."""
    answer = await _from_intake(console, "/v1/cases/{case_id}", case_id)
    view = answer.json()
    if answer.status_code == 200:
        # Across regions (§9): from intake's view, or from the case's events streamed here.
        known = facts_of_case_view(view).union(console.facts.get(case_id) or Facts())
        view["cross_region"] = cross_region(known, console.partner_names())
        view["approval"] = await _available(
            "approval's view of the case", lambda: _approval_view(console, case_id)
        )
    return JSONResponse(
        view,
        status_code=answer.status_code,
        media_type=answer.headers.get("content-type", "application/json"),
    )


@router.get("/bundles", responses=errors(422))
async def bundles(
    console: ConsoleDep, limit: Annotated[int, Query(ge=1, le=2000)] = 200
) -> dict[str, Any]:
    """The bundle board (一件事): one row per bundle, newest first, with its members as the
    console last saw them (services.console.bundles)."""

    async def compute() -> dict[str, Any]:
        return {"rows": console.bundles.rows(limit), "known": len(console.bundles)}

    return await _available("the bundle board", compute)


@router.get("/bundles/{bundle_id}", responses=errors(404, 422, 502, 503))
async def bundle_view(bundle_id: CaseId, console: ConsoleDep) -> JSONResponse:
    """Intake's view of the bundle, masked: its members with their routes and statuses, the
    deadline and one timeline. Errors as for a case."""
    answer = await _from_intake(console, "/v1/bundles/{bundle_id}", bundle_id)
    return JSONResponse(
        answer.json(),
        status_code=answer.status_code,
        media_type=answer.headers.get("content-type", "application/json"),
    )


async def _from_intake(console: Console, path: str, ident: str) -> httpx.Response:
    """Intake's answer (200 or 404) to a GET of `path` with `ident` in its one {field}; 503
    passes through with its Retry-After, anything else is the console's problem: 502."""
    url = console.settings.intake_url + re.sub(r"\{\w+\}", lambda _: quote(ident), path)
    try:
        answer = await console.upstream(url)
    except httpx.HTTPError as exc:
        raise Problem(502, "intake_unavailable", "Intake does not answer", _reason(exc)) from None
    if answer.status_code == 503:
        raise Problem(
            503,
            "intake_unavailable",
            "Intake is not available",
            "Intake answered 503; retry after the given seconds.",
            retry_after=_retry_after(answer),
        )
    if answer.status_code not in (200, 404):
        raise Problem(
            502,
            "intake_refused",
            "Intake refused the console's request",
            f"intake answered {answer.status_code} to GET {path}",
        )
    return answer


async def _approval_view(console: Console, case_id: str) -> dict[str, Any]:
    answer = await console.upstream(f"{console.settings.approval_url}/v1/cases/{quote(case_id)}")
    if answer.status_code == 404:
        raise LookupError("not at approval (yet)")
    answer.raise_for_status()
    view: dict[str, Any] = answer.json()
    return view


@router.get("/triage")
async def triage(console: ConsoleDep) -> dict[str, Any]:
    """Cases routing could not route (routing's triage queue), newest first."""
    settings = console.settings

    async def compute() -> dict[str, Any]:
        answer = await console.upstream(f"{settings.routing_url}/v1/triage", params={"limit": 200})
        answer.raise_for_status()
        return {"rows": answer.json()}

    return await _available("routing's triage queue", compute)


@router.get("/sla", responses=errors(422))
async def sla(
    console: ConsoleDep,
    within_days: Annotated[int, Query(ge=0, le=365)] = SLA_WITHIN_DAYS,
) -> dict[str, Any]:
    """Approval's SLA board: per department, cases open, warned, overdue, without a
    deadline, and the next deadline; and the cases at risk (`cases`): deadlines and deferred
    materials due within `within_days` days (three by default), overdue, or unknown."""
    settings = console.settings

    async def compute() -> dict[str, Any]:
        answer = await console.upstream(f"{settings.approval_url}/v1/sla/board")
        if answer.status_code == 404:
            raise LookupError("approval has no SLA board (GET /v1/sla/board answered 404)")
        answer.raise_for_status()
        at_risk = await console.upstream(
            f"{settings.approval_url}/v1/sla/cases",
            params={"within_days": within_days, "limit": 200},
        )
        at_risk.raise_for_status()
        return {"rows": answer.json(), "cases": at_risk.json(), "within_days": within_days}

    return await _available("approval's SLA board", compute)


@router.get("/dlq")
async def dlq(console: ConsoleDep) -> dict[str, Any]:
    """How many records the dead-letter topic holds, and the latest with their reasons."""
    settings = console.settings
    return await _available(
        "the dead-letter topic", lambda: console.kafka.dead_letters(settings.dlq_recent)
    )


@router.get("/lag")
async def lag(console: ConsoleDep) -> dict[str, Any]:
    """Every consumer group's lag per topic and partition (end offset minus committed)."""

    async def compute() -> dict[str, Any]:
        rows = await console.kafka.lag()
        return {"rows": rows, "total": sum(r["lag"] or 0 for r in rows)}

    return await _available("consumer lag", compute)


@router.get("/links")
async def links(console: ConsoleDep) -> dict[str, Any]:
    """The links to partner regions (MirrorMaker 2, DESIGN.md §9), one row per source alias
    with mirrored topics here: the partner's city (from its mirrored catalog), the age in
    seconds of the newest heartbeat MirrorMaker brought over (`status` `up` within
    `stale_after_s`, else `stale`; `no_heartbeat` if none ever came) and of the newest record
    on `<alias>.xregion.out.v1` (services.console.links)."""
    stale_after_s = console.settings.link_stale_after_s

    async def compute() -> dict[str, Any]:
        seen = await console.kafka.links()
        now_ms = int(time.time() * 1000)
        rows = [
            link_row(
                link,
                now_ms=now_ms,
                partner=console.partner_city(link.alias),
                stale_after_s=stale_after_s,
            )
            for link in seen
        ]
        return {"rows": rows, "stale_after_s": stale_after_s}

    return await _available("the links to partner regions", compute)


@router.get("/meta")
async def meta(console: ConsoleDep) -> dict[str, Any]:
    """What the page needs to know about this console: environment, event types."""
    settings = console.settings
    return {
        "environment": settings.environment,
        # and what partners send here (their xregion.out.v1's types)
        "event_types": sorted(
            t for t, spec in EVENT_TYPES.items() if spec.topic in (*STREAM_TOPICS, XREGION_TOPIC)
        ),
        "topics": list(STREAM_TOPICS),
    }


@router.get("/catalog")
async def catalog(console: ConsoleDep) -> dict[str, Any]:
    """Codes and names of the catalog in force, for the filters and tables."""

    async def compute() -> dict[str, Any]:
        index = console.catalogs.latest
        if index is None:
            raise LookupError("no catalog version read from catalog.v1 yet")
        c = index.catalog
        return {
            "version": console.catalogs.latest_version,
            "city": {"code": c.city.code, "name": c.city.name},
            "districts": [{"code": d.code, "name": d.name} for d in c.districts],
            "offices": [
                {"code": o.code, "kind": o.kind.value, "division": o.division} for o in c.offices
            ],
            "departments": [
                {"code": d.code, "name": d.name, "level": d.level.value} for d in c.departments
            ],
        }

    return await _available("the catalog", compute)


async def _events(
    console: Console, live: LiveStream, request: Request, start: datetime | None
) -> AsyncIterator[str]:
    settings = console.settings
    console.streams += 1
    try:
        try:
            consumer, partitions = await console.kafka.open_stream(start)
        except Exception as exc:
            log.warning("live stream cannot start", error=repr(exc))
            yield "retry: 3000\n\n" + sse(
                {"detail": f"cannot read the case topics: {_reason(exc)}"}, event="problem"
            )
            return
        try:
            yield "retry: 3000\n\n" + sse(
                {
                    "partitions": partitions,
                    "from": start.isoformat() if start else None,
                    "filters": live.filters.describe(),
                    "catalog_version": console.catalogs.latest_version,
                    "now": datetime.now(UTC).isoformat(),
                },
                event="ready",
            )
            quiet_since = time.monotonic()
            fetch = ReadableFetch(consumer)  # steps over (and logs) records nobody can parse
            while not console.closing.is_set() and not await request.is_disconnected():
                batch = await fetch.getmany(timeout_ms=500, max_records=500)
                # Per partition in order; across partitions by time (one case's events can
                # sit on several topics).
                records = sorted(
                    (r for found in batch.values() for r in found), key=lambda r: r.timestamp
                )
                for record in records:
                    line = await live.line(record)
                    if line is not None:
                        yield sse(line, event_id=line["id"])
                        quiet_since = time.monotonic()
                if time.monotonic() - quiet_since > settings.stream_keepalive_s:
                    yield ": keepalive\n\n"
                    quiet_since = time.monotonic()
        finally:
            await consumer.stop()
    finally:
        console.streams -= 1


async def _available(what: str, compute: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """`{"available": true, ...}`, or `{"available": false, "reason": ...}` when it fails."""
    try:
        return {"available": True, **await compute()}
    except Exception as exc:
        log.warning("console view unavailable", view=what, error=repr(exc))
        return {"available": False, "reason": f"{what}: {_reason(exc)}"}


def _retry_after(answer: httpx.Response) -> int:
    try:
        return max(1, int(answer.headers.get("retry-after", "1")))
    except ValueError:  # an HTTP date: not what tongban sends
        return 1


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or exc.__class__.__name__
