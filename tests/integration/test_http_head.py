"""The HTTP server bounds request heads (431 problem JSON) and answers malformed HTTP with
problem JSON: a real uvicorn server with tongban's protocol, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request

from services.common.http_head import bounded_http
from services.common.web import PROBLEM_JSON

pytestmark = pytest.mark.integration

LIMIT = 4096


class Server:
    def __init__(self, port: int, calls: list[str]) -> None:
        self.port = port
        self.calls = calls

    async def exchange(self, data: bytes) -> bytes:
        """Send `data` on a new connection and read until the server closes it."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(data)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        return answer


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    calls: list[str] = []
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        calls.append("healthz")
        return {"status": "ok"}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        calls.append("echo")
        return {"length": len(await request.body())}

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_config=None,
        lifespan="off",
        http=bounded_http(LIMIT),
    )
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve())
    while not uv.started:
        await asyncio.sleep(0.01)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        yield Server(port, calls)
    finally:
        uv.should_exit = True
        await task


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def problem(answer: bytes, status: int) -> dict[str, Any]:
    got, headers, body = parse(answer)
    assert got == status, answer[:300]
    assert headers["content-type"] == PROBLEM_JSON
    assert headers["connection"] == "close"
    parsed: dict[str, Any] = json.loads(body)
    assert parsed["status"] == status
    return parsed


def get(path: str, *headers: bytes) -> bytes:
    return b"".join(
        [f"GET {path} HTTP/1.1\r\nHost: t\r\n".encode(), *(h + b"\r\n" for h in headers), b"\r\n"]
    )


async def test_a_head_over_the_limit_gets_431_problem_json(server: Server) -> None:
    answer = await server.exchange(get("/healthz", b"X-Big: " + b"a" * LIMIT))
    body = problem(answer, 431)
    assert body["code"] == "request_header_too_large"
    assert body["max_bytes"] == LIMIT
    assert server.calls == []  # the app never saw it


async def test_a_head_within_the_limit_is_served(server: Server) -> None:
    answer = await server.exchange(
        get("/healthz", b"X-Fits: " + b"a" * (LIMIT - 200), b"Connection: close")
    )
    assert parse(answer)[0] == 200
    assert server.calls == ["healthz"]


async def test_a_long_url_counts_toward_the_head(server: Server) -> None:
    answer = await server.exchange(get("/healthz?q=" + "a" * LIMIT))
    assert problem(answer, 431)["code"] == "request_header_too_large"


async def test_malformed_http_gets_400_problem_json(server: Server) -> None:
    answer = await server.exchange(b"GET /healthz HTTP/1.1\r\nBad Header\x01: x\r\n\r\n")
    assert problem(answer, 400)["code"] == "malformed_request"


async def test_a_huge_header_is_refused_before_it_is_read_and_others_are_served(
    server: Server,
) -> None:
    """64 MiB of header, sent as fast as the server takes it: the 431 arrives while most of it
    is still unsent, and meanwhile another connection is served."""
    total = 64 * 1024 * 1024
    chunk = b"a" * (64 * 1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    sent = 0

    async def send() -> None:
        nonlocal sent
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Huge: ")
        with contextlib.suppress(ConnectionError):
            while sent < total:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)

    sender = asyncio.create_task(send())
    answer = await reader.readuntil(b"}")
    sent_when_answered = sent
    other = await server.exchange(get("/healthz", b"Connection: close"))
    sender.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sender
    writer.close()
    assert problem(answer, 431)["code"] == "request_header_too_large"
    assert sent_when_answered < total
    assert parse(other)[0] == 200
    assert server.calls == ["healthz"]  # the other connection's


async def test_bodies_and_pipelined_requests_do_not_count_as_head(server: Server) -> None:
    """A body many times the head limit, then a second request on the same connection, both
    in one write: the head count starts again with each request."""
    body = b"x" * (LIMIT * 25)
    first = f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    second = get("/healthz", b"X-Fits: " + b"a" * (LIMIT - 200), b"Connection: close")
    answer = await server.exchange(first + second)
    assert answer.count(b"HTTP/1.1 200 OK") == 2, answer[:500]
    assert server.calls == ["echo", "healthz"]
