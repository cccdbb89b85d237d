"""`tongban dlq list|show|replay`: the dead-letter topic as operators see it.

Dead letters are named `<partition>:<offset>` in the dead-letter topic (`3:17`); a bare
offset is accepted when the topic has a single partition.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from contracts.events import ReplayRecord
from services.cli.ops.kafka_io import fetch_records, make_reader, partitions_of, read_topic_snapshot
from services.common.kafka import ensure_topics, make_producer
from services.common.settings import CommonSettings
from services.operators.dead_letters import (
    REPLAYS_TOPIC,
    DeadLetter,
    ReplayError,
    parse_replays,
    replay,
    replays_topic_spec,
)
from services.operators.event_facts import type_matches

_REF = re.compile(r"^(?:(\d+):)?(\d+)$")


def printable(text: str, limit: int = 200) -> str:
    """`text` safe for a terminal and for UTF-8 output, at most about `limit` characters: a
    dead letter holds whatever was produced (escape sequences, NUL, lone surrogates, ids of
    200 000 characters); control characters, surrogates and noncharacters show as escapes."""
    cut = len(text) > limit
    shown = "".join(
        ch
        if unicodedata.category(ch) not in ("Cc", "Cs", "Cn") or ch in "\t"
        else ch.encode("unicode_escape", "backslashreplace").decode("ascii")
        if unicodedata.category(ch) != "Cs"
        else f"\\u{ord(ch):04x}"
        for ch in text[:limit]
    )
    return shown + (f"... ({len(text) - limit} more characters)" if cut else "")


def parse_ref(text: str, *, partitions: int | None) -> tuple[int, int]:
    """`3:17` -> (3, 17); `17` -> (0, 17) when the topic has one partition."""
    match = _REF.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a dead letter: give PARTITION:OFFSET, e.g. 3:17")
    if match.group(1) is None:
        if partitions != 1:
            raise ValueError(
                f"{text!r} is ambiguous: the dead-letter topic has {partitions} partitions; "
                "give PARTITION:OFFSET, e.g. 0:" + match.group(2)
            )
        return 0, int(match.group(2))
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class LetterFilters:
    since: datetime | None = None
    reason: str | None = None  # substring, case-insensitive
    types: tuple[str, ...] = ()  # see filters.type_matches
    cases: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.since or self.reason or self.types or self.cases)


def letter_matches(letter: DeadLetter, filters: LetterFilters) -> bool:
    if filters.since is not None and letter.time < filters.since:
        return False
    if filters.reason and filters.reason.lower() not in letter.reason.lower():
        return False
    if filters.types and not any(type_matches(letter.event_type, p) for p in filters.types):
        return False
    return not filters.cases or letter.case_id in filters.cases


async def partition_count(settings: CommonSettings, topic: str) -> int | None:
    consumer = make_reader(settings, client_id=f"{settings.service}-dlq")
    await consumer.start()
    try:
        found = await partitions_of(consumer, [topic])
        return len(found[topic]) if topic in found else None
    finally:
        await consumer.stop()


async def load_letters(
    settings: CommonSettings, topic: str, filters: LetterFilters
) -> list[DeadLetter]:
    records = await read_topic_snapshot(
        settings, topic, since=filters.since, client_id=f"{settings.service}-dlq"
    )
    letters = [DeadLetter.of(r) for r in records]
    letters.sort(key=lambda x: (x.timestamp_ms, x.partition, x.offset))
    return [x for x in letters if letter_matches(x, filters)]


async def load_letters_at(
    settings: CommonSettings, topic: str, refs: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], DeadLetter | None]:
    found = await fetch_records(settings, topic, refs, client_id=f"{settings.service}-dlq")
    return {ref: (DeadLetter.of(r) if r is not None else None) for ref, r in found.items()}


async def load_replays(
    settings: CommonSettings, replays_topic: str = REPLAYS_TOPIC
) -> dict[tuple[str, int, int], list[ReplayRecord]]:
    """Every recorded replay, by dead-letter place (topic, partition, offset)."""
    records = await read_topic_snapshot(
        settings, replays_topic, client_id=f"{settings.service}-dlq", missing_ok=True
    )
    out: dict[tuple[str, int, int], list[ReplayRecord]] = {}
    for entry in parse_replays([r.value for r in records]):
        out.setdefault(entry.dlq_place, []).append(entry)
    return out


@dataclass
class ReplayOutcome:
    letter: DeadLetter
    entry: ReplayRecord | None = None
    refused: str | None = None
    earlier: list[ReplayRecord] = field(default_factory=list)


def refusal(letter: DeadLetter, earlier: Sequence[ReplayRecord], *, force: bool) -> str | None:
    """Why this letter is not replayed now (None: go ahead)."""
    if not letter.original_topic:
        return "no dlq_topic header: the original topic is unknown"
    if letter.altered is not None:  # not even with --force: it would publish other bytes
        return (
            f"the letter is {letter.altered}; the original is {letter.original_topic}/"
            f"{letter.original_partition}@{letter.original_offset} while that topic keeps it"
        )
    if force:
        return None
    if earlier:
        last = earlier[-1]
        return (
            f"already replayed {len(earlier)}x, last at {last.replayed_at:%Y-%m-%d %H:%M:%S}Z by "
            f"{last.operator} (--force replays again)"
        )
    problem = letter.envelope_problem()
    if problem is not None:
        return f"not a valid CloudEvent, it would be dead-lettered again: {problem} (--force)"
    return None


async def replay_letters(
    settings: CommonSettings,
    letters: Sequence[DeadLetter],
    *,
    operator: str,
    replays_topic: str = REPLAYS_TOPIC,
    force: bool = False,
    history: dict[tuple[str, int, int], list[ReplayRecord]],
    progress: Callable[[ReplayOutcome], None] = lambda _o: None,
) -> list[ReplayOutcome]:
    outcomes = [
        ReplayOutcome(
            letter, earlier=history.get((letter.topic, letter.partition, letter.offset), [])
        )
        for letter in letters
    ]
    for outcome in outcomes:
        outcome.refused = refusal(outcome.letter, outcome.earlier, force=force)
    todo = [o for o in outcomes if o.refused is None]
    if not todo:
        return outcomes
    await ensure_topics(settings, [replays_topic_spec(replays_topic)])
    producer = make_producer(settings, client_id=f"{settings.service}-dlq-replay")
    await producer.start()
    try:
        for outcome in outcomes:
            if outcome.refused is None:
                try:
                    outcome.entry = await replay(
                        producer,
                        outcome.letter,
                        operator=operator,
                        replays_topic=replays_topic,
                        forced=force
                        and (
                            bool(outcome.earlier) or outcome.letter.envelope_problem() is not None
                        ),
                    )
                except ReplayError as exc:
                    outcome.refused = str(exc)
            progress(outcome)
    finally:
        await producer.stop()
    return outcomes


def _needed_force(outcome: ReplayOutcome) -> bool:
    return bool(outcome.earlier) or outcome.letter.envelope_problem() is not None
