"""The respx twin of the fake HTTP backend: the same scripts, no sockets.

:class:`HttpMock` answers ``httpx`` requests to its ``url`` in-process through
respx, with the script vocabulary of :mod:`http_script`. Socket-level faults
raise what ``httpx`` raises against the real server for them (checked by the
test suite against :class:`~pytest_resilience.services.http_backend.HttpBackend`):

========== ==============================================================
fault      raises
========== ==============================================================
empty      ``httpx.RemoteProtocolError`` (server disconnected ...)
malformed  headers arrive, then ``httpx.RemoteProtocolError`` while reading the body
truncated  headers arrive, then ``httpx.RemoteProtocolError`` (incomplete body)
garbage    ``httpx.RemoteProtocolError`` (illegal status line)
reset      ``httpx.ReadError`` (connection reset by peer)
hang       ``httpx.ReadTimeout`` after the client's read timeout (or waits forever)
========== ==============================================================

A delay longer than the client's read timeout also ends in ``httpx.ReadTimeout``
after that timeout, as it would on a socket. Delays sleep with ``time.sleep``
(sync clients) or ``asyncio.sleep`` (async clients), looked up at call time,
so a virtual clock that patches them fast-forwards the twin.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pytest_resilience.errors import ConfigError
from pytest_resilience.services.http_routes import BackendCore, RecordedRequest, Route
from pytest_resilience.services.http_script import (
    TRUNCATED_LENGTH,
    Fault,
    Reply,
    Response,
    Step,
    coerce_reply,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["HttpMock", "RespxHub"]

_in_async: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pytest_resilience_respx_async", default=False)
_hosts = itertools.count(1)
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class RespxHub:
    """One respx router for a test: routes requests to each :class:`HttpMock` by host.

    Requests to loopback hosts pass through to the network, so a real
    ``http_backend`` (or a proxy in front of it) keeps working beside the mocks;
    requests to any other host are left to other respx routers (a test's own
    ``respx_mock``), or fail as "not mocked" like respx does.
    """

    def __init__(self) -> None:
        try:
            import respx
        except ImportError:
            raise ConfigError(
                "http_mock (and http_backends(mode='respx')) needs respx, which is not "
                "installed: pip install 'pytest-resilience[respx]' (or use http_backend, "
                "a real server on loopback, which needs nothing more)") from None

        class _Router(respx.MockRouter):
            async def aresolve(self, request: Any) -> Any:
                token = _in_async.set(True)
                try:
                    return await super().aresolve(request)
                finally:
                    _in_async.reset(token)

        self._mocks: dict[str, HttpMock] = {}
        self.router = _Router(assert_all_called=False, assert_all_mocked=True)
        self.router.route().mock(side_effect=self._side_effect)
        self._started = False

    def add(self, mock: HttpMock) -> None:
        self._mocks[mock.host] = mock
        if not self._started:
            self.router.start()
            self._started = True

    def remove(self, mock: HttpMock) -> None:
        self._mocks.pop(mock.host, None)
        if not self._mocks and self._started:
            self._started = False
            self.router.stop(quiet=True)

    def _side_effect(self, request: httpx.Request) -> Any:
        host = request.url.host
        mock = self._mocks.get(host)
        if mock is not None and request.url.port in (None, 80):
            return mock.handle(request, is_async=_in_async.get())
        if host in _LOOPBACK:
            return request  # pass through: a real http_backend, a proxy, a local server
        return None  # not ours: another respx router may answer, else respx's "not mocked"


class HttpMock(BackendCore):
    """A scripted backend for in-process ``httpx`` clients, at :attr:`url`."""

    kind = "http_mock"

    def __init__(self, *, routes: Mapping[str, object] | None = None, seed: int | str = 0,
                 name: str | None = None, assert_all_used: bool = True,
                 assert_all_expected: bool = True, hub: RespxHub | None = None) -> None:
        super().__init__(routes=routes, seed=seed, name=name, assert_all_used=assert_all_used,
                         assert_all_expected=assert_all_expected)
        label = re.sub(r"[^a-z0-9-]+", "-", (name or f"mock{next(_hosts)}").lower()).strip("-")
        self.host = f"{label or 'mock'}.http-mock.test"
        self._hub = hub
        self._own_hub = hub is None
        self._running = False

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://mock1.http-mock.test`` (only ``httpx`` reaches it)."""
        return f"http://{self.host}"

    def url_for(self, path: str) -> str:
        return self.url + path

    def start(self) -> HttpMock:
        if not self._running:
            if self._hub is None:
                self._hub = RespxHub()
            self._hub.add(self)
            self._running = True
        return self

    def close(self) -> None:
        if self._running and self._hub is not None:
            self._running = False
            self._hub.remove(self)
            if self._own_hub:
                self._hub = None

    def __enter__(self) -> HttpMock:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def via_proxy(self, name: str | None = None) -> Any:
        raise ConfigError("via_proxy() needs a real server: use http_backend, not the respx "
                          "twin (there is no socket to put a proxy in front of)")

    def __repr__(self) -> str:
        return f"<HttpMock {self.url} routes={[r.label for r in self.routes]}>"

    # ---------------------------------------------------------------- answering

    def handle(self, request: httpx.Request, *, is_async: bool) -> Any:
        arrived = time.monotonic()
        url = request.url
        rec, step, route = self.dispatch(
            request.method, url.path, url.query.decode("ascii", "replace"),
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
            request.content, arrived, 0, "HTTP/1.1")
        read_timeout = (request.extensions.get("timeout") or {}).get("read")
        if is_async:
            return self._answer_async(request, rec, step, route, read_timeout)
        return self._answer_sync(request, rec, step, route, read_timeout)

    def _resolve(self, rec: RecordedRequest, step: Step | None, route: Route | None
                 ) -> Reply | _Pending:
        if step is None or route is None:
            return self.unexpected_reply(rec, route)
        action = step.action
        if isinstance(action, Response | Fault):
            return action.reply(route.rng)
        where = f"{route.label} step {rec.step} result"
        try:
            result = action(rec)
            if inspect.isawaitable(result):
                return _Pending(self, rec, where, route, result)
            return coerce_reply(result, where, route.rng)
        except Exception as exc:
            return self.handler_failed(rec, exc)

    def _answer_sync(self, request: httpx.Request, rec: RecordedRequest, step: Step | None,
                     route: Route | None, read_timeout: float | None) -> httpx.Response:
        reply = self._resolve(rec, step, route)
        if not isinstance(reply, Reply):
            reply.close()
            reply = self.handler_failed(rec, ConfigError(
                "an async callable step cannot answer a sync httpx client"))
        if reply.delay > 0:
            if read_timeout is not None and reply.delay > read_timeout:
                time.sleep(read_timeout)
                raise _timeout(request, False)
            time.sleep(reply.delay)
        if reply.kind == "hang":
            if read_timeout is None:
                threading.Event().wait()  # as on a socket: forever
            time.sleep(read_timeout)  # type: ignore[arg-type]
            raise _timeout(request, False)
        return _response(request, reply, read_timeout, False)

    async def _answer_async(self, request: httpx.Request, rec: RecordedRequest,
                            step: Step | None, route: Route | None,
                            read_timeout: float | None) -> httpx.Response:
        resolved = self._resolve(rec, step, route)
        reply = resolved if isinstance(resolved, Reply) else await resolved.finish()
        if reply.delay > 0:
            if read_timeout is not None and reply.delay > read_timeout:
                await asyncio.sleep(read_timeout)
                raise _timeout(request, True)
            await asyncio.sleep(reply.delay)
        if reply.kind == "hang":
            if read_timeout is None:
                await asyncio.get_running_loop().create_future()  # as on a socket: forever
            await asyncio.sleep(read_timeout)  # type: ignore[arg-type]
            raise _timeout(request, True)
        return _response(request, reply, read_timeout, True)


class _Pending:
    """An async callable step's awaitable, finished on the client's event loop."""

    def __init__(self, mock: HttpMock, rec: RecordedRequest, where: str, route: Route,
                 awaitable: Awaitable[object]) -> None:
        self._mock, self._rec, self._where, self._route = mock, rec, where, route
        self._awaitable = awaitable

    async def finish(self) -> Reply:
        try:
            return coerce_reply(await self._awaitable, self._where, self._route.rng)
        except Exception as exc:
            return self._mock.handler_failed(self._rec, exc)

    def close(self) -> None:
        close = getattr(self._awaitable, "close", None)
        if close is not None:
            close()


def _timeout(request: httpx.Request, is_async: bool) -> Exception:
    import httpx

    # httpx's async backend (anyio) raises these with an empty message.
    return httpx.ReadTimeout("" if is_async else "timed out", request=request)


def _response(request: httpx.Request, reply: Reply, read_timeout: float | None,
              is_async: bool) -> httpx.Response:
    import httpx

    kind = reply.kind
    if kind == "empty":
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.",
                                        request=request)
    if kind == "garbage":
        raise httpx.RemoteProtocolError(f"illegal status line: {bytearray(reply.body[:30])!r}",
                                        request=request)
    if kind == "reset":
        raise httpx.ReadError("" if is_async else "[Errno 104] Connection reset by peer",
                              request=request)
    head_only = request.method == "HEAD"
    if kind == "malformed":
        error = httpx.RemoteProtocolError(
            "illegal chunk header: bytearray(b'not-a-chunk-size\\r\\n')", request=request)
        return httpx.Response(reply.status, headers=[*reply.headers,
                                                     ("Transfer-Encoding", "chunked")],
                              stream=_Stream(request, [b'{"ok'], 0.0, error, read_timeout),
                              request=request)
    if kind == "truncated":
        error = httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body (received "
            f"{len(reply.body)} bytes, expected {TRUNCATED_LENGTH})", request=request)
        return httpx.Response(reply.status,
                              headers=[*reply.headers, ("Content-Length", str(TRUNCATED_LENGTH))],
                              stream=_Stream(request, [reply.body], 0.0, error, read_timeout),
                              request=request)
    headers = list(reply.headers)
    if not any(n.lower() == "content-length" for n, _ in headers):
        headers.append(("Content-Length", str(len(reply.body))))
    if head_only or not reply.body:
        return httpx.Response(reply.status, headers=headers, request=request)
    if reply.dribble is None:
        return httpx.Response(reply.status, headers=headers, content=reply.body,
                              request=request)
    n = reply.dribble.chunks
    size = -(-len(reply.body) // n)
    chunks = [reply.body[k * size:(k + 1) * size] for k in range(n)]
    return httpx.Response(reply.status, headers=headers,
                          stream=_Stream(request, chunks, reply.dribble.over / n, None,
                                         read_timeout), request=request)


class _StreamBase:
    """A response body that arrives in chunks ``gap`` seconds apart, then maybe fails.

    Both a sync and an async stream: it sleeps the way the client waits.
    """

    def __init__(self, request: httpx.Request, chunks: list[bytes], gap: float,
                 error: Exception | None, read_timeout: float | None) -> None:
        self._request = request
        self._chunks = chunks
        self._gap = gap
        self._error = error
        self._read_timeout = read_timeout

    def _too_slow(self) -> bool:
        return self._read_timeout is not None and self._gap > self._read_timeout

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            if self._gap > 0:
                if self._too_slow():
                    time.sleep(self._read_timeout)  # type: ignore[arg-type]
                    raise _timeout(self._request, False)
                time.sleep(self._gap)
            yield chunk
        if self._error is not None:
            raise self._error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            if self._gap > 0:
                if self._too_slow():
                    await asyncio.sleep(self._read_timeout)  # type: ignore[arg-type]
                    raise _timeout(self._request, True)
                await asyncio.sleep(self._gap)
            yield chunk
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


_stream_class: list[type[_StreamBase]] = []


def _Stream(request: httpx.Request, chunks: list[bytes], gap: float,
            error: Exception | None, read_timeout: float | None) -> Any:
    """A :class:`_StreamBase` that is also an ``httpx`` sync and async byte stream."""
    if not _stream_class:
        import httpx

        class Stream(_StreamBase, httpx.SyncByteStream, httpx.AsyncByteStream):
            pass

        _stream_class.append(Stream)
    return _stream_class[0](request, chunks, gap, error, read_timeout)
