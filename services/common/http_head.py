"""A bounded request head, and problem JSON where the HTTP server itself refuses a request.

Promise: a request whose head (request line and headers) passes `TONGBAN_HTTP_MAX_HEAD_BYTES`
(default 32 KiB) is answered 431 `request_header_too_large` as RFC 9457 problem JSON, and the
server reads at most that much (plus one socket read) of it: a 64 MiB header is cut off
unread, so it costs no CPU and never delays other requests or the health probes. Malformed
HTTP (what the parser cannot read) is answered 400 `malformed_request`, also as problem JSON.
Both answers close the connection: after a broken head, no next request can be found on it.

How: uvicorn's httptools protocol, with the head counted at two places. As bytes arrive, every
byte received while a head is incomplete counts, so a head still incomplete past the limit is
refused before the parser copies it together (httptools joins a header's pieces in Python,
which for a 64 MiB header took seconds of CPU). As the parser hands over the URL and each
header, their sizes count, so a whole head that arrived in one read is measured exactly.
The app never sees such a request: FastAPI's own handlers cannot answer it, hence this class.
After a refusal, what the client still sends is read and dropped until it closes or for
`LINGER_S` seconds, so it reads the answer instead of a connection reset.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from services.common.limits import DEFAULT_MAX_HEAD_BYTES, REJECTED
from services.common.logs import get_logger
from services.common.web import PROBLEM_JSON, Problem

log = get_logger(__name__)

# How long a refused connection keeps reading (and dropping) before it is closed.
LINGER_S = 2.0


class HeadTooLarge(Exception):
    """Raised from a parser callback: the parser stops, and `send_400_response` answers 431."""


def head_too_large_problem(limit: int) -> Problem:
    return Problem(
        431,
        "request_header_too_large",
        "The request head is too large",
        f"the request line and headers may be at most {limit} bytes together "
        "(TONGBAN_HTTP_MAX_HEAD_BYTES)",
        max_bytes=limit,
    )


def malformed_problem() -> Problem:
    return Problem(
        400,
        "malformed_request",
        "The request is not valid HTTP",
        "the request line or a header could not be parsed (HTTP/1.1, RFC 9112)",
    )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded head; make one with `bounded_http(limit)`."""

    max_head_bytes = DEFAULT_MAX_HEAD_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between messages, or inside a request head
        self._head_received = 0  # bytes received since the current head began
        self._head_parsed = 0  # bytes of the current head the parser handed over
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused request: dropped unread
        if self._in_head:
            self._head_received += len(data)
        super().data_received(data)
        if self._in_head and self._head_received > self.max_head_bytes and not self._refused:
            self._refuse(head_too_large_problem(self.max_head_bytes))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_parsed = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_received = 0

    def _count(self, size: int) -> None:
        self._head_parsed += size
        if self._head_parsed > self.max_head_bytes:
            raise HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        """What uvicorn answers when the parser fails: problem JSON instead of plain text."""
        if self._head_parsed > self.max_head_bytes:
            self._refuse(head_too_large_problem(self.max_head_bytes))
        else:
            self._refuse(malformed_problem())

    def _refuse(self, problem: Problem) -> None:
        self._refused = True
        REJECTED.labels(problem.code).inc()
        log.warning("request refused by the HTTP server", code=problem.code, client=self.client)
        body = json.dumps(problem.body()).encode()
        head = [STATUS_LINE[problem.status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                f"content-type: {PROBLEM_JSON}\r\n".encode(),
                f"content-length: {len(body)}\r\n".encode(),
                b"connection: close\r\n\r\n",
            ]
        )
        self.transport.write(b"".join(head) + body)
        # Half-close: the answer goes out with a FIN, and what the client still sends is
        # dropped (data_received) until it closes too. Closing at once would make the kernel
        # answer the unread bytes with a reset, which can destroy the answer in flight.
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def bounded_http(max_head_bytes: int) -> type[BoundedHttpToolsProtocol]:
    """The protocol class to give uvicorn (`http=`), refusing heads over `max_head_bytes`."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes},
    )
