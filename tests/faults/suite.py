"""The scenarios of the fault suite, in two sizes, and the intake overload check.

`full` is what `make faults` runs (thousands of cases per scenario); `reduced` runs inside
`make test` (a few hundred per scenario, same faults, about five minutes in all).
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from services.cli.devclient import ActingClient
from services.common.settings import CommonSettings
from tests.faults.harness import (
    TERMINAL,
    Observer,
    PlannedCase,
    ScenarioSpec,
    Stack,
    Verdict,
    broker_fault,
    counter_terminals,
    database_checks,
    keep_routable,
    now,
    plan_load,
    post_submission,
    postgres_restart,
    relay_kills,
    service_kills,
)


def scenarios(size: str) -> list[ScenarioSpec]:
    broker_at: tuple[float, ...]
    service_at: tuple[float, ...]
    relay_at: tuple[float, ...]
    # Bundles beside the cases under every fault: one application about every two seconds.
    if size == "full":
        n, rate, poison = 2400, 20.0, 200
        broker_at, service_at, relay_at = (0.2, 0.4, 0.6), (0.2, 0.4, 0.6), (0.3, 0.5, 0.7)
    else:
        n, rate, poison = 300, 20.0, 30
        broker_at, service_at, relay_at = (0.2, 0.6), (0.2,), (0.55,)
    bundles = int(n / rate / 2)
    specs = [
        ScenarioSpec("baseline + poison", n, rate, poison_per_topic=poison),
        ScenarioSpec(
            "brokers: kill -9 leader",
            n,
            rate,
            faults=[(at, broker_fault("kill")) for at in broker_at],
        ),
        ScenarioSpec(
            "brokers: clean restart",
            n,
            rate,
            faults=[(at, broker_fault("stop")) for at in broker_at],
        ),
        ScenarioSpec(
            "services: SIGKILL",
            n,
            rate,
            faults=sorted(
                [(at, service_kills()) for at in service_at]
                + [(at, relay_kills()) for at in relay_at],
                key=lambda f: f[0],
            ),
        ),
        ScenarioSpec("postgres: immediate restart", n, rate, faults=[(0.5, postgres_restart())]),
        ScenarioSpec(
            "ambiguous commits (1%)",
            n,
            rate,
            service_env={"TONGBAN_FAULT_AMBIGUOUS_COMMIT_RATE": "0.01"},
        ),
    ]
    for spec in specs:
        spec.bundles = bundles
    return specs


# --------------------------------------------------------------------------- overload


# How long a request may go unanswered before the overload test calls it a hang.
ANSWER_WAIT_S = 120.0


@dataclass
class OverloadReport:
    capacity_per_s: float
    offered_per_s: float
    answers: dict[int, int] = field(default_factory=dict)
    without_retry_after: int = 0
    timeouts: int = 0
    other_errors: list[str] = field(default_factory=list)
    accepted: int = 0
    terminal: int = 0
    lost: int = 0
    max_answer_s: float = 0.0

    @property
    def passed(self) -> bool:
        refused_ok = set(self.answers) <= {200, 201, 429, 503}
        return (
            refused_ok
            and self.without_retry_after == 0
            and self.timeouts == 0
            and not self.other_errors
            and self.lost == 0
            and self.accepted > 0
        )


async def overload(
    stack: Stack,
    catalog: dict[str, Any],
    settings: CommonSettings,
    *,
    measure_s: float = 6,
    overload_s: float = 8,
    drain_s: float = 240,
    progress: Callable[[str, str], None] = lambda _s, _m: None,
) -> OverloadReport:
    """Intake's capacity measured closed-loop, then twice that offered open-loop: every
    request is answered (201, or 429/503 with Retry-After; none left hanging) and every
    accepted case reaches a terminal status. The slowest answer is reported, not asserted: on
    a shared 2-core machine running three brokers, PostgreSQL, eight service processes and
    this load, a wall-clock bound measures the neighbours (CI once saw three answers past
    30 s). A request unanswered for `ANSWER_WAIT_S` counts as a hang."""
    rng = random.Random("overload")
    observer = Observer(settings)
    await observer.start()
    since = datetime.now(UTC)
    client = ActingClient(timeout=httpx.Timeout(ANSWER_WAIT_S, connect=ANSWER_WAIT_S))
    terminals = counter_terminals(timeout_s=ANSWER_WAIT_S, connect_s=ANSWER_WAIT_S)
    accepted: dict[str, str] = {}  # case_id -> key
    planned = await keep_routable(client, plan_load(catalog, 20000, rng, dept_share=0.0))
    cursor = iter(planned)
    try:
        # 1. capacity: 32 clients submitting back to back.
        done = 0
        stop_at = now() + measure_s

        async def closed_loop(worker: int) -> None:
            nonlocal done
            while now() < stop_at:
                case = next(cursor)
                answer = await _post(terminals[worker], case, worker % stack.replicas + 1)
                if answer is not None and answer.status_code in (200, 201):
                    accepted[answer.json()["case_id"]] = case.key
                    done += 1
                elif answer is not None and answer.status_code in (429, 503):
                    await asyncio.sleep(0.05)

        started = now()
        await asyncio.gather(*(closed_loop(w) for w in range(32)))
        capacity = done / (now() - started)
        report = OverloadReport(round(capacity, 1), round(2 * capacity, 1))
        progress("overload", f"intake capacity {capacity:.0f}/s; offering {2 * capacity:.0f}/s")

        # 2. twice the capacity, open loop: one attempt each, no retries.
        answers: dict[int, int] = defaultdict(int)

        async def once(n: int) -> None:
            case = next(cursor)
            t0 = now()
            try:
                answer = await post_submission(terminals[n], case, n % stack.replicas + 1)
            except httpx.TimeoutException:
                report.timeouts += 1
                return
            except httpx.HTTPError as exc:
                report.other_errors.append(repr(exc)[:200])
                return
            report.max_answer_s = max(report.max_answer_s, round(now() - t0, 3))
            answers[answer.status_code] += 1
            if answer.status_code in (200, 201):
                accepted[answer.json()["case_id"]] = case.key
            elif answer.status_code in (429, 503):
                if "retry-after" not in answer.headers:
                    report.without_retry_after += 1
            else:
                report.other_errors.append(f"{answer.status_code} {answer.text[:200]}")

        offered = 2 * capacity
        tasks = []
        begin = now()
        for n in range(int(offered * overload_s)):
            delay = begin + n / offered - now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(once(n)))
        await asyncio.gather(*tasks)
        report.answers = dict(answers)
        report.accepted = len(accepted)
        progress("overload", f"answers {dict(answers)}; draining {len(accepted)} accepted cases")

        deadline = now() + drain_s
        while now() < deadline and not all(c in observer.closed_at for c in accepted):
            await asyncio.sleep(0.5)
        checked = await database_checks(
            settings,
            [_Accepted(k, c) for c, k in accepted.items()],
            since,
        )
        for _ in range(30):
            if all(checked["statuses"].get(c) in TERMINAL for c in accepted):
                break
            await asyncio.sleep(1)
            checked = await database_checks(
                settings, [_Accepted(k, c) for c, k in accepted.items()], since
            )
        report.terminal = sum(
            1
            for c in accepted
            if c in observer.closed_at and checked["statuses"].get(c) in TERMINAL
        )
        report.lost = report.accepted - report.terminal
        return report
    finally:
        await client.aclose()
        await terminals.aclose()
        await observer.stop()


@dataclass
class _Accepted:
    key: str
    case_id: str | None


async def _post(client: ActingClient, case: PlannedCase, replica: int) -> httpx.Response | None:
    try:
        return await post_submission(client, case, replica)
    except httpx.HTTPError:
        return None


def verdict_rows(verdicts: list[Verdict]) -> list[list[str]]:
    rows = []
    for v in verdicts:
        rows.append(
            [
                v.scenario,
                str(v.submitted),
                str(v.terminal),
                str(v.lost),
                str(v.duplicate_effects),
                str(v.order_violations),
                str(v.max_lag),
                "-" if v.recovery_s is None else f"{v.recovery_s:g}",
                f"{v.bundles} ({v.members})",
                f"{v.members_lost}/{v.members_doubled}",
                "PASS" if v.passed else "FAIL",
            ]
        )
    return rows


HEADERS = [
    "scenario",
    "submitted",
    "terminal",
    "lost",
    "duplicate effects",
    "order violations",
    "max lag",
    "recovery s",
    "bundles (members)",
    "members lost/doubled",
    "",
]
