"""Bundles under the fault suite's faults (一件事一次办, DESIGN.md §8).

Beside its single cases, every scenario submits bundles of the catalog through `POST
/v1/bundles` (retried with the same Idempotency-Key, like any submission), one every few
seconds. Their members are ordinary cases: the simulated department decides the ones that are
not instant (and denies, in one bundle of six, a member others wait for, so its dependents end
`withdrawn` with `prerequisite_ended`); a counter collects the one pickup of the bundles taken
for `counter_pickup` once delivery holds every result, and the applicant rates each delivered
bundle once. The others go out at once (electronic, postal).

What the verdict says of them (the table's last two columns, and `passed`):
- members lost: a member (every case the 201 answers named) whose status at intake is not
  terminal (closed, withdrawn, terminated) or whose terminal event was never published;
- members doubled: a member with more than one terminal event (closed, withdrawn, terminated:
  distinct event ids) or a doubled effect (as for single cases), a bundle delivered or closed
  other than exactly once (`gov.bundle.delivered.v1` / `gov.bundle.closed.v1` on bundle.v1),
  more than one bundle for one key, or a bundle intake created that no answer named.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from services.cli.applicants import bundle_application_for, created_members, default_answers
from services.cli.devclient import ActingClient
from services.common.auth import Role
from services.common.db import asyncpg_dsn
from services.common.settings import CommonSettings

MEMBER_TERMINAL = {"closed", "withdrawn", "terminated"}
MEMBER_ENDS = ("gov.case.closed.v1", "gov.case.withdrawn.v1", "gov.case.terminated.v1")
BUNDLE_ONCE = ("gov.bundle.delivered.v1", "gov.bundle.closed.v1")


@dataclass
class PlannedBundle:
    key: str  # Idempotency-Key
    bundle: dict[str, Any]
    body: dict[str, Any]
    deny: str | None = None  # the item code of the member the department denies
    rate: bool = False
    # as for a planned case (services.cli LoadDriver): what intake answered
    submitted_at: float | None = None
    attempts: int = 0
    answers: list[int] = field(default_factory=list)
    answer: dict[str, Any] = field(default_factory=dict)
    refused: str | None = None
    picked_up: bool = False
    rated: bool = False

    @property
    def bundle_id(self) -> str | None:
        return self.answer.get("bundle_id")

    @property
    def pickup(self) -> bool:
        return bool(self.body["delivery"]["method"] == "counter_pickup")

    def members(self) -> dict[str, str]:
        """case id -> item code of every member intake created."""
        return {m["case_id"]: m["item_code"] for m in self.answer.get("members", [])}


def plan_bundles(catalog: dict[str, Any], count: int, rng: random.Random) -> list[PlannedBundle]:
    """`count` applications over the catalog's bundles in force, answers and delivery varied;
    one in six has a prerequisite (not instant) denied by its department."""
    today = datetime.now(UTC).date().isoformat()
    bundles = [
        b
        for b in catalog.get("bundles", [])
        if str(b.get("effective_from") or "0000") <= today
        and (b.get("effective_to") is None or str(b["effective_to"]) >= today)
    ]
    if not bundles or count == 0:
        return []
    instant = {i["code"] for i in catalog["items"] if i.get("instant")}
    planned = []
    for n in range(count):
        bundle = bundles[n % len(bundles)]
        answers = default_answers(bundle, value=n % 4 != 2)
        body = bundle_application_for(
            catalog,
            bundle,
            rng,
            answers=answers,
            delivery=("counter_pickup", "electronic", "postal")[n % 3],
        )
        deny = None
        if n % 6 == 5:
            created = created_members(bundle, answers)
            waited_for = [
                code for m in created for code in m.get("after") or () if code not in instant
            ]
            deny = waited_for[0] if waited_for else None
        planned.append(
            PlannedBundle(
                key=f"faults-bundle-{uuid.uuid4()}", bundle=bundle, body=body, deny=deny, rate=True
            )
        )
    return planned


class BundleCounter:
    """The counter and the applicant: the one pickup of a `counter_pickup` bundle once
    delivery holds every result, and one rating of each delivered bundle; each retried
    through dead replicas and 503s (a 409 after a retry: the first attempt was applied)."""

    def __init__(self, client: ActingClient, delivery_urls: Sequence[str]) -> None:
        self.client = client
        self.urls = list(delivery_urls)
        self.problems: list[str] = []

    async def serve(self, bundles: Sequence[PlannedBundle], delivered: set[str]) -> None:
        """One round over the bundles that still need the counter."""
        for planned in bundles:
            bundle_id = planned.bundle_id
            if bundle_id is None:
                continue
            if planned.pickup and not planned.picked_up and await self._ready(planned):
                planned.picked_up = await self._post(planned, "pickup", self._pickup_body(planned))
            if planned.rate and not planned.rated and bundle_id in delivered:
                planned.rated = await self._post(
                    planned, "rating", {"rating": "satisfied", "comment": "一次办成"}
                )

    def _pickup_body(self, planned: PlannedBundle) -> dict[str, Any]:
        return {"office_code": planned.body["office_code"]}

    def _headers(self, planned: PlannedBundle) -> dict[str, str]:
        return self.client.headers_for(Role.clerk, str(planned.body["office_code"]))

    async def _ready(self, planned: PlannedBundle) -> bool:
        for url in self.urls:
            try:
                answer = await self.client.get(
                    f"{url}/v1/bundles/{planned.bundle_id}/results",
                    headers=self._headers(planned),
                )
            except httpx.HTTPError:
                continue
            if answer.status_code == 200:
                return answer.json().get("ready_at") is not None
            if answer.status_code == 404:
                return False  # delivery has not read the bundle's submission yet
        return False

    async def _post(self, planned: PlannedBundle, action: str, body: dict[str, Any]) -> bool:
        for attempt in range(60):
            url = self.urls[attempt % len(self.urls)]
            try:
                answer = await self.client.post(
                    f"{url}/v1/bundles/{planned.bundle_id}/{action}",
                    json=body,
                    headers=self._headers(planned),
                )
            except httpx.HTTPError:
                await asyncio.sleep(0.5)
                continue
            if answer.status_code in (200, 201):
                return True
            if answer.status_code in (429, 503):
                await asyncio.sleep(float(answer.headers.get("retry-after", 1)))
                continue
            if answer.status_code == 409 and answer.json().get("code") == "bundle_not_ready":
                return False  # a member's result is still on its way: next round
            if answer.status_code == 409 and attempt > 0:
                return True  # the earlier attempt was applied, its answer lost
            self.problems.append(
                f"{action} {planned.bundle_id}: {answer.status_code} {answer.text[:200]}"
            )
            return True
        return False


def member_verdict(
    planned: Sequence[PlannedBundle],
    events: dict[str, list[Any]],
    statuses: dict[str, str],
    duplicates_of: Any,
) -> dict[str, Any]:
    """Members lost and doubled, bundles delivered or closed other than once (see the
    module's docstring). `events`: case or bundle id -> what the observer saw."""
    lost: list[str] = []
    doubled: dict[str, list[str]] = {}
    members = 0
    for bundle in planned:
        if bundle.bundle_id is None:
            continue
        for case_id in bundle.members():
            members += 1
            seen = events.get(case_id, [])
            ends = {s.event_id for s in seen if s.type in MEMBER_ENDS}
            if statuses.get(case_id) not in MEMBER_TERMINAL or not ends:
                lost.append(case_id)
            found = list(duplicates_of(seen))
            if len(ends) > 1:
                found.append(f"{len(ends)} terminal events")
            if found:
                doubled[case_id] = found
        own = events.get(bundle.bundle_id, [])
        for kind in BUNDLE_ONCE:
            times = len({s.event_id for s in own if s.type == kind})
            if times != 1:
                doubled[bundle.bundle_id] = [*doubled.get(bundle.bundle_id, []), f"{kind} x{times}"]
    return {"members": members, "lost": lost, "doubled": doubled}


def bundles_done(planned: Sequence[PlannedBundle], events: dict[str, list[Any]]) -> bool:
    """Every accepted bundle closed on bundle.v1 and every member ended on its topics."""
    for bundle in planned:
        if bundle.bundle_id is None:
            continue
        if not any(s.type == "gov.bundle.closed.v1" for s in events.get(bundle.bundle_id, [])):
            return False
        for case_id in bundle.members():
            if not any(s.type in MEMBER_ENDS for s in events.get(case_id, [])):
                return False
    return True


async def bundle_database_checks(
    settings: CommonSettings, planned: Sequence[PlannedBundle], since: datetime
) -> dict[str, Any]:
    """Intake's own rows: the members' statuses, one bundle per key, no bundle created that
    no answer named."""
    members = [c for b in planned for c in b.members()]
    answered = {b.bundle_id for b in planned if b.bundle_id}
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        statuses = dict(
            await conn.fetch(
                "SELECT case_id, status FROM intake.cases WHERE case_id = ANY($1::text[])", members
            )
        )
        per_key = await conn.fetch(
            "SELECT key, bundle_id FROM intake.bundle_keys WHERE key = ANY($1::text[])",
            [b.key for b in planned],
        )
        created = {
            r["bundle_id"]
            for r in await conn.fetch(
                "SELECT bundle_id FROM intake.bundles WHERE created_at >= $1", since
            )
        }
    finally:
        await conn.close()
    by_key = {b.key: b.bundle_id for b in planned}
    return {
        "statuses": statuses,
        "key_mismatch": [r["key"] for r in per_key if r["bundle_id"] != by_key.get(r["key"])],
        "phantom_bundles": sorted(created - answered),
        "members": members,
    }
