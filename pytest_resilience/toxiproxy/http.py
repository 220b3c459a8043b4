"""A small HTTP/1.1 server on asyncio protocols, just enough for the control plane.

Keep-alive (HTTP/1.1 by default, ``Connection: keep-alive`` for 1.0),
pipelined requests answered in order, ``Content-Length`` and chunked request
bodies, ``Expect: 100-continue``, bounded header and body sizes, an idle
timeout. Malformed requests get ``400 Bad Request`` and the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qs, unquote

__all__ = ["HttpServer", "Request", "Response"]

log = logging.getLogger("pytest_resilience.toxiproxy")

MAX_HEADER_BYTES = 1 << 20
MAX_BODY_BYTES = 64 << 20
IDLE_TIMEOUT = 60.0


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    version: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    def __init__(self, status: int = 400, message: str = "Bad Request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def render(response: Response, head_only: bool = False, close: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {response.status} {_reason(response.status)}"]
    if response.content_type is not None:
        lines.append(f"Content-Type: {response.content_type}")
    for name, value in response.headers:
        lines.append(f"{name}: {value}")
    lines.append(f"Date: {formatdate(usegmt=True)}")
    no_body = response.status in (204, 304) or 100 <= response.status < 200
    if not no_body:
        lines.append(f"Content-Length: {len(response.body)}")
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")
    if no_body or head_only:
        return head
    return head + response.body


class HttpProtocol(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False
        self.eof = False
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.continue_sent = False
        self.refused: str | None = None

    # -- asyncio callbacks ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        transport = self.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.server.authorize is not None:
                self.refused = self.server.authorize(sock)
        self.server.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_HEADER_BYTES + MAX_BODY_BYTES + 65536:
            self._fail(_BadRequest(413, "Request Entity Too Large"))
            return
        if not self.busy:
            self._process()

    def eof_received(self) -> bool:
        self.eof = True
        if not self.busy:
            self._process()
            if not self.busy:
                self.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # -- processing -----------------------------------------------------------------
    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = self.loop.call_later(IDLE_TIMEOUT, self.close)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def _fail(self, error: _BadRequest) -> None:
        if self.closed or self.transport is None:
            return
        body = f"{error.status} {error.message}".encode()
        response = Response(error.status, body, "text/plain; charset=utf-8")
        self.transport.write(render(response, close=True))
        self.buffer.clear()
        self.close()

    def _process(self) -> None:
        if self.closed:
            return
        try:
            request = self._parse()
        except _BadRequest as error:
            self._fail(error)
            return
        if request is None:
            return
        if self.refused is not None and self.transport is not None:
            # Toxiproxy's error shape, so every client shows the reason.
            body = json.dumps({"error": self.refused, "status": 403}).encode()
            self.transport.write(render(Response(403, body, "application/json"), close=True))
            self.buffer.clear()
            self.close()
            return
        self.busy = True
        self.continue_sent = False
        self._arm_idle()
        self.task = self.loop.create_task(self._run(request))

    def _parse(self) -> Request | None:
        buf = self.buffer
        while buf.startswith(b"\r\n"):  # tolerate stray CRLF between requests
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                raise _BadRequest(431, "Request Header Fields Too Large")
            return None
        if end > MAX_HEADER_BYTES:
            raise _BadRequest(431, "Request Header Fields Too Large")
        head = bytes(buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise _BadRequest()
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0") or not method.isascii() or not method.isalpha():
            raise _BadRequest(505 if version.startswith("HTTP/") else 400)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or " " in name:
                raise _BadRequest()
            key = name.lower()
            value = value.strip(" \t")
            if key in headers:
                if key == "content-length" and headers[key] != value:
                    raise _BadRequest()
                if key != "content-length":
                    headers[key] = headers[key] + ", " + value
            else:
                headers[key] = value
        body_start = end + 4
        transfer = headers.get("transfer-encoding", "").lower()
        if transfer:
            if transfer != "chunked":
                raise _BadRequest(501, "Not Implemented")
            parsed = self._parse_chunked(body_start)
            if parsed is None:
                self._maybe_continue(headers, version)
                return None
            body, consumed = parsed
        else:
            length_text = headers.get("content-length", "0")
            if not length_text.isdigit() or not length_text.isascii():
                raise _BadRequest()
            length = int(length_text)
            if length > MAX_BODY_BYTES:
                raise _BadRequest(413, "Request Entity Too Large")
            if len(buf) - body_start < length:
                self._maybe_continue(headers, version)
                return None
            body = bytes(buf[body_start : body_start + length])
            consumed = body_start + length
        del buf[:consumed]
        if target.startswith(("http://", "https://")):
            after_scheme = target.split("://", 1)[1]
            slash = after_scheme.find("/")
            target = after_scheme[slash:] if slash >= 0 else "/"
        raw_path, _, raw_query = target.partition("?")
        if not raw_path.startswith("/") and not (method == "OPTIONS" and raw_path == "*"):
            raise _BadRequest()
        path = unquote(raw_path, errors="replace")
        query = parse_qs(raw_query, keep_blank_values=True, errors="replace")
        return Request(method, target, path, query, version, headers, body)

    def _parse_chunked(self, start: int) -> tuple[bytes, int] | None:
        buf = self.buffer
        pos = start
        body = bytearray()
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadRequest() from None
            if size < 0 or len(body) + size > MAX_BODY_BYTES:
                raise _BadRequest(413, "Request Entity Too Large")
            pos = line_end + 2
            if size == 0:
                # trailers until an empty line
                while True:
                    line_end = buf.find(b"\r\n", pos)
                    if line_end < 0:
                        return None
                    if line_end == pos:
                        return bytes(body), line_end + 2
                    pos = line_end + 2
            if len(buf) < pos + size + 2:
                return None
            body += buf[pos : pos + size]
            if buf[pos + size : pos + size + 2] != b"\r\n":
                raise _BadRequest()
            pos += size + 2

    def _maybe_continue(self, headers: dict[str, str], version: str) -> None:
        if (
            not self.continue_sent
            and version == "HTTP/1.1"
            and headers.get("expect", "").lower() == "100-continue"
            and self.transport is not None
        ):
            self.continue_sent = True
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _keep_alive(self, request: Request) -> bool:
        connection = request.headers.get("connection", "").lower()
        tokens = {t.strip() for t in connection.split(",")}
        if request.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    async def _run(self, request: Request) -> None:
        try:
            response = await self.server.handler(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Unhandled error in the API handler")
            response = Response(
                500, b'{"error":"internal error","status":500}\n', "text/plain; charset=utf-8"
            )
        if self.closed or self.transport is None:
            return
        keep = self._keep_alive(request) and not self.eof and not self.server.closing
        self.transport.write(render(response, head_only=request.method == "HEAD", close=not keep))
        self.busy = False
        self.task = None
        if not keep:
            self.close()
            return
        self._arm_idle()
        if self.buffer or self.eof:
            self._process()
            if self.eof and not self.busy:
                self.close()


class HttpServer:
    """Serves ``handler`` on an already bound listening socket."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, handler: Handler,
        authorize: Callable[[socket.socket], str | None] | None = None,
    ) -> None:
        self.loop = loop
        self.handler = handler
        #: Called once per accepted connection: None lets it in, a message refuses
        #: its requests with ``403`` and that message.
        self.authorize = authorize
        self.connections: set[HttpProtocol] = set()
        self.server: asyncio.AbstractServer | None = None
        self.closing = False

    async def start(self, sock: socket.socket) -> None:
        self.server = await self.loop.create_server(lambda: HttpProtocol(self), sock=sock)

    def close(self) -> None:
        self.closing = True
        if self.server is not None:
            self.server.close()
            self.server = None
        for conn in list(self.connections):
            conn.abort()
