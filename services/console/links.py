"""The links to partner regions (DESIGN.md §9) as the console shows them: per MirrorMaker 2
source alias, the partner's city and how old the newest heartbeat and the newest record sent
from there are. Pure: the Kafka reads are services.console.kafka_views'.

What MirrorMaker 2 gives to measure a link by, read in this region's own cluster only (the
console never reaches a partner's cluster):
- `<alias>.heartbeats`: each MirrorMaker flow writes a heartbeat a second
  (`emit.heartbeats.interval.seconds`) into its target cluster's `heartbeats` topic, and every
  flow mirrors `heartbeats` topics whatever its topic list says. So the partner's `heartbeats`
  arrives here as `<alias>.heartbeats`, each record keeping its timestamp from the partner's
  cluster. The age of the newest is how far behind the link from that partner runs (plus up to
  a second); a stopped MirrorMaker, a cut link or a partner down shows as an age that grows.
- `<alias>.xregion.out.v1`: what the partner sent here (forwarded cases, their events), each
  record with its partner timestamp: the age of the newest says when the partner last sent.
- `<alias>.catalog.v1`: the partner's catalog, whose city names the partner (aliases are
  deployment names only).
The ages are as exact as the two regions' clocks agree (a partner clock ahead shows as 0).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from contracts.events import CATALOG_TOPIC, XREGION_TOPIC, CatalogPublished

HEARTBEATS_TOPIC = "heartbeats"  # MirrorMaker 2's (DefaultReplicationPolicy.heartbeatsTopic)
LINK_TOPICS = (HEARTBEATS_TOPIC, XREGION_TOPIC, CATALOG_TOPIC)
# `<source alias>.<topic>`: one alias only (`a.b.heartbeats` came over two links: not a partner
# of this region's own).
_MIRRORED = re.compile(
    r"^(?P<alias>[A-Za-z0-9_-]+)\.(?P<topic>" + "|".join(map(re.escape, LINK_TOPICS)) + r")$"
)


@dataclass(frozen=True)
class PartnerCity:
    code: str
    name: str | None
    catalog_version: int


@dataclass(frozen=True)
class NewestRecord:
    """A mirrored topic as found: its records (end minus start offsets) and the timestamp of
    its newest record in ms (None: empty)."""

    records: int
    newest_ms: int | None


@dataclass(frozen=True)
class LinkSeen:
    """What this region's cluster shows of the link from one partner alias (None: no topic)."""

    alias: str
    heartbeats: NewestRecord | None
    xregion: NewestRecord | None


def partner_aliases(topics: Iterable[str]) -> dict[str, frozenset[str]]:
    """Source alias -> which of its link topics exist here (heartbeats, xregion.out.v1,
    catalog.v1)."""
    found: dict[str, set[str]] = {}
    for topic in topics:
        match = _MIRRORED.match(topic)
        if match:
            found.setdefault(match["alias"], set()).add(match["topic"])
    return {alias: frozenset(kinds) for alias, kinds in sorted(found.items())}


def is_partner_xregion(topic: str) -> bool:
    """A partner's `xregion.out.v1` as MirrorMaker brings it here: `<alias>.xregion.out.v1`."""
    match = _MIRRORED.match(topic)
    return match is not None and match["topic"] == XREGION_TOPIC


def mirrored_topic(alias: str, topic: str) -> str:
    return f"{alias}.{topic}"


def partner_of(published: CatalogPublished | None) -> PartnerCity | None:
    """The partner's city as its newest catalog on `<alias>.catalog.v1` names it."""
    if published is None:
        return None
    city = published.catalog.get("city")
    if not isinstance(city, Mapping) or not isinstance(city.get("code"), str):
        return None
    name = city.get("name")
    return PartnerCity(city["code"], name if isinstance(name, str) else None, published.version)


def age_s(now_ms: int, then_ms: int | None) -> float | None:
    return None if then_ms is None else round(max(0, now_ms - then_ms) / 1000, 1)


def link_row(
    seen: LinkSeen, *, now_ms: int, partner: PartnerCity | None, stale_after_s: float
) -> dict[str, Any]:
    """One row of `GET /api/links`. `status`: `up` (a heartbeat within `stale_after_s`),
    `stale` (the newest is older: the link or the partner is down, or MirrorMaker stopped), or
    `no_heartbeat` (none has ever arrived: the partner's MirrorMaker emits none, or the link was
    never up)."""
    heartbeat_ms = seen.heartbeats.newest_ms if seen.heartbeats else None
    heartbeat_age = age_s(now_ms, heartbeat_ms)
    if heartbeat_age is None:
        status = "no_heartbeat"
    else:
        status = "up" if heartbeat_age <= stale_after_s else "stale"
    xregion_ms = seen.xregion.newest_ms if seen.xregion else None
    city = None
    if partner is not None:
        city = {"code": partner.code, "name": partner.name, "version": partner.catalog_version}
    return {
        "alias": seen.alias,
        "partner": city,
        "status": status,
        "heartbeat_topic": mirrored_topic(seen.alias, HEARTBEATS_TOPIC),
        "heartbeat_age_s": heartbeat_age,
        "xregion_topic": mirrored_topic(seen.alias, XREGION_TOPIC),
        "xregion_records": seen.xregion.records if seen.xregion else None,
        "xregion_newest_age_s": age_s(now_ms, xregion_ms),
    }
