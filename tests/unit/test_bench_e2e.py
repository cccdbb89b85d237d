"""The end-to-end bench's own figures from what the load generator answered, and the sampler
following the generator, a new process every step."""

from __future__ import annotations

import os

import pytest

from services.bench.e2e import CaseWatcher, E2EConfig, _Step, _step_figures, load_step
from services.bench.loadgen import Answer, LoadResult, Request
from services.bench.procs import LOAD_GENERATOR, ProcessSampler
from services.common.settings import CommonSettings

pytestmark = pytest.mark.unit


def config(*intake_urls: str) -> E2EConfig:
    return E2EConfig(
        intake_urls=list(intake_urls), routing_url="http://r", rates=[10], max_inflight=99
    )


def test_a_step_offers_each_request_once_over_every_replica() -> None:
    requests = [Request("t", b"{}")] * 30
    step = load_step(config("http://a:1", "http://b:2"), requests, 20.0)
    assert step.urls == ["http://a:1/v1/cases", "http://b:2/v1/cases"]
    assert round(step.rate * step.seconds) == 30
    assert (step.max_inflight, step.connections) == (99, 64)


def test_figures_time_cases_from_their_scheduled_send() -> None:
    answers = [Answer(f"k-{n}", 201, 100.0 + n / 10, 0.05, f"c-{n}") for n in range(10)] + [
        Answer("k-10", 429, 101.0, 0.01, None),
        Answer("k-11", 0, 101.1, 120.0, None),
    ]
    step = _Step(rate=10.0, load=LoadResult(answers=answers, late=3, cpu_s=0.024, wall_s=1.5))
    watcher = CaseWatcher(CommonSettings.model_construct())
    watcher.routed = {f"c-{n}": 100.0 + n / 10 + 0.02 for n in range(10)}
    watcher.closed = {f"c-{n}": 100.0 + n / 10 + 0.2 for n in range(9)}  # c-9 did not close
    figures = _step_figures(step, watcher, drained=False)
    assert (figures["offered"], figures["submitted"], figures["skipped_inflight_cap"]) == (
        15,
        10,
        3,
    )
    assert figures["statuses"] == {"201": 10, "429": 1}
    assert figures["errors"] == {"no answer": 1}
    assert figures["submit_rate"] == pytest.approx(8.0)  # 12 of 15 sent
    assert (figures["routed"], figures["closed"]) == (10, 9)
    assert figures["submit_to_routed"]["p99_ms"] == pytest.approx(20.0)
    assert figures["submit_to_closed"]["p50_ms"] == pytest.approx(200.0)
    assert figures["http"]["count"] == 11  # the unanswered one has no latency to speak of
    assert figures["load_generator"] == {
        "requests": 12,
        "cpu_s": 0.024,
        "cpu_ms_per_request": 2.0,
        "wall_s": 1.5,
    }


def test_the_sampler_follows_a_new_generator_and_charges_its_own_cpu() -> None:
    sampler = ProcessSampler()
    me = os.getpid()  # stands for a generator that started, ran and ended
    sampler.add(LOAD_GENERATOR, me, kind="bench", from_start=True)
    sampler.sample()
    sampler.ended(LOAD_GENERATOR, me, 1.5)
    assert sampler.snapshot()[LOAD_GENERATOR] == pytest.approx(1.5)  # all of it, from start
    following = os.getppid()  # stands for the next step's generator
    sampler.add(LOAD_GENERATOR, following, kind="bench", from_start=True)
    sampler.ended(LOAD_GENERATOR, following, 0.5)
    (figures,) = sampler.figures()
    assert (figures["name"], figures["cpu_s"]) == (LOAD_GENERATOR, 2.0)
