"""Which catalog version routes a case: the one in force when the case was submitted.

Each catalog load is a new version with the time it was loaded (`loaded_at`); a version is in
force from its `loaded_at` until the next one is loaded. A case is routed by the catalog that
was in force at its `submitted_at`, so a catalog loaded while the case travelled from the
counter to routing does not change the rules it was taken under (DESIGN.md §3). The item's own
`effective_from` / `effective_to` are checked against the submission date by rule R1.

Selection (`version_in_force`):
- the newest version (highest number) whose `loaded_at` <= `submitted_at`;
- a submission older than every version known (a foreign system's backlog, or clocks that
  disagree by a little): the oldest version, the nearest in time to the submission;
- no version at all: None (routing fails the case with `no_catalog`; it waits in triage).
  With any version loaded, one of the two rules above always gives an answer, so there is no
  further "latest" fallback to reach: the answer is never a version that does not exist.

Operator retries from triage do not use this: they route by the version in force now
(see `handlers.retry_route`).

`VersionTimeline` answers the same question in O(log n) for the hot path; it rebuilds its
sorted view only when a version has been added (versions are only ever added).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from datetime import datetime
from typing import Protocol


class Loaded(Protocol):
    """A loaded catalog version (e.g. `CatalogPublished`)."""

    @property
    def loaded_at(self) -> datetime: ...


def version_in_force(loaded_at: Mapping[int, datetime], at: datetime) -> int | None:
    """The catalog version in force at `at` (see the module docstring for the fallbacks)."""
    if not loaded_at:
        return None
    qualifying = [version for version, loaded in loaded_at.items() if loaded <= at]
    return max(qualifying) if qualifying else min(loaded_at)


class VersionTimeline:
    """`version_in_force` over a growing mapping, without a scan per case."""

    def __init__(self) -> None:
        self._key: tuple[int, int] | None = None
        self._times: list[datetime] = []
        self._newest_so_far: list[int] = []  # highest version loaded at or before _times[i]
        self._oldest: int | None = None

    def select(self, versions: Mapping[int, Loaded], at: datetime) -> int | None:
        key = (id(versions), len(versions))
        if key != self._key:
            self._rebuild({version: v.loaded_at for version, v in versions.items()})
            self._key = key
        i = bisect_right(self._times, at)
        return self._newest_so_far[i - 1] if i else self._oldest

    def _rebuild(self, loaded_at: Mapping[int, datetime]) -> None:
        ordered = sorted((loaded, version) for version, loaded in loaded_at.items())
        self._times = [loaded for loaded, _ in ordered]
        self._newest_so_far = []
        newest = -1
        for _, version in ordered:
            newest = max(newest, version)
            self._newest_so_far.append(newest)
        self._oldest = min(loaded_at) if loaded_at else None
