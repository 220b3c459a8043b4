"""A scripted fake HTTP dependency that is a real HTTP/1.1 server on 127.0.0.1.

The server is small and self-contained (asyncio streams, no aiohttp), runs on
an :class:`HttpEngine` — one background thread with its own event loop that
many backends share — and speaks enough HTTP/1.1 for any client: keep-alive,
``Content-Length`` and chunked request bodies, ``Expect: 100-continue``,
``HEAD``. Every accepted socket gets ``TCP_NODELAY`` (Nagle plus delayed ACK
would add ≈ 40 ms to each keep-alive request).

Socket-level faults are real socket behaviour, so clients raise the errors
they raise in production:

========== ============================================ =========================
fault      what the server does                         e.g. httpx raises
========== ============================================ =========================
empty      closes (FIN) without sending a byte          ``RemoteProtocolError``
malformed  valid chunked headers, a bad chunk, closes   ``RemoteProtocolError``
truncated  announces 64 body bytes, sends 18, closes    ``RemoteProtocolError``
garbage    random non-HTTP bytes, then closes           ``RemoteProtocolError``
reset      RST (``SO_LINGER`` 0, then close)            ``ReadError``
hang       says nothing until the client hangs up       ``ReadTimeout``
========== ============================================ =========================
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import socket
import struct
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from http import HTTPStatus
from typing import Any, TypeVar

from pytest_resilience.errors import ConfigError, ServiceError
from pytest_resilience.services.http_routes import BackendCore, RecordedRequest, Route
from pytest_resilience.services.http_script import (
    TRUNCATED_LENGTH,
    Fault,
    Reply,
    Response,
    Step,
    coerce_reply,
)
from pytest_resilience.services.loop_thread import LoopThread
from pytest_resilience.toxiproxy.client import user_facing_call

__all__ = ["HttpBackend", "HttpEngine", "ProxiedBackend"]

T = TypeVar("T")

_MAX_HEAD = 64 * 1024
_REASONS = {s.value: s.phrase for s in HTTPStatus}


class HttpEngine:
    """One background thread running an asyncio loop that serves any number of backends.

    Start it once (per session, per xdist worker); creating and closing a
    backend on a running engine then costs two hops to the loop thread.
    """

    def __init__(self) -> None:
        self._thread: LoopThread[None] = LoopThread(
            "resilience-http-engine",
            modules=[__name__, "pytest_resilience.services.http_routes"],
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._thread.loop
        if loop is None:
            raise ServiceError("the HTTP engine is not running; call start() first")
        return loop

    def start(self) -> HttpEngine:
        if not self._thread.running:
            self._thread.start(timeout=10)
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the engine's loop and wait for its result."""
        if not self._thread.running:
            coro.close()
            raise ServiceError("the HTTP engine is not running; call start() first")
        try:
            return self._thread.run(coro, timeout)
        except ServiceError:
            raise ServiceError(f"the HTTP engine did not answer within {timeout} s") from None

    def describe(self) -> str:
        return f"HTTP engine loop ({'running' if self._thread.running else 'stopped'})"

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> HttpEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProxiedBackend:
    """The backend seen through a Toxiproxy proxy: ``.url`` plus the proxy's fault helpers.

    Unpacks as ``url, proxy = backend.via_proxy()``; attribute access falls
    through to the proxy handle, so ``via.latency(100)`` works too.
    """

    def __init__(self, url: str, proxy: Any) -> None:
        self.url = url
        self.proxy = proxy

    def __iter__(self) -> Iterator[Any]:
        return iter((self.url, self.proxy))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.proxy, name)

    def __repr__(self) -> str:
        return f"<ProxiedBackend {self.url} via {self.proxy!r}>"


class HttpBackend(BackendCore):
    """A real HTTP server on 127.0.0.1 answering from per-route scripts.

    Use the ``http_backend`` / ``http_backends`` fixtures in tests; outside
    pytest, ``with HttpBackend(routes={...}) as backend:`` starts its own engine.
    """

    kind = "http_backend"

    def __init__(self, *, routes: Mapping[str, object] | None = None, seed: int | str = 0,
                 name: str | None = None, assert_all_used: bool = True,
                 assert_all_expected: bool = True, engine: HttpEngine | None = None,
                 proxy_for: Callable[[], Any] | None = None) -> None:
        super().__init__(routes=routes, seed=seed, name=name, assert_all_used=assert_all_used,
                         assert_all_expected=assert_all_expected)
        self._engine = engine
        self._own_engine = engine is None
        self._proxy_for = proxy_for
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._conn_ids = itertools.count(1)
        self.port = 0
        self.host = "127.0.0.1"

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123`` (no trailing slash)."""
        if self._server is None:
            raise ServiceError(f"{self.describe()} is not running")
        return f"http://{self.host}:{self.port}"

    def url_for(self, path: str) -> str:
        return self.url + path

    def start(self) -> HttpBackend:
        if self._server is not None:
            return self
        if self._engine is None:
            self._engine = HttpEngine()
        self._engine.start()
        self._server = self._engine.run(self._start())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, self.host, 0, limit=_MAX_HEAD,
                                          reuse_address=True)

    def stop(self) -> None:
        """The :class:`~pytest_resilience.services.base.Service` name for :meth:`close`."""
        self.close()

    def close(self) -> None:
        """Stop listening, drop every connection and wait until the handlers are done."""
        engine, server = self._engine, self._server
        self._server = None
        try:
            if engine is not None and server is not None:
                engine.run(self._close(server))
        finally:
            if self._own_engine and engine is not None:
                engine.stop()
                self._engine = None

    async def _close(self, server: asyncio.Server) -> None:
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    def __enter__(self) -> HttpBackend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @user_facing_call
    def via_proxy(self, name: str | None = None) -> ProxiedBackend:
        """Put a Toxiproxy proxy in front of this backend (``proxy_for`` fixture).

        Returns a :class:`ProxiedBackend`: ``url, proxy = backend.via_proxy()``;
        requests to ``url`` cross the proxy, so its toxics (latency, down,
        reset_peer...) combine with this backend's scripted HTTP faults.
        """
        if self._proxy_for is None:
            raise ConfigError("via_proxy() needs the proxy_for fixture: use the http_backend "
                              "fixture (or pass proxy_for= to HttpBackend)")
        factory = self._proxy_for()
        proxy = factory(self.host, self.port, name=name) if name is not None \
            else factory(self.host, self.port)
        return ProxiedBackend(f"http://{proxy.host}:{proxy.port}", proxy)

    def __repr__(self) -> str:
        where = f"http://{self.host}:{self.port}" if self._server else "stopped"
        return f"<HttpBackend {self.name or ''} {where} routes={[r.label for r in self.routes]}>"

    # ------------------------------------------------------------------ serving

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        sock: socket.socket = writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = next(self._conn_ids)
        keep = True
        try:
            while keep:
                keep = await self._one_request(reader, writer, conn)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away mid-request
        except asyncio.CancelledError:
            pass  # the backend is closing
        except Exception as exc:  # a bug or a request we cannot parse: report, do not hide
            with self._lock:
                self.errors.append(f"connection {conn}: {type(exc).__name__}: {exc}")
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           conn: int) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed the connection
        except asyncio.LimitOverrunError:
            await self._write_simple(writer, 431, "request head larger than 64 KiB\n")
            return False
        arrived = time.monotonic()
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            await self._write_simple(writer, 400, f"bad request line {lines[0]!r}\n")
            return False
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                await self._write_simple(writer, 400, f"bad header line {line!r}\n")
                return False
            headers.append((name.strip(), value.strip()))
        lower = {n.lower(): v for n, v in headers}
        if lower.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = b""
        if "chunked" in lower.get("transfer-encoding", "").lower():
            body = await self._read_chunked(reader)
        elif "content-length" in lower:
            body = await reader.readexactly(int(lower["content-length"]))
        conn_hdr = lower.get("connection", "").lower()
        keep = "close" not in conn_hdr if version == "HTTP/1.1" else "keep-alive" in conn_hdr
        path, _, query = target.partition("?")
        rec, step, route = self.dispatch(method, path, query, headers, body, arrived, conn,
                                         version)
        reply = await self._resolve(rec, step, route)
        return await self._send(writer, reader, reply, keep, head_only=method == "HEAD")

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def _resolve(self, rec: RecordedRequest, step: Step | None,
                       route: Route | None) -> Reply:
        if step is None or route is None:
            return self.unexpected_reply(rec, route)
        action = step.action
        if isinstance(action, Response | Fault):
            return action.reply(route.rng)
        try:
            result = action(rec)
            if inspect.isawaitable(result):
                result = await result
            return coerce_reply(result, f"{route.label} step {rec.step} result", route.rng)
        except Exception as exc:
            return self.handler_failed(rec, exc)

    async def _send(self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader,
                    reply: Reply, keep: bool, head_only: bool) -> bool:
        if reply.delay > 0:
            await asyncio.sleep(reply.delay)
        kind = reply.kind
        if kind == "response":
            if reply.status < 200 or reply.status in (204, 304):
                head_only = True  # these statuses have no body
            if any(n.lower() == "connection" and "close" in v.lower() for n, v in reply.headers):
                keep = False  # the script asked for Connection: close
            head = self._head(reply.status, reply.headers, len(reply.body), keep)
            if reply.dribble is None or head_only or not reply.body:
                writer.write(head if head_only else head + reply.body)
                await writer.drain()
            else:
                writer.write(head)
                await writer.drain()
                n = reply.dribble.chunks
                size = -(-len(reply.body) // n)
                step_s = reply.dribble.over / n
                start = time.monotonic()
                for k in range(n):
                    await _sleep_until(start + (k + 1) * step_s)
                    writer.write(reply.body[k * size:(k + 1) * size])
                    await writer.drain()
            return keep
        if kind == "empty":
            writer.close()
        elif kind == "garbage":
            writer.write(reply.body)
            await writer.drain()
            writer.close()
        elif kind == "malformed":
            status_line = (f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, '')}\r\n"
                           "Content-Type: application/json\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n")
            writer.write(status_line.encode() + b"4\r\n{\"ok\r\nnot-a-chunk-size\r\n\r\n")
            await writer.drain()
            writer.close()
        elif kind == "truncated":
            writer.write(self._head(reply.status, reply.headers, TRUNCATED_LENGTH, False)
                         + reply.body)
            await writer.drain()
            writer.close()
        elif kind == "reset":
            sock: socket.socket = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif kind == "hang":
            while await reader.read(65536):
                pass  # hold the connection until the client hangs up
            writer.close()
        return False

    @staticmethod
    def _head(status: int, headers: tuple[tuple[str, str], ...], length: int,
              keep: bool) -> bytes:
        names = {n.lower() for n, _ in headers}
        out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        out.extend(f"{n}: {v}" for n, v in headers)
        if "content-length" not in names and "transfer-encoding" not in names \
                and status >= 200 and status not in (204, 304):
            out.append(f"Content-Length: {length}")
        if "connection" not in names:
            out.append("Connection: keep-alive" if keep else "Connection: close")
        return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")

    async def _write_simple(self, writer: asyncio.StreamWriter, status: int, text: str) -> None:
        body = text.encode()
        writer.write(self._head(status, (("Content-Type", "text/plain"),), len(body), False)
                     + body)
        await writer.drain()


async def _sleep_until(deadline: float) -> None:
    left = deadline - time.monotonic()
    if left > 0:
        await asyncio.sleep(left)
