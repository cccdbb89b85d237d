"""The Python side of the compiled load generator: its input file, its command line, its
answers read back, and a clear refusal when Go is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.bench import loadgen
from services.bench.loadgen import (
    Answer,
    LoadgenUnavailable,
    LoadStep,
    Request,
    command,
    parse_answers,
    request_lines,
    source_digest,
)

pytestmark = pytest.mark.unit


def test_requests_become_one_line_each() -> None:
    lines = request_lines([Request("tok-a", b'{"a":"x\\ty"}'), Request("tok-b", b"{}")])
    assert lines == b'tok-a\t{"a":"x\\ty"}\ntok-b\t{}\n'


@pytest.mark.parametrize(
    "requests",
    [
        [],
        [Request("", b"{}")],
        [Request("tok en", b"{}")],
        [Request("tok\t", b"{}")],
        [Request("tok", b'{"a":\n1}')],
    ],
)
def test_requests_the_file_cannot_carry_are_refused(requests: list[Request]) -> None:
    with pytest.raises(ValueError):
        request_lines(requests)


def test_command_carries_every_setting_and_every_url() -> None:
    step = LoadStep(
        urls=["http://a/v1/cases", "http://b/v1/cases"],
        rate=250.0,
        seconds=2.5,
        requests=[Request("t", b"{}")],
        connections=8,
        max_inflight=100,
        id_field="bundle_id",
    )
    args = command(
        Path("/bin/lg"),
        step,
        requests_file=Path("/tmp/r"),
        answers_file=Path("/tmp/a"),
        run_id="lg-1",
    )
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert args[0] == "/bin/lg"
    assert options == {
        "-requests": "/tmp/r",
        "-rate": "250.0",
        "-duration": "2500000000ns",
        "-connections": "8",
        "-max-inflight": "100",
        "-id-field": "bundle_id",
        "-out": "/tmp/a",
        "-run-id": "lg-1",
        "-url": "http://b/v1/cases",
    }
    assert args.count("-url") == 2 and "http://a/v1/cases" in args


@pytest.mark.parametrize(
    "step",
    [
        LoadStep(urls=[], rate=1, seconds=1, requests=[Request("t", b"{}")]),
        LoadStep(urls=["http://a"], rate=0, seconds=1, requests=[Request("t", b"{}")]),
        LoadStep(urls=["http://a"], rate=1, seconds=0, requests=[Request("t", b"{}")]),
    ],
)
def test_a_step_that_offers_nothing_is_refused(step: LoadStep) -> None:
    with pytest.raises(ValueError):
        command(Path("g"), step, requests_file=Path("r"), answers_file=Path("a"), run_id="x")


def test_answers_are_read_back_in_seconds() -> None:
    text = (
        "lg-1-0\t201\t1700000000250000000\t12500000\tc-1\n"
        "lg-1-1\t0\t1700000000300000000\t120000000000\t\n"
    )
    assert parse_answers(text) == [
        Answer("lg-1-0", 201, 1_700_000_000.25, 0.0125, "c-1"),
        Answer("lg-1-1", 0, 1_700_000_000.3, 120.0, None),
    ]
    assert parse_answers("") == []


def test_the_binary_is_named_by_its_sources(tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text("module x\n")
    (tmp_path / "main.go").write_text("package main\n")
    before = source_digest(tmp_path)
    (tmp_path / "main_test.go").write_text("package main // tests do not change the binary\n")
    assert source_digest(tmp_path) == before
    (tmp_path / "main.go").write_text("package main\n\nfunc main() {}\n")
    assert source_digest(tmp_path) != before


def test_without_go_the_error_says_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TONGBAN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(loadgen, "go_command", lambda: None)
    with pytest.raises(LoadgenUnavailable, match="needs Go .* install it"):
        loadgen.build()
