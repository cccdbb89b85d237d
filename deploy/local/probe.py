"""One-shot readiness probes for the local stack (used by kafka.sh and postgres.sh).

Each call makes a single bounded attempt and exits 0 (ready) or 1 (not ready, reason
on stderr); the shell scripts own the retry loop and the overall deadline.

    probe.py kafka --bootstrap 127.0.0.1:9092,127.0.0.1:9094 --expect-ids 1,2
    probe.py pg --url postgresql+asyncpg://tongban:tongban@127.0.0.1:5432/tongban
    probe.py pg-ensure-db --url postgresql+asyncpg://tongban:tongban@127.0.0.1:5432/tongban
    probe.py pg-sql --url ... --file deploy/postgres/roles.sql

Runs with the project venv (aiokafka, asyncpg). The modules are imported by name so
this file type-checks whether or not the libraries ship type information.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


async def probe_kafka(addresses: list[str], expect_ids: set[int], timeout: float) -> str:
    """Ask every broker, through a connection to that broker alone, for cluster metadata.

    Passing proves that each broker accepts connections and that the cluster has an
    active controller and lists all expected (registered, unfenced) brokers.
    """
    admin_mod = importlib.import_module("aiokafka.admin")
    summary = ""
    for address in addresses:
        admin: Any = admin_mod.AIOKafkaAdminClient(
            bootstrap_servers=address,
            client_id="tongban-stack-probe",
            request_timeout_ms=int(timeout * 1000),
        )
        try:
            await asyncio.wait_for(admin.start(), timeout)
            info: dict[str, Any] = await asyncio.wait_for(admin.describe_cluster(), timeout)
        finally:
            try:
                await asyncio.wait_for(admin.close(), timeout)
            except Exception:  # closing a half-started client is best effort
                pass
        ids = {int(b["node_id"]) for b in info.get("brokers", [])}
        controller = info.get("controller_id")
        if not expect_ids <= ids:
            raise RuntimeError(
                f"{address}: cluster lists brokers {sorted(ids)}, "
                f"waiting for {sorted(expect_ids - ids)}"
            )
        if controller is None or int(controller) < 0:
            raise RuntimeError(f"{address}: no active controller yet")
        cluster = info.get("cluster_id")
        summary = f"cluster {cluster}: brokers {sorted(ids)}, controller {controller}"
    return summary


# Query parameters SQLAlchemy's asyncpg dialect consumes itself; asyncpg would send them
# to the server as settings and fail.
_SQLALCHEMY_ONLY = {
    "prepared_statement_cache_size",
    "prepared_statement_name_func",
    "async_fallback",
}


def asyncpg_dsn(url: str, database: str | None = None) -> str:
    """SQLAlchemy-style URL (postgresql+asyncpg://...) -> plain libpq URL for asyncpg."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    path = f"/{database}" if database is not None else parts.path
    query = [
        ("sslmode" if key == "ssl" else key, value)  # SQLAlchemy spells it ?ssl=
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if key not in _SQLALCHEMY_ONLY
    ]
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), parts.fragment))


async def probe_pg(url: str, timeout: float) -> str:
    asyncpg: Any = importlib.import_module("asyncpg")
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=timeout)
    try:
        version = await asyncio.wait_for(conn.fetchval("show server_version"), timeout)
        db = await conn.fetchval("select current_database()")
    finally:
        await conn.close(timeout=timeout)
    return f"PostgreSQL {version}, database {db}"


async def pg_ensure_db(url: str, timeout: float) -> str:
    """Create the URL's database if missing (connects to the 'postgres' maintenance DB)."""
    asyncpg: Any = importlib.import_module("asyncpg")
    name = urlsplit(url).path.lstrip("/")
    if not name:
        raise ValueError(f"URL has no database name: {url!r}")
    conn = await asyncpg.connect(asyncpg_dsn(url, "postgres"), timeout=timeout)
    try:
        exists = await conn.fetchval("select 1 from pg_database where datname = $1", name)
        if exists:
            return f"database {name} exists"
        quoted = '"' + name.replace('"', '""') + '"'
        await asyncio.wait_for(conn.execute(f"create database {quoted}"), timeout)
    finally:
        await conn.close(timeout=timeout)
    return f"created database {name}"


async def pg_sql(url: str, file: str, timeout: float) -> str:
    """Run a file of SQL statements (no parameters) in one transaction."""
    asyncpg: Any = importlib.import_module("asyncpg")
    with open(file, encoding="utf-8") as f:
        script = f.read()
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=timeout)
    try:
        async with conn.transaction():
            await asyncio.wait_for(conn.execute(script), timeout)
    finally:
        await conn.close(timeout=timeout)
    return f"ran {file}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kafka")
    k.add_argument("--bootstrap", required=True, help="comma list host:port, each is probed")
    k.add_argument("--expect-ids", required=True, help="comma list of node ids that must be listed")
    for name in ("pg", "pg-ensure-db", "pg-sql"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True)
        if name == "pg-sql":
            p.add_argument("--file", required=True)
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    args = parser.parse_args()
    # aiokafka logs every refused connection; the one-line reason below is enough.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    try:
        if args.cmd == "kafka":
            addresses = [a.strip() for a in args.bootstrap.split(",") if a.strip()]
            ids = {int(i) for i in args.expect_ids.split(",") if i.strip()}
            result = asyncio.run(probe_kafka(addresses, ids, args.timeout))
        elif args.cmd == "pg":
            result = asyncio.run(probe_pg(args.url, args.timeout))
        elif args.cmd == "pg-sql":
            result = asyncio.run(pg_sql(args.url, args.file, args.timeout))
        else:
            result = asyncio.run(pg_ensure_db(args.url, args.timeout))
    except Exception as exc:  # any failure means "not ready"; say why
        print(f"{type(exc).__name__}: {exc}".strip(), file=sys.stderr)
        return 1
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
