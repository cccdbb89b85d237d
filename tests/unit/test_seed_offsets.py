"""Where a service's one consumer group starts, from the groups of one reader each it replaces."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from services.common.consumer import seed_offsets

pytestmark = pytest.mark.unit

A0, A1, B0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)


def test_each_partition_starts_at_the_slowest_former_reader_of_its_topic() -> None:
    topics = {"one": ["a"], "two": ["a", "b"]}
    committed = {"one": {A0: 10, A1: 7}, "two": {A0: 4, A1: 9, B0: 3}}
    assert seed_offsets(topics, committed) == {A0: 4, A1: 7, B0: 3}


def test_a_partition_a_former_reader_never_committed_starts_from_the_beginning() -> None:
    topics = {"one": ["a"], "two": ["a"], "new": ["b"]}
    committed = {"one": {A0: 10, A1: 7}, "two": {A0: 4}, "new": {}}
    # two never committed a1; nobody reading b committed: both left out.
    assert seed_offsets(topics, committed) == {A0: 4}


def test_an_offset_of_minus_one_is_no_commit() -> None:
    assert seed_offsets({"one": ["a"]}, {"one": {A0: -1, A1: 5}}) == {A1: 5}


def test_no_former_groups_no_seeds() -> None:
    assert seed_offsets({}, {}) == {}
