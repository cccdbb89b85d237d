"""CPU seconds and peak RSS of the processes under test (psutil), sampled while the bench runs.

A *group* is one named process and, optionally, its descendants (PostgreSQL's backends are
children of the postmaster). CPU is counted per pid from the first time the sampler sees it, so
a group's figure is the CPU its processes spent inside the measured window. RSS is the peak of
the sampled resident set of the group's main process (for a group with children, the sum, which
over-counts shared memory: that is why only services report it as a target figure).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil

from services.common.db import asyncpg_dsn


@dataclass
class _Group:
    name: str
    kind: str  # service | infra | bench
    pid: int
    with_children: bool
    cpu_first: dict[int, float] = field(default_factory=dict)
    cpu_last: dict[int, float] = field(default_factory=dict)
    peak_rss: int = 0
    rss: int = 0  # at the last sample
    alive: bool = True


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


class ProcessSampler:
    """Samples registered process groups every `interval` seconds until stopped."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._groups: list[_Group] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, name: str, pid: int, *, kind: str, with_children: bool = False) -> None:
        if psutil.pid_exists(pid):
            self._groups.append(_Group(name, kind, pid, with_children))

    def add_started(self, name: str, pid: int, *, kind: str) -> None:
        """Sample `pid`, a process the bench started for the window, as group `name`, its CPU
        counted from its start. A name already registered follows the new pid and keeps what
        its earlier pids spent (the load generator is a new process every step)."""
        group = next((g for g in self._groups if g.name == name), None)
        if group is None:
            group = _Group(name, kind, pid, with_children=False)
            self._groups.append(group)
        group.pid, group.alive = pid, True
        group.cpu_first[pid] = 0.0
        group.cpu_last.setdefault(pid, 0.0)

    def ended(self, name: str, pid: int, cpu_s: float) -> None:
        """The CPU a process of group `name` spent in all, as it reported itself once done (its
        own rusage): sampling once a second misses what it spent after the last sample."""
        for group in self._groups:
            if group.name == name:
                group.cpu_first.setdefault(pid, 0.0)
                group.cpu_last[pid] = cpu_s
                group.alive = False

    def sample(self) -> None:
        for group in self._groups:
            if not group.alive:
                continue
            try:
                main = psutil.Process(group.pid)
                procs = [main, *(main.children(recursive=True) if group.with_children else [])]
                rss = 0
                for proc in procs:
                    try:
                        with proc.oneshot():
                            cpu = _cpu(proc)
                            rss += proc.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    group.cpu_first.setdefault(proc.pid, cpu)
                    group.cpu_last[proc.pid] = cpu
                group.rss = rss
                group.peak_rss = max(group.peak_rss, rss)
            except psutil.NoSuchProcess:
                group.alive = False

    def rss_mb(self, kinds: Iterable[str] = ("service", "infra")) -> dict[str, float]:
        """Resident set (MB) of each live group of these kinds at the last sample (for a series
        over time: sample first)."""
        wanted = set(kinds)
        return {
            g.name: round(g.rss / 2**20, 1) for g in self._groups if g.alive and g.kind in wanted
        }

    def snapshot(self) -> dict[str, float]:
        """CPU seconds per group so far, and `machine`: busy CPU seconds of the whole machine
        (for per-step deltas; machine minus the groups is what other processes took)."""
        self.sample()
        return {**{g.name: _spent(g) for g in self._groups}, MACHINE: machine_busy_s()}

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> list[dict[str, object]]:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.sample()
        return self.figures()

    def figures(self) -> list[dict[str, object]]:
        return [
            {
                "name": g.name,
                "kind": g.kind,
                "pid": g.pid,
                "cpu_s": round(_spent(g), 2),
                "peak_rss_mb": round(g.peak_rss / 2**20, 1),
            }
            for g in self._groups
        ]


MACHINE = "machine"


def machine_busy_s() -> float:
    """CPU seconds every core of the machine spent busy since boot (all processes)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def cpu_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per-group CPU seconds between two snapshots, plus `others` (the rest of the machine)."""
    delta = {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()}
    ours = sum(v for k, v in delta.items() if k != MACHINE)
    if MACHINE in delta:
        delta["others"] = round(max(0.0, delta[MACHINE] - ours), 2)
    return delta


def _spent(group: _Group) -> float:
    return sum(group.cpu_last[pid] - group.cpu_first[pid] for pid in group.cpu_last)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def service_pids(run_dir: Path) -> dict[str, int]:
    """`intake-1` -> pid, from deploy/local/services.sh's pid files."""
    found = {}
    for path in sorted((run_dir / "services").glob("*.pid")):
        pid = _read_pid(path)
        if pid is not None and psutil.pid_exists(pid):
            found[path.stem] = pid
    return found


def mirror_pid(run_dir: Path) -> int | None:
    """MirrorMaker 2's pid (deploy/local/mirror.sh, run from region 1's run folder), if it runs."""
    pid = _read_pid(run_dir / "mirror" / "mirror.pid")
    return pid if pid is not None and psutil.pid_exists(pid) else None


def infra_pids(run_dir: Path) -> dict[str, int]:
    """The local PostgreSQL postmaster and Kafka nodes started by deploy/local/stack.sh."""
    found = {}
    postmaster = _read_pid(run_dir / "postgres" / "data" / "postmaster.pid")
    if postmaster is not None:
        found["postgresql"] = postmaster
    for path in sorted(run_dir.glob("kafka-*/kafka.pid")):
        pid = _read_pid(path)
        if pid is not None:
            found[path.parent.name] = pid
    return {name: pid for name, pid in found.items() if psutil.pid_exists(pid)}


BENCH_CLIENT = "bench-client"  # the bench's own Python process (watcher, sampler)
LOAD_GENERATOR = "load-generator"  # the compiled generator of services/bench/loadgen.py


def add_infra(sampler: ProcessSampler, run_dir: Path, *, prefix: str = "") -> None:
    """Register the PostgreSQL (with its backends) and Kafka of the stack in `run_dir`, their
    names prefixed (a second region's: `prefix` names it)."""
    for name, pid in infra_pids(run_dir).items():
        sampler.add(f"{prefix}{name}", pid, kind="infra", with_children=name == "postgresql")


def add_services(sampler: ProcessSampler, run_dir: Path, *, prefix: str = "") -> list[str]:
    """Register the service processes services.sh started from `run_dir` (uvicorn without
    workers: one process each), their names prefixed; the names registered."""
    pids = service_pids(run_dir)
    for name, pid in pids.items():
        sampler.add(f"{prefix}{name}", pid, kind="service")
    return [f"{prefix}{name}" for name in sorted(pids)]


def add_stack(
    sampler: ProcessSampler, run_dir: Path, extra: Iterable[tuple[str, int]] = ()
) -> None:
    """Register PostgreSQL (with its backends), Kafka, the bench itself and `extra` pids."""
    add_infra(sampler, run_dir)
    sampler.add(BENCH_CLIENT, os.getpid(), kind="bench")
    for name, pid in extra:
        sampler.add(name, pid, kind="bench")


PG_COUNTERS = ("xact_commit", "tup_inserted", "tup_updated", "tup_deleted", "tup_fetched")


async def pg_counters(database_url: str) -> dict[str, int]:
    """Cumulative counters of the database server.

    Exact: `write_xacts` (transaction ids handed out: every transaction that wrote, the probe's
    own included) and `wal_bytes` (WAL written). From pg_stat_database (backends flush those
    about once a second, idle ones later, so deltas over a step are approximate): commits
    (`xact_commit`, read-only transactions too) and rows.
    """
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        row = await conn.fetchrow(
            "SELECT pg_current_xact_id()::text::bigint AS write_xacts, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal_bytes, "
            f"{', '.join(PG_COUNTERS)} FROM pg_stat_database WHERE datname = current_database()"
        )
    finally:
        await conn.close()
    return {k: int(v) for k, v in row.items()} if row else {}


def per_unit(before: dict[str, int], after: dict[str, int], units: int) -> dict[str, float]:
    """Counter deltas per unit of work (per closed case, per message), two decimals."""
    if units <= 0:
        return {}
    return {k: round((after[k] - before.get(k, 0)) / units, 2) for k in after}
