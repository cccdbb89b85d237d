"""What crosses the MirrorMaker 2 link between tongban regions, read from both clusters.

    mirror_report.py lag --cluster region1=127.0.0.1:9092 --cluster region2=127.0.0.1:19092 \
        --topics catalog.v1,xregion.out.v1
    mirror_report.py catalogs --cluster region1=127.0.0.1:9092 --cluster region2=... --wait 60

`lag`: per direction and topic, the records at the end of the source topic that are not yet at
the end of its mirror `<source alias>.<topic>` (end offsets summed over partitions; MirrorMaker
writes a mirror in the source's order, so once it has caught up both ends are equal. A source
compacted before it was mirrored shows the records compaction removed as lag).
`catalogs`: each region's own catalog in force (the last record of its `catalog.v1`) and the
partner's it sees over the link (the last record of `<partner alias>.catalog.v1`), with that
topic's lag, as a table; `--wait S` polls until every region sees its partner's latest
version and exits 1 if one does not within S seconds.

Used by deploy/local/mirror.sh (status) and deploy/local/federation.sh; runs with the project
venv (aiokafka, rich). Reads only; commits no offsets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table

CATALOG_TOPIC = "catalog.v1"


@dataclass(frozen=True)
class Cluster:
    alias: str
    bootstrap: str


@dataclass(frozen=True)
class SeenCatalog:
    """The last catalog record of a topic: its city code and version (None: none yet)."""

    city: str | None
    version: int | None


class Reader:
    """One read-only consumer per cluster, without a group (nothing is committed), and an
    admin client for the partitions of a topic (a consumer without a subscription does not
    know them)."""

    def __init__(self, cluster: Cluster, timeout_s: float) -> None:
        self.cluster = cluster
        options: dict[str, Any] = {
            "bootstrap_servers": cluster.bootstrap,
            "client_id": "tongban-mirror-report",
            "request_timeout_ms": int(timeout_s * 1000),
        }
        self.consumer = AIOKafkaConsumer(enable_auto_commit=False, **options)
        self.admin = AIOKafkaAdminClient(**options)

    async def __aenter__(self) -> Reader:
        await self.consumer.start()
        await self.admin.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.admin.close()
        await self.consumer.stop()

    async def end_offset(self, topic: str) -> int | None:
        """The sum of the topic's end offsets, or None when the topic does not exist."""
        [described] = await self.admin.describe_topics([topic])
        if described["error_code"] != 0 or not described["partitions"]:
            return None
        ends: dict[TopicPartition, int] = await self.consumer.end_offsets(
            [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        )
        return sum(ends.values())

    async def last_catalog(self, topic: str) -> SeenCatalog:
        """The city and version of the last record of a one-partition catalog topic."""
        end = await self.end_offset(topic)
        if not end:
            return SeenCatalog(None, None)
        tp = TopicPartition(topic, 0)
        self.consumer.assign([tp])
        self.consumer.seek(tp, end - 1)
        batch = await self.consumer.getmany(tp, timeout_ms=5000)
        records = batch.get(tp, [])
        if not records or records[-1].value is None:
            return SeenCatalog(None, None)
        try:
            body: dict[str, Any] = json.loads(records[-1].value)
            return SeenCatalog(str(body["catalog"]["city"]["code"]), int(body["version"]))
        except (ValueError, KeyError, TypeError):  # not a catalog version: say none is seen
            return SeenCatalog(None, None)


def lag(source_end: int | None, mirror_end: int | None) -> int | None:
    """Records at the source's end not yet at its mirror's (None: nothing to compare yet)."""
    if source_end is None:
        return None
    return source_end - (mirror_end or 0)


def shown(value: int | None) -> str:
    return "-" if value is None else str(value)


async def lag_rows(clusters: list[Cluster], topics: list[str], timeout_s: float) -> list[list[str]]:
    rows = []
    async with Reader(clusters[0], timeout_s) as one, Reader(clusters[1], timeout_s) as two:
        for source, target in ((one, two), (two, one)):
            for topic in topics:
                mirror = f"{source.cluster.alias}.{topic}"
                source_end = await source.end_offset(topic)
                mirror_end = await target.end_offset(mirror)
                rows.append(
                    [
                        f"{source.cluster.alias} -> {target.cluster.alias}",
                        topic,
                        mirror if mirror_end is not None else f"{mirror} (not yet)",
                        shown(source_end),
                        shown(mirror_end),
                        shown(lag(source_end, mirror_end)),
                    ]
                )
    return rows


@dataclass(frozen=True)
class RegionView:
    alias: str
    own: SeenCatalog
    partner_alias: str
    seen: SeenCatalog
    lag: int | None

    @property
    def up_to_date(self) -> bool:
        return self.seen.version is not None and self.lag == 0


async def region_views(clusters: list[Cluster], timeout_s: float) -> list[RegionView]:
    async with Reader(clusters[0], timeout_s) as one, Reader(clusters[1], timeout_s) as two:
        views = []
        for region, partner in ((one, two), (two, one)):
            mirror = f"{partner.cluster.alias}.{CATALOG_TOPIC}"
            views.append(
                RegionView(
                    alias=region.cluster.alias,
                    own=await region.last_catalog(CATALOG_TOPIC),
                    partner_alias=partner.cluster.alias,
                    seen=await region.last_catalog(mirror),
                    lag=lag(
                        await partner.end_offset(CATALOG_TOPIC), await region.end_offset(mirror)
                    ),
                )
            )
        return views


def catalog_label(seen: SeenCatalog) -> str:
    return "none yet" if seen.version is None else f"{seen.city} v{seen.version}"


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def parse_cluster(text: str) -> Cluster:
    alias, sep, bootstrap = text.partition("=")
    if not sep or not alias or not bootstrap:
        raise argparse.ArgumentTypeError(f"expected ALIAS=HOST:PORT, got {text!r}")
    return Cluster(alias, bootstrap)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("lag", "catalogs"):
        p = sub.add_parser(name)
        p.add_argument("--cluster", type=parse_cluster, action="append", required=True)
        if name == "lag":
            p.add_argument("--topics", required=True, help="comma list of mirrored topics")
        else:
            p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for both")
    args = parser.parse_args()
    if len(args.cluster) != 2:
        parser.error("give exactly two --cluster ALIAS=HOST:PORT")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    if args.cmd == "lag":
        topics = [t for t in args.topics.split(",") if t]
        rows = asyncio.run(lag_rows(args.cluster, topics, args.timeout))
        columns = ["direction", "topic", "mirror", "source end", "mirror end", "lag"]
        print_table("MirrorMaker 2 replication lag (records)", columns, rows)
        return 0

    deadline = time.monotonic() + args.wait
    while True:
        views = asyncio.run(region_views(args.cluster, args.timeout))
        if all(v.up_to_date for v in views) or time.monotonic() >= deadline:
            break
        time.sleep(1)
    rows = [
        [
            v.alias,
            catalog_label(v.own),
            f"{catalog_label(v.seen)} (from {v.partner_alias}.{CATALOG_TOPIC})",
            shown(v.lag),
        ]
        for v in views
    ]
    columns = ["region", "own city (catalog)", "partner catalog seen", "lag"]
    print_table("Two regions linked by MirrorMaker 2", columns, rows)
    return 0 if all(v.up_to_date for v in views) else 1


if __name__ == "__main__":
    sys.exit(main())
