"""Time-order merge of records read from many partitions (`tongban tail`).

Kafka orders records only within a partition, and not even there by event time: the outbox
relay publishes in outbox-id order, and two transactions can commit in the other order than
they took their ids (and event times). A tail over several topics and partitions receives
records in fetch batches, partition by partition. Two tools put them in event-time order (the
key, `EventView.sort_key`: `ce_time`, then a tie-break that makes the order total):

- `SortedBacklog`, for a backlog: every record up to the end offsets seen at the start,
  released in exact key order once all of it is read. Guaranteed whatever the backlog's size
  or how its partitions interleave: beyond `run_size` records, sorted runs are spilled to
  temporary files and merged back (`heapq.merge`), so memory stays bounded.
- `TimeMergeBuffer`, for live records: each is held at most `delay` seconds after it
  arrived, and released in key order: a record is released once it is the oldest one held
  and it has waited `delay` (so a record that arrives up to `delay` late still comes out in
  its place); anything younger waits behind it. Output is in order as long as no record
  arrives more than `delay` late; one that does is printed when it is due, after younger
  ones (never dropped). `flush()` releases everything at once, in order (when the tail stops).

The default delay is 500 ms (`tongban tail --order-delay`); 0 prints records as they come.
"""

from __future__ import annotations

import heapq
import itertools
import pickle
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Generic, TypeVar

T = TypeVar("T")

DEFAULT_DELAY_S = 0.5
# Records held in memory by a backlog before a sorted run goes to disk (a record's view is
# a few KB: about 100 MB).
DEFAULT_RUN_SIZE = 20_000


@dataclass(order=True)
class _Held(Generic[T]):
    key: Any
    seq: int
    arrived: float = field(compare=False)
    item: T = field(compare=False)


class TimeMergeBuffer(Generic[T]):
    def __init__(self, delay: float = DEFAULT_DELAY_S) -> None:
        if delay < 0:
            raise ValueError("the reorder delay must not be negative")
        self.delay = delay
        self._heap: list[_Held[T]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, item: T, *, key: Any, now: float) -> None:
        heapq.heappush(self._heap, _Held(key, next(self._seq), now, item))

    def pop_ready(self, now: float) -> list[T]:
        """The records due now, oldest first."""
        out: list[T] = []
        while self._heap and self._heap[0].arrived + self.delay <= now:
            out.append(heapq.heappop(self._heap).item)
        return out

    def flush(self) -> list[T]:
        out: list[T] = []
        while self._heap:
            out.append(heapq.heappop(self._heap).item)
        return out

    def next_due(self, now: float) -> float | None:
        """Seconds until the oldest record is due (0 if it is), None when empty."""
        if not self._heap:
            return None
        return max(0.0, self._heap[0].arrived + self.delay - now)


class SortedBacklog(Generic[T]):
    """Items added in any order, given back in exact `key` order. Keys must be distinct (so
    that items are never compared) and the items picklable (a run may go to disk)."""

    def __init__(self, key: Callable[[T], Any], *, run_size: int = DEFAULT_RUN_SIZE) -> None:
        if run_size < 1:
            raise ValueError("run_size must be at least 1")
        self._key = key
        self._run_size = run_size
        self._held: list[tuple[Any, T]] = []
        self._runs: list[IO[bytes]] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def spilled_runs(self) -> int:
        return len(self._runs)

    def add(self, item: T) -> None:
        self._held.append((self._key(item), item))
        self._count += 1
        if len(self._held) >= self._run_size:
            self._spill()

    def _spill(self) -> None:
        self._held.sort(key=lambda pair: pair[0])
        run = tempfile.TemporaryFile(prefix="tongban-tail-")  # unlinked: gone when closed
        for pair in self._held:
            pickle.dump(pair, run, protocol=pickle.HIGHEST_PROTOCOL)
        run.flush()
        self._runs.append(run)
        self._held = []

    def drain(self) -> Iterator[T]:
        """Every item, in key order; the backlog is empty (and its files closed) afterwards."""
        self._held.sort(key=lambda pair: pair[0])
        streams = [_read_run(run) for run in self._runs]
        streams.append(iter(self._held))
        try:
            for _key, item in heapq.merge(*streams, key=lambda pair: pair[0]):
                yield item
        finally:
            self.close()

    def close(self) -> None:
        for run in self._runs:
            run.close()
        self._runs = []
        self._held = []
        self._count = 0

    def __enter__(self) -> SortedBacklog[T]:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _read_run(run: IO[bytes]) -> Iterator[tuple[Any, Any]]:
    run.seek(0)
    while True:
        try:
            yield pickle.load(run)  # noqa: S301 - our own temporary file, written just now
        except EOFError:
            return
