"""The compiled load generator, driven from Python: open-loop POSTs whose cost stays out of the
figures of the system under test.

Guarantees (kept by the Go program in `services/bench/loadgen/`, see its doc comment):
request i of a step is due at t0 + i/rate and leaves at that time whatever the answers to earlier
ones (open loop); its latency runs from its due time, so queueing anywhere, the generator's own
included, shows in the latency (no coordinated omission); each request carries an
Idempotency-Key of its own; `requests` are cycled, so the load spreads over their tokens; a
request due while `max_inflight` are unanswered is not sent and counted `late`.

Why a small Go program of our own and not oha or wrk: wrk is closed loop (coordinated
omission), wrk2 is not packaged here, and oha cannot give each request its own header values. Go
is installed on machines of this kind (often as /usr/local/go/bin/go, off the PATH), and a module
of the standard library alone builds offline in seconds. The Python load generator it replaces
took about 3.7 ms of CPU per case, a sixth of the whole stack's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = Path(__file__).resolve().parent / "loadgen"
GO_FALLBACK = Path("/usr/local/go/bin/go")
BUILD_TIMEOUT_S = 300.0
NS = 1_000_000_000


class LoadgenUnavailable(RuntimeError):
    """The generator cannot be built: the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class Request:
    """One submission to offer; a step's `requests` are cycled."""

    token: str  # sent as `Authorization: Bearer <token>`
    body: bytes  # the JSON body, sent as is (Content-Type: application/json)


@dataclass(frozen=True)
class LoadStep:
    urls: list[str]  # POST targets, round robin (e.g. http://127.0.0.1:8001/v1/cases)
    rate: float  # requests per second, open loop (sent on schedule, not on answers)
    seconds: float
    requests: list[Request]
    connections: int = 64  # keep-alive connections per URL
    max_inflight: int = 4096  # a request that finds this many unanswered is counted `late`
    id_field: str = "case_id"  # read from a 2xx JSON answer


@dataclass(frozen=True)
class Answer:
    key: str  # the Idempotency-Key it was sent with (unique per request)
    status: int  # HTTP status; 0 = no answer (connection error / timeout)
    sent_at: float  # epoch seconds (time.time() clock) of its scheduled send
    latency_s: float  # from scheduled send to the full answer
    case_id: str | None  # `id_field` of a 2xx answer


@dataclass(frozen=True)
class LoadResult:
    answers: list[Answer]
    late: int  # requests not sent on time because max_inflight were unanswered
    cpu_s: float  # the generator's own CPU (user+sys, from its rusage)
    wall_s: float


def cache_dir() -> Path:
    return Path(os.environ.get("TONGBAN_CACHE_DIR") or ROOT / ".cache")


def go_command() -> Path | None:
    """`go` from the PATH, else where the official tarball puts it."""
    found = shutil.which("go")
    if found:
        return Path(found)
    return GO_FALLBACK if os.access(GO_FALLBACK, os.X_OK) else None


def source_digest(source_dir: Path = SOURCE_DIR) -> str:
    """A hash of the module's build inputs (go.mod and the non-test Go files)."""
    digest = hashlib.sha256()
    for path in sorted(source_dir.iterdir()):
        if path.name == "go.mod" or (path.suffix == ".go" and not path.name.endswith("_test.go")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build() -> Path:
    """The generator binary: `go build` into $TONGBAN_CACHE_DIR (default <repo>/.cache)/bin,
    named by a hash of the Go sources, so it is rebuilt only when they change."""
    binary = cache_dir() / "bin" / f"loadgen-{source_digest()}"
    if os.access(binary, os.X_OK):
        return binary
    go = go_command()
    if go is None:
        raise LoadgenUnavailable(
            "the bench's load generator needs Go (1.21 or later) to build "
            f"{SOURCE_DIR.relative_to(ROOT)}: `go` is neither on the PATH nor at {GO_FALLBACK}; "
            "install it (https://go.dev/dl/ or `apt-get install golang-go`) and run again"
        )
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.partial")
    command = [str(go), "build", "-trimpath", "-o", str(partial), "."]
    try:
        done = subprocess.run(
            command,
            cwd=SOURCE_DIR,
            env=_go_env(),
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LoadgenUnavailable(f"`{' '.join(command)}` in {SOURCE_DIR} failed: {exc}") from exc
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise LoadgenUnavailable(
            f"building the load generator failed; to see why, run `cd {SOURCE_DIR} && "
            f"{go} build -o /tmp/loadgen .`:\n{done.stderr.strip()[-2000:]}"
        )
    os.replace(partial, binary)  # atomic: a concurrent build finds a whole binary or none
    return binary


def _go_env() -> dict[str, str]:
    """Offline and local: no module proxy, no toolchain download; a build cache even for a user
    without a home folder."""
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off"}
    if not env.get("HOME") and not env.get("GOCACHE") and not env.get("XDG_CACHE_HOME"):
        env["GOCACHE"] = str(cache_dir() / "go-build")
    return env


def request_lines(requests: Sequence[Request]) -> bytes:
    """The generator's input file: `<token>\\t<body>` a line."""
    if not requests:
        raise ValueError("a load step needs at least one request")
    lines = []
    for request in requests:
        if not request.token or any(c in request.token for c in "\t\r\n "):
            raise ValueError("a token must be non-empty, without whitespace")
        if b"\n" in request.body or b"\r" in request.body:
            raise ValueError("a request body must be one line (compact JSON)")
        lines.append(request.token.encode() + b"\t" + request.body + b"\n")
    return b"".join(lines)


def command(
    binary: Path, step: LoadStep, *, requests_file: Path, answers_file: Path, run_id: str
) -> list[str]:
    """The generator's command line for one step."""
    if not step.urls:
        raise ValueError("a load step needs at least one URL")
    if step.rate <= 0 or step.seconds <= 0:
        raise ValueError("a load step needs a positive rate and length")
    args = [
        str(binary),
        "-requests",
        str(requests_file),
        "-rate",
        repr(float(step.rate)),
        "-duration",
        f"{int(round(step.seconds * NS))}ns",
        "-connections",
        str(step.connections),
        "-max-inflight",
        str(step.max_inflight),
        "-id-field",
        step.id_field,
        "-out",
        str(answers_file),
        "-run-id",
        run_id,
    ]
    for url in step.urls:
        args += ["-url", url]
    return args


def parse_answers(text: str) -> list[Answer]:
    """The generator's TSV: key, status, scheduled-send epoch ns, latency ns, id (or empty)."""
    answers = []
    for line in text.splitlines():
        if not line:
            continue
        key, status, due_ns, latency_ns, case_id = line.split("\t")
        answers.append(
            Answer(
                key=key,
                status=int(status),
                sent_at=int(due_ns) / NS,
                latency_s=int(latency_ns) / NS,
                case_id=case_id or None,
            )
        )
    return answers


def new_run_id() -> str:
    """Prefix of a step's Idempotency-Keys: unique across runs against the same database."""
    return f"lg-{uuid.uuid4().hex[:16]}"


def _work_dir() -> Path | None:
    """Temp files go under the run folder when there is one (`$TONGBAN_RUN_DIR/bench`)."""
    run_dir = os.environ.get("TONGBAN_RUN_DIR")
    if run_dir and Path(run_dir).is_dir():
        folder = Path(run_dir) / "bench"
        folder.mkdir(exist_ok=True)
        return folder
    return None


async def offer(step: LoadStep, *, on_start: Callable[[int], None] | None = None) -> LoadResult:
    """Run the generator for one step; `on_start(pid)` lets a caller sample its CPU/RSS."""
    binary = await asyncio.to_thread(build)
    with tempfile.TemporaryDirectory(prefix="loadgen-", dir=_work_dir()) as tmp:
        requests_file, answers_file = Path(tmp) / "requests.tsv", Path(tmp) / "answers.tsv"
        requests_file.write_bytes(request_lines(step.requests))
        args = command(
            binary,
            step,
            requests_file=requests_file,
            answers_file=answers_file,
            run_id=new_run_id(),
        )
        process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        if on_start is not None:
            on_start(process.pid)
        try:
            out, err = await process.communicate()
        finally:
            if process.returncode is None:  # cancelled: leave no generator behind
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if process.returncode != 0:
            raise RuntimeError(
                f"the load generator exited {process.returncode}: "
                f"{err.decode(errors='replace').strip()[-2000:]}"
            )
        summary: dict[str, Any] = json.loads(out)
        answers = parse_answers(answers_file.read_text(encoding="utf-8"))
    return LoadResult(
        answers=answers,
        late=int(summary["late"]),
        cpu_s=float(summary["cpu_s"]),
        wall_s=float(summary["wall_s"]),
    )
