"""Time-order merge of records read from many partitions (`tongban tail`).

Kafka orders records only within a partition; a tail over several topics and partitions
receives them in fetch batches, partition by partition. The buffer holds each record for at
most `delay` seconds after it arrived and releases records in timestamp order:

- a record is released once it is the oldest one held and it has waited `delay` (so a record
  that arrives up to `delay` late still comes out in its place); anything younger waits behind
  it, so output is in order as long as no record arrives more than `delay` late;
- `flush()` releases everything at once, in order: used while reading a backlog that is fully
  fetched (the consumer is at the partitions' end, so no older record can still come) and when
  the tail stops;
- within one partition the offset order is kept even if producer timestamps go backwards: a
  record's sort time is never earlier than the previous record's of the same partition (one
  case's events, keyed by case id, stay in the order the case went through them).

The default delay is 500 ms (`tongban tail --order-delay`); 0 prints records as they come.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_DELAY_S = 0.5


@dataclass(order=True)
class _Held(Generic[T]):
    sort_ms: int
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
        self._last_ms: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, item: T, *, timestamp_ms: int, partition: Hashable, now: float) -> None:
        sort_ms = max(timestamp_ms, self._last_ms.get(partition, timestamp_ms))
        self._last_ms[partition] = sort_ms
        heapq.heappush(self._heap, _Held(sort_ms, next(self._seq), now, item))

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
