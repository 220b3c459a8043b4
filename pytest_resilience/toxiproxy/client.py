"""A typed client for the Toxiproxy v2 HTTP API: :class:`Client` and :class:`AsyncClient`.

It speaks the wire format of toxiproxy-server 2.x exactly (see the Toxiproxy
reference), so it works against a real toxiproxy-server as well as against the
built-in engine of ``pytest_resilience.toxiproxy``. The built-in engine's
event log (``/x-resilience/...``) is exposed as optional extras that raise
:class:`ExtensionUnsupported` against a real server.

Faults read like what they do::

    with Client("http://127.0.0.1:8474") as toxiproxy:
        proxy = toxiproxy.create_proxy("pg", upstream="127.0.0.1:5432")
        with proxy.latency(500):          # added now, removed at the end of the block
            ...
        cut = proxy.down()                # plain call: stays until removed
        cut.remove()

Arguments are validated here, before anything is sent: a negative delay, an
unknown stream or toxic type raises :class:`~pytest_resilience.errors.ConfigError`
naming the argument (the real server would silently accept, or crash on, them).
Server errors become :class:`ToxiproxyError` subclasses carrying the server's
message and HTTP status. There is no global state: every client holds its own
connection pool and must be closed (it is a context manager).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast
from urllib.parse import quote

from pytest_resilience import faults
from pytest_resilience.errors import ConfigError, ResilienceError, ServiceError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "STREAMS",
    "TOXIC_TYPES",
    "AlreadyExists",
    "AsyncClient",
    "AsyncDown",
    "AsyncFailFirst",
    "AsyncProxy",
    "AsyncToxic",
    "BadRequest",
    "Client",
    "Conflict",
    "Connection",
    "Down",
    "Event",
    "ExtensionUnsupported",
    "FailFirst",
    "FailFirstState",
    "NeedsBuiltinEngine",
    "NotFound",
    "Proxy",
    "ProxySpec",
    "ServerError",
    "Toxic",
    "ToxiproxyError",
    "ToxiproxyUnreachable",
    "validate_toxic",
]

DEFAULT_URL = "http://127.0.0.1:8474"
USER_AGENT = "pytest-resilience-toxiproxy-client"
#: The directions a toxic can act on (from :data:`pytest_resilience.faults.STREAM`).
STREAMS = faults.STREAM.choices


class _ToxicTypes(Mapping[str, tuple[str, ...]]):
    """Toxic type -> its attribute names: a live view of :mod:`pytest_resilience.faults`
    (a toxic registered there is known here at once)."""

    def __getitem__(self, name: str) -> tuple[str, ...]:
        fault = faults.NETWORK_FAULTS.get(name)
        if fault is None or not fault.toxic:
            raise KeyError(name)
        return fault.attribute_names

    def __iter__(self) -> Iterator[str]:
        return iter(faults.toxic_types())

    def __len__(self) -> int:
        return len(faults.toxic_types())

    def __repr__(self) -> str:
        return repr(dict(self))


#: Every toxic type of Toxiproxy 2.x and its attributes (all integers), from
#: :data:`pytest_resilience.faults.NETWORK_FAULTS`.
TOXIC_TYPES: Mapping[str, tuple[str, ...]] = _ToxicTypes()

_EXTENSION_PREFIX = "/x-resilience"
_C = TypeVar("_C", bound=type)
_F = TypeVar("_F", bound=Callable[..., Any])


# ------------------------------------------------------------------ user-facing errors


def _user_error(exc: BaseException) -> bool:
    """A misuse of the API or an answer of the server: the message is all a user needs.
    A service failure (unreachable server) keeps its cause and traceback."""
    return isinstance(exc, ResilienceError) and not isinstance(exc, ServiceError)


def user_facing(cls: _C) -> _C:
    """Wrap the public methods of ``cls`` (and ``__call__``) with :func:`user_facing_call`."""
    for attr, member in list(vars(cls).items()):
        if (attr.startswith("_") and attr != "__call__") or not inspect.isfunction(member):
            continue
        setattr(cls, attr, user_facing_call(member))
    return cls


def user_facing_call(fn: _F) -> _F:
    """``fn``, but a :func:`_user_error` raised anywhere below it reaches the caller with
    the plugin's frames cut off (and the wrapper itself hidden from pytest): the user
    sees their own line and the one message, not the validation code behind it."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            try:
                return await fn(*args, **kwargs)
            except ResilienceError as exc:
                if not _user_error(exc):
                    raise
                raise exc.with_traceback(None) from None

        return cast(_F, run_async)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        try:
            return fn(*args, **kwargs)
        except ResilienceError as exc:
            if not _user_error(exc):
                raise
            raise exc.with_traceback(None) from None

    return cast(_F, run)


# --------------------------------------------------------------------------- errors


class ToxiproxyError(ResilienceError):
    """The Toxiproxy API answered with an error.

    ``status`` is the HTTP status, ``message`` the server's own error text,
    ``method`` and ``url`` the request that failed.
    """

    def __init__(self, message: str, *, status: int, method: str, url: str) -> None:
        self.status = status
        self.message = message
        self.method = method
        self.url = url
        super().__init__(f"{method} {url} -> {status}: {message}")


class BadRequest(ToxiproxyError):
    """400: the server rejected the request body."""


class NotFound(ToxiproxyError):
    """404: no such proxy or toxic (or no such endpoint)."""


class Conflict(ToxiproxyError):
    """409: a proxy or toxic of that name already exists."""


AlreadyExists = Conflict


class ServerError(ToxiproxyError):
    """5xx: the server failed, e.g. it could not bind the listen address."""


class ExtensionUnsupported(ToxiproxyError):
    """The server lacks a pytest-resilience extension (it is a real toxiproxy-server)."""


class NeedsBuiltinEngine(ExtensionUnsupported, ConfigError):
    """A fault only the built-in engine runs (``fail_first``) was asked of another server
    (a real toxiproxy-server answers 404 to its ``/x-resilience/...`` endpoint). Both an
    :class:`ExtensionUnsupported` and a :class:`~pytest_resilience.errors.ConfigError`."""


class ToxiproxyUnreachable(ToxiproxyError, ServiceError):
    """The Toxiproxy API could not be reached at all."""

    def __init__(self, url: str, reason: str) -> None:
        ResilienceError.__init__(
            self,
            f"cannot reach the Toxiproxy API at {url}: {reason} "
            "(is the server running and is the URL right?)",
        )
        self.status = 0
        self.message = reason
        self.method = ""
        self.url = url


def _duplicate_proxy(exc: Conflict, name: str) -> Conflict:
    """The server's "proxy already exists", naming the proxy and the way out (``message``
    stays the server's own text)."""
    error = Conflict(exc.message, status=exc.status, method=exc.method, url=exc.url)
    error.args = (f"{exc}; a proxy named {name!r} already exists: give this one a different "
                  "name, or delete the other first",)
    return error


def _error_for(response: httpx.Response) -> ToxiproxyError:
    status = response.status_code
    text = response.text
    message = text.strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
    if not message:
        message = response.reason_phrase or "(empty response)"
    cls: type[ToxiproxyError]
    if status == 400:
        cls = BadRequest
    elif status == 404:
        cls = NotFound
    elif status == 409:
        cls = Conflict
    elif status >= 500:
        cls = ServerError
    else:
        cls = ToxiproxyError
    request = response.request
    return cls(message, status=status, method=request.method, url=str(request.url))


# --------------------------------------------------------------------------- validation


def _check_name(argument: str, value: object) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise ConfigError(f"{argument!r} must be a non-empty name without '/', got {value!r}")
    return value


def _check_address(argument: str, value: object, *, allow_empty_host: bool = True) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{argument!r} must be 'host:port', got {value!r}")
    host, _, port = value.rpartition(":")
    if not port.isdigit() or int(port) > 65535 or (not host and not allow_empty_host):
        raise ConfigError(f"{argument!r} must be 'host:port' with a port 0-65535, got {value!r}")
    return value


def _check_int(argument: str, value: object, *, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what}: {argument!r} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{what}: {argument!r} must be >= {minimum}, got {value!r}")
    return value


def _check_stream(value: object) -> str:
    stream: str = faults.STREAM.check(value)
    return stream


def _check_toxicity(value: object) -> float:
    toxicity: float = faults.TOXICITY.check(value)
    return toxicity


def _check_type(value: object) -> str:
    types = faults.toxic_types()
    if value == "fail_first":
        raise ConfigError(
            "'fail_first' is not a Toxiproxy toxic but a fault of the built-in engine: use "
            "proxy.fail_first(count, mode='reset'|'close')"
        )
    if not isinstance(value, str) or value not in types:
        raise ConfigError(
            f"'type' must be one of {', '.join(types)} (a toxic type), got {value!r}"
        )
    return value


def _fault_args(type: str, **arguments: tuple[str, object]) -> dict[str, int]:
    """Attributes for a typed fault helper: ``attribute=(argument name, value)``, checked by
    the rules of :mod:`pytest_resilience.faults`; messages name the helper's argument."""
    values = {attribute: value for attribute, (_, value) in arguments.items()}
    shown = {attribute: repr(argument) for attribute, (argument, _) in arguments.items()}
    return faults.check_attributes(type, values, options=False, shown=shown)


def validate_toxic(
    type: str,
    attributes: Mapping[str, int] | None = None,
    *,
    stream: str = "downstream",
    toxicity: float = 1.0,
    name: str | None = None,
) -> dict[str, Any]:
    """Check a toxic's fields and return the JSON body for ``POST .../toxics``.

    Raises :class:`ConfigError` naming the bad argument. The names and rules
    come from :mod:`pytest_resilience.faults`; they catch the values that crash
    a real toxiproxy-server (negative bandwidth, slicer sizes).
    """
    type = _check_type(type)
    stream = _check_stream(stream)
    toxicity = _check_toxicity(toxicity)
    attrs = faults.check_attributes(type, dict(attributes or {}), options=False)
    body: dict[str, Any] = {
        "type": type,
        "stream": stream,
        "toxicity": toxicity,
        "attributes": attrs,
    }
    if name is not None:
        body["name"] = faults.TOXIC_NAME.check(name)
    return body


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ProxySpec:
    """A proxy to create with :meth:`Client.populate`."""

    name: str
    upstream: str
    listen: str = "127.0.0.1:0"
    enabled: bool = True

    def to_json(self, server_name: str) -> dict[str, Any]:
        _check_address("upstream", self.upstream)
        _check_address("listen", self.listen)
        return {
            "name": server_name,
            "upstream": self.upstream,
            "listen": self.listen,
            "enabled": self.enabled,
        }


@dataclass(frozen=True)
class Event:
    """One entry of the built-in engine's event log (``GET /x-resilience/events``).

    ``seq`` orders events engine-wide; ``time`` is the engine's ``time.monotonic()``
    (system-wide on Linux, so comparable with the test's own clock); ``kind`` says
    what happened (``accepted``, ``upstream_connected``, ``first_byte``,
    ``toxic_applied``, ``toxic_fired``, ``closed``...); ``conn`` is the engine's
    connection id; ``data`` holds the other fields as the engine sent them.
    """

    seq: int
    time: float
    kind: str
    proxy: str | None
    conn: int | None
    data: dict[str, Any]


@dataclass(frozen=True)
class Connection:
    """A connection open through a proxy of the built-in engine
    (``GET /x-resilience/connections``)."""

    proxy: str
    conn: int
    client: str
    bytes_up: int
    bytes_down: int
    opened_at: float
    data: dict[str, Any]


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    return host, int(port) if port.isdigit() else 0


@dataclass(eq=False)
class _ToxicData:
    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, int]
    proxy: str


@user_facing
@dataclass(eq=False)
class Toxic(_ToxicData):
    """A toxic on a proxy. A context manager: leaving the block removes it."""

    client: Client = field(repr=False, kw_only=True)

    def remove(self) -> None:
        """Delete the toxic. Idempotent: removing a toxic that is gone is not an error."""
        with contextlib.suppress(NotFound):
            self.client.delete_toxic(self.proxy, self.name)

    def update(
        self, attributes: Mapping[str, int] | None = None, *, toxicity: float | None = None
    ) -> Toxic:
        """Change some attributes (merged) and/or the toxicity; returns ``self``, refreshed."""
        new = self.client.update_toxic(self.proxy, self.name, attributes=attributes,
                                       toxicity=toxicity)
        self.attributes, self.toxicity = new.attributes, new.toxicity
        return self

    def __enter__(self) -> Toxic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@user_facing
@dataclass(eq=False)
class AsyncToxic(_ToxicData):
    """A toxic on a proxy, for :class:`AsyncClient`. An async context manager."""

    client: AsyncClient = field(repr=False, kw_only=True)

    async def remove(self) -> None:
        """Delete the toxic. Idempotent."""
        with contextlib.suppress(NotFound):
            await self.client.delete_toxic(self.proxy, self.name)

    async def update(
        self, attributes: Mapping[str, int] | None = None, *, toxicity: float | None = None
    ) -> AsyncToxic:
        """Change some attributes (merged) and/or the toxicity; returns ``self``, refreshed."""
        new = await self.client.update_toxic(self.proxy, self.name, attributes=attributes,
                                             toxicity=toxicity)
        self.attributes, self.toxicity = new.attributes, new.toxicity
        return self

    async def __aenter__(self) -> AsyncToxic:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.remove()


@dataclass(frozen=True)
class FailFirstState:
    """The ``fail_first`` fault of a proxy (``GET /x-resilience/proxies/{p}/fail_first``).

    ``failed``: connections failed by this arming so far; ``remaining``: how many more
    will fail; ``armed``: False once disarmed (the numbers are then those it ended with).
    """

    proxy: str
    armed: bool
    count: int
    mode: str | None
    failed: int
    remaining: int


def _fail_first_args(count: int, mode: str) -> dict[str, Any]:
    """The ``fail_first`` body, checked by :mod:`pytest_resilience.faults`."""
    return faults.check_attributes("fail_first", {"count": count, "mode": mode},
                                   options=False, label="fail_first")


@user_facing
class FailFirst:
    """An armed ``fail_first`` fault (built-in engine only): the next ``count`` new
    connections to the proxy fail, later ones pass. A context manager: leaving the block
    disarms it. :meth:`state` tells how many have failed so far."""

    def __init__(self, proxy: Proxy, state: FailFirstState) -> None:
        self.proxy = proxy
        #: the state when it was armed
        self.armed = state

    def __repr__(self) -> str:
        return (f"FailFirst(proxy={self.proxy.name!r}, count={self.armed.count}, "
                f"mode={self.armed.mode!r})")

    def state(self) -> FailFirstState:
        """The current state (``failed``, ``remaining``...), read from the engine."""
        return self.proxy.client.fail_first_state(self.proxy.name)

    def failed(self) -> int:
        """How many connections this arming has failed so far."""
        return self.state().failed

    def disarm(self) -> FailFirstState | None:
        """Disarm: new connections pass again. Returns the state it ended with (``failed``
        counts this arming's failures); idempotent; a deleted proxy is ignored (``None``)."""
        try:
            return self.proxy.client.disarm_fail_first(self.proxy.name)
        except NotFound:
            return None

    def remove(self) -> None:
        """Disarm (as :meth:`disarm`, like ``Toxic.remove()``)."""
        self.disarm()

    def __enter__(self) -> FailFirst:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@user_facing
class AsyncFailFirst:
    """An armed ``fail_first`` fault, for :class:`AsyncProxy` (awaited methods)."""

    def __init__(self, proxy: AsyncProxy, state: FailFirstState) -> None:
        self.proxy = proxy
        self.armed = state

    def __repr__(self) -> str:
        return (f"AsyncFailFirst(proxy={self.proxy.name!r}, count={self.armed.count}, "
                f"mode={self.armed.mode!r})")

    async def state(self) -> FailFirstState:
        return await self.proxy.client.fail_first_state(self.proxy.name)

    async def failed(self) -> int:
        return (await self.state()).failed

    async def disarm(self) -> FailFirstState | None:
        """Disarm; returns the state it ended with. Idempotent; a deleted proxy is ignored."""
        try:
            return await self.proxy.client.disarm_fail_first(self.proxy.name)
        except NotFound:
            return None

    async def remove(self) -> None:
        await self.disarm()


@user_facing
class Down:
    """A disabled proxy (connections refused, live ones closed). ``remove()`` re-enables it."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def remove(self) -> None:
        """Re-enable the proxy (on the same port). Idempotent; a deleted proxy is ignored."""
        with contextlib.suppress(NotFound):
            self.proxy.enable()

    def __enter__(self) -> Down:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@user_facing
class AsyncDown:
    """A disabled proxy, for :class:`AsyncProxy`. ``await remove()`` re-enables it."""

    def __init__(self, proxy: AsyncProxy) -> None:
        self.proxy = proxy

    async def remove(self) -> None:
        """Re-enable the proxy. Idempotent; a deleted proxy is ignored."""
        with contextlib.suppress(NotFound):
            await self.proxy.enable()


_T = TypeVar("_T")


class _AsyncFault(Generic[_T]):
    """Awaitable (``t = await proxy.latency(100)``) and async context manager
    (``async with proxy.latency(100): ...``) around one fault."""

    def __init__(self, apply: Callable[[], Awaitable[_T]],
                 remove: Callable[[_T], Awaitable[None]]) -> None:
        self._apply = apply
        self._remove = remove
        self._applied: _T | None = None

    def __await__(self) -> Generator[Any, None, _T]:
        return self._run().__await__()

    async def _run(self) -> _T:
        return await self._apply()

    async def __aenter__(self) -> _T:
        self._applied = await self._apply()
        return self._applied

    async def __aexit__(self, *exc: object) -> None:
        if self._applied is not None:
            applied, self._applied = self._applied, None
            await self._remove(applied)


class _FaultArgs:
    """Attribute building shared by the sync and async fault helpers: the helpers' argument
    names mapped to the attributes of :mod:`pytest_resilience.faults`, which checks them."""

    @staticmethod
    def latency(ms: int, jitter: int) -> dict[str, int]:
        return _fault_args("latency", latency=("ms", ms), jitter=("jitter", jitter))

    @staticmethod
    def bandwidth(rate: int) -> dict[str, int]:
        return _fault_args("bandwidth", rate=("rate", rate))

    @staticmethod
    def slow_close(delay: int) -> dict[str, int]:
        return _fault_args("slow_close", delay=("delay", delay))

    @staticmethod
    def timeout(ms: int) -> dict[str, int]:
        return _fault_args("timeout", timeout=("ms", ms))

    @staticmethod
    def reset_peer(ms: int) -> dict[str, int]:
        return _fault_args("reset_peer", timeout=("ms", ms))

    @staticmethod
    def slicer(average_size: int, size_variation: int, delay_us: int) -> dict[str, int]:
        return _fault_args("slicer", average_size=("average_size", average_size),
                           size_variation=("size_variation", size_variation),
                           delay=("delay_us", delay_us))

    @staticmethod
    def limit_data(nbytes: int) -> dict[str, int]:
        return _fault_args("limit_data", bytes=("bytes", nbytes))


@dataclass(eq=False)
class _ProxyData:
    name: str
    listen: str
    upstream: str
    enabled: bool

    @property
    def host(self) -> str:
        """The host the proxy listens on (``127.0.0.1``)."""
        return _split_address(self.listen)[0]

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        return _split_address(self.listen)[1]


@user_facing
@dataclass(eq=False)
class Proxy(_ProxyData):
    """A proxy, bound to the :class:`Client` that fetched it.

    ``toxics`` is a snapshot taken when the proxy was fetched; call
    :meth:`list_toxics` for the current ones. Each fault helper applies its
    fault at once and returns a handle that is also a context manager::

        with proxy.latency(200, jitter=20): ...     # removed at the end of the block
        toxic = proxy.timeout(500); ...; toxic.remove()
    """

    toxics: list[Toxic] = field(default_factory=list)
    client: Client = field(repr=False, kw_only=True)
    #: :meth:`events` starts after this engine sequence number. ``proxy_for``, ``pg_proxy``
    #: and ``via_proxy()`` set it to :meth:`Client.last_event_seq` at creation, so an
    #: earlier test's proxy of the same name does not show up; 0 otherwise.
    events_since: int = field(default=0, repr=False, kw_only=True)

    # -- state
    def refresh(self) -> Proxy:
        """Re-read the proxy from the server; returns ``self``."""
        self._copy(self.client.get_proxy(self.name))
        return self

    def _copy(self, other: Proxy) -> None:
        self.listen, self.upstream, self.enabled = other.listen, other.upstream, other.enabled
        self.toxics = other.toxics

    def update(self, *, listen: str | None = None, upstream: str | None = None,
               enabled: bool | None = None) -> Proxy:
        """PATCH the proxy; returns ``self``, refreshed."""
        self._copy(self.client.update_proxy(self.name, listen=listen, upstream=upstream,
                                            enabled=enabled))
        return self

    def enable(self) -> Proxy:
        return self.update(enabled=True)

    def disable(self) -> Proxy:
        return self.update(enabled=False)

    def delete(self) -> None:
        """Delete the proxy: its listener and every live connection close."""
        self.client.delete_proxy(self.name)

    def list_toxics(self) -> list[Toxic]:
        return self.client.list_toxics(self.name)

    def get_toxic(self, name: str) -> Toxic:
        return self.client.get_toxic(self.name, name)

    def add_toxic(self, type: str, attributes: Mapping[str, int] | None = None, *,
                  stream: str = "downstream", toxicity: float = 1.0,
                  name: str | None = None) -> Toxic:
        return self.client.add_toxic(self.name, type, attributes, stream=stream,
                                     toxicity=toxicity, name=name)

    def remove_toxics(self) -> None:
        """Remove every toxic of this proxy and re-enable it."""
        for toxic in self.list_toxics():
            toxic.remove()
        if not self.enabled or not self.refresh().enabled:
            self.enable()

    def events(self, since: int = 0) -> list[Event]:
        """This proxy's entries of the built-in engine's event log (not on a real server)
        after sequence number ``since``, and never from before :attr:`events_since` (the
        proxy's creation, for the fixtures' proxies). ``toxiproxy.events(proxy=name)``
        returns the name's whole history."""
        since = _check_int("since", since, what="events")
        return self.client.events(proxy=self.name, since=max(since, self.events_since))

    # -- faults
    def down(self) -> Down:
        """Disable the proxy now: new connections are refused, live ones closed."""
        self.disable()
        return Down(self)

    def fail_first(self, count: int, mode: str = "reset") -> FailFirst:
        """Make the next ``count`` new connections fail at once, then let them through
        (toxiproxy#404). ``mode``: ``"reset"`` (RST: ``ConnectionResetError``) or
        ``"close"`` (closed without a byte: EOF). Arming again starts a new count.
        Built-in engine only: :class:`NeedsBuiltinEngine` (a ``ConfigError``) elsewhere."""
        return self.client.arm_fail_first(self.name, count, mode, handle=self)

    def fail_first_state(self) -> FailFirstState:
        """The proxy's ``fail_first`` state (built-in engine only)."""
        return self.client.fail_first_state(self.name)

    def latency(self, ms: int, jitter: int = 0, *, stream: str = "downstream",
                toxicity: float = 1.0, name: str | None = None) -> Toxic:
        """Delay every chunk by ``ms`` ± ``jitter`` milliseconds."""
        return self.add_toxic("latency", _FaultArgs.latency(ms, jitter), stream=stream,
                              toxicity=toxicity, name=name)

    def bandwidth(self, rate: int, *, stream: str = "downstream", toxicity: float = 1.0,
                  name: str | None = None) -> Toxic:
        """Limit the rate to ``rate`` KB/s (0 stalls the stream)."""
        return self.add_toxic("bandwidth", _FaultArgs.bandwidth(rate), stream=stream,
                              toxicity=toxicity, name=name)

    def slow_close(self, delay: int, *, stream: str = "downstream", toxicity: float = 1.0,
                   name: str | None = None) -> Toxic:
        """Hold back the close of the connection by ``delay`` ms."""
        return self.add_toxic("slow_close", _FaultArgs.slow_close(delay), stream=stream,
                              toxicity=toxicity, name=name)

    def timeout(self, ms: int, *, stream: str = "downstream", toxicity: float = 1.0,
                name: str | None = None) -> Toxic:
        """Drop all data; close the connection after ``ms`` idle ms (0: never)."""
        return self.add_toxic("timeout", _FaultArgs.timeout(ms), stream=stream,
                              toxicity=toxicity, name=name)

    def reset_peer(self, ms: int = 0, *, stream: str = "downstream", toxicity: float = 1.0,
                   name: str | None = None) -> Toxic:
        """On the first data, wait ``ms`` and reset the connection (RST for new connections)."""
        return self.add_toxic("reset_peer", _FaultArgs.reset_peer(ms), stream=stream,
                              toxicity=toxicity, name=name)

    def slicer(self, average_size: int, size_variation: int = 0, delay_us: int = 0, *,
               stream: str = "downstream", toxicity: float = 1.0,
               name: str | None = None) -> Toxic:
        """Slice data into pieces of about ``average_size`` bytes, ``delay_us`` µs apart."""
        return self.add_toxic("slicer",
                              _FaultArgs.slicer(average_size, size_variation, delay_us),
                              stream=stream, toxicity=toxicity, name=name)

    def limit_data(self, bytes: int, *, stream: str = "downstream", toxicity: float = 1.0,
                   name: str | None = None) -> Toxic:
        """Close the connection after ``bytes`` bytes have passed."""
        return self.add_toxic("limit_data", _FaultArgs.limit_data(bytes), stream=stream,
                              toxicity=toxicity, name=name)


@user_facing
@dataclass(eq=False)
class AsyncProxy(_ProxyData):
    """A proxy bound to an :class:`AsyncClient`. Fault helpers are awaitable and
    async context managers::

        async with proxy.latency(200): ...
        toxic = await proxy.timeout(500); ...; await toxic.remove()
    """

    toxics: list[AsyncToxic] = field(default_factory=list)
    client: AsyncClient = field(repr=False, kw_only=True)
    #: :meth:`events` starts after this engine sequence number (as :attr:`Proxy.events_since`;
    #: set it to ``await client.last_event_seq()`` to hide an earlier proxy of the name).
    events_since: int = field(default=0, repr=False, kw_only=True)

    def _copy(self, other: AsyncProxy) -> None:
        self.listen, self.upstream, self.enabled = other.listen, other.upstream, other.enabled
        self.toxics = other.toxics

    async def refresh(self) -> AsyncProxy:
        self._copy(await self.client.get_proxy(self.name))
        return self

    async def update(self, *, listen: str | None = None, upstream: str | None = None,
                     enabled: bool | None = None) -> AsyncProxy:
        self._copy(await self.client.update_proxy(self.name, listen=listen,
                                                  upstream=upstream, enabled=enabled))
        return self

    async def enable(self) -> AsyncProxy:
        return await self.update(enabled=True)

    async def disable(self) -> AsyncProxy:
        return await self.update(enabled=False)

    async def delete(self) -> None:
        await self.client.delete_proxy(self.name)

    async def list_toxics(self) -> list[AsyncToxic]:
        return await self.client.list_toxics(self.name)

    async def get_toxic(self, name: str) -> AsyncToxic:
        return await self.client.get_toxic(self.name, name)

    async def add_toxic(self, type: str, attributes: Mapping[str, int] | None = None, *,
                        stream: str = "downstream", toxicity: float = 1.0,
                        name: str | None = None) -> AsyncToxic:
        return await self.client.add_toxic(self.name, type, attributes, stream=stream,
                                           toxicity=toxicity, name=name)

    async def remove_toxics(self) -> None:
        """Remove every toxic of this proxy and re-enable it."""
        for toxic in await self.list_toxics():
            await toxic.remove()
        await self.enable()

    async def events(self, since: int = 0) -> list[Event]:
        """This proxy's entries of the built-in engine's event log after ``since``, never
        from before :attr:`events_since` (see :meth:`Proxy.events`)."""
        since = _check_int("since", since, what="events")
        return await self.client.events(proxy=self.name, since=max(since, self.events_since))

    # -- faults
    def down(self) -> _AsyncFault[AsyncDown]:
        """Disable the proxy (await it, or ``async with`` it)."""

        async def apply() -> AsyncDown:
            await self.disable()
            return AsyncDown(self)

        async def remove(down: AsyncDown) -> None:
            await down.remove()

        return _AsyncFault(apply, remove)

    def fail_first(self, count: int, mode: str = "reset") -> _AsyncFault[AsyncFailFirst]:
        """The next ``count`` new connections fail (see :meth:`Proxy.fail_first`); await
        it, or ``async with`` it (disarmed at the end of the block)."""
        _fail_first_args(count, mode)  # misuse raises at the call site, not at the await

        async def apply() -> AsyncFailFirst:
            return await self.client.arm_fail_first(self.name, count, mode, handle=self)

        async def remove(armed: AsyncFailFirst) -> None:
            await armed.remove()

        return _AsyncFault(apply, remove)

    async def fail_first_state(self) -> FailFirstState:
        return await self.client.fail_first_state(self.name)

    def _fault(self, type: str, attributes: dict[str, int], stream: str, toxicity: float,
               name: str | None) -> _AsyncFault[AsyncToxic]:
        # Validate now, so misuse raises at the call site, not at the await.
        validate_toxic(type, attributes, stream=stream, toxicity=toxicity, name=name)

        async def apply() -> AsyncToxic:
            return await self.add_toxic(type, attributes, stream=stream, toxicity=toxicity,
                                        name=name)

        async def remove(toxic: AsyncToxic) -> None:
            await toxic.remove()

        return _AsyncFault(apply, remove)

    def latency(self, ms: int, jitter: int = 0, *, stream: str = "downstream",
                toxicity: float = 1.0, name: str | None = None) -> _AsyncFault[AsyncToxic]:
        return self._fault("latency", _FaultArgs.latency(ms, jitter), stream, toxicity, name)

    def bandwidth(self, rate: int, *, stream: str = "downstream", toxicity: float = 1.0,
                  name: str | None = None) -> _AsyncFault[AsyncToxic]:
        return self._fault("bandwidth", _FaultArgs.bandwidth(rate), stream, toxicity, name)

    def slow_close(self, delay: int, *, stream: str = "downstream", toxicity: float = 1.0,
                   name: str | None = None) -> _AsyncFault[AsyncToxic]:
        return self._fault("slow_close", _FaultArgs.slow_close(delay), stream, toxicity, name)

    def timeout(self, ms: int, *, stream: str = "downstream", toxicity: float = 1.0,
                name: str | None = None) -> _AsyncFault[AsyncToxic]:
        return self._fault("timeout", _FaultArgs.timeout(ms), stream, toxicity, name)

    def reset_peer(self, ms: int = 0, *, stream: str = "downstream", toxicity: float = 1.0,
                   name: str | None = None) -> _AsyncFault[AsyncToxic]:
        return self._fault("reset_peer", _FaultArgs.reset_peer(ms), stream, toxicity, name)

    def slicer(self, average_size: int, size_variation: int = 0, delay_us: int = 0, *,
               stream: str = "downstream", toxicity: float = 1.0,
               name: str | None = None) -> _AsyncFault[AsyncToxic]:
        return self._fault("slicer", _FaultArgs.slicer(average_size, size_variation, delay_us),
                           stream, toxicity, name)

    def limit_data(self, bytes: int, *, stream: str = "downstream", toxicity: float = 1.0,
                   name: str | None = None) -> _AsyncFault[AsyncToxic]:
        return self._fault("limit_data", _FaultArgs.limit_data(bytes), stream, toxicity, name)


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class _Call(Generic[_T]):
    """One API call: what to send and how to read the answer (shared by both clients)."""

    method: str
    path: str
    parse: Callable[[httpx.Response], _T]
    body: Any = None
    extension: bool = False
    #: what the user called, for :class:`NeedsBuiltinEngine` (an engine-only fault)
    needs_engine: str = ""


def _quote(name: str) -> str:
    return quote(name, safe="")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ToxiproxyError(
            f"answer is not JSON ({exc}): {response.text[:200]!r}",
            status=response.status_code, method=response.request.method,
            url=str(response.request.url),
        ) from None


class _Base:
    """Name mapping, request building and answer parsing shared by both clients."""

    url: str
    namespace: str

    def _init_common(self, url: str, namespace: str) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"'url' must be an http(s) URL like {DEFAULT_URL}, got {url!r}")
        if namespace and ("/" in namespace or "." in namespace):
            raise ConfigError(f"'namespace' must not contain '/' or '.', got {namespace!r}")
        self.url = url.rstrip("/")
        self.namespace = namespace

    # -- namespacing: callers use local names; the server sees "<namespace>.<name>"
    def server_name(self, name: str) -> str:
        """The name the server knows a proxy by."""
        _check_name("name", name)
        return f"{self.namespace}.{name}" if self.namespace else name

    def _local_name(self, server_name: str) -> str | None:
        if not self.namespace:
            return server_name
        prefix = self.namespace + "."
        return server_name[len(prefix):] if server_name.startswith(prefix) else None

    def _proxy_path(self, name: str) -> str:
        return "/proxies/" + _quote(self.server_name(name))

    def _toxic_path(self, proxy: str, toxic: str) -> str:
        return f"{self._proxy_path(proxy)}/toxics/{_quote(_check_name('toxic', toxic))}"

    # -- calls
    @staticmethod
    def _version_call() -> _Call[str]:
        def parse(r: httpx.Response) -> str:
            try:
                body = r.json()
            except ValueError:
                return r.text.strip()  # before 2.7 the body was plain text
            if isinstance(body, dict) and isinstance(body.get("version"), str):
                return str(body["version"])
            return r.text.strip()

        return _Call("GET", "/version", parse)

    @staticmethod
    def _none(r: httpx.Response) -> None:
        return None

    @staticmethod
    def _metrics_call() -> _Call[str]:
        return _Call("GET", "/metrics", lambda r: r.text)

    @staticmethod
    def _proxy_body(upstream: str | None, listen: str | None,
                    enabled: bool | None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if upstream is not None:
            body["upstream"] = _check_address("upstream", upstream, allow_empty_host=False)
        if listen is not None:
            body["listen"] = _check_address("listen", listen)
        if enabled is not None:
            if not isinstance(enabled, bool):
                raise ConfigError(f"'enabled' must be True or False, got {enabled!r}")
            body["enabled"] = enabled
        return body

    @staticmethod
    def _toxic_update_body(attributes: Mapping[str, int] | None,
                           toxicity: float | None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if attributes is not None:
            for key, value in attributes.items():
                _check_int(key, value, what="toxic update")
            body["attributes"] = dict(attributes)
        if toxicity is not None:
            body["toxicity"] = _check_toxicity(toxicity)
        if not body:
            raise ConfigError("update_toxic needs 'attributes' and/or 'toxicity'")
        return body

    def _events_call(self, proxy: str | None, since: int) -> _Call[list[Event]]:
        _check_int("since", since, what="events")
        params = [f"since={since}"]
        if proxy is not None:
            params.append("proxy=" + _quote(self.server_name(proxy)))

        def parse(r: httpx.Response) -> list[Event]:
            body = _json(r)
            items = body.get("events", []) if isinstance(body, dict) else body
            events = [self._event(item) for item in items or []]
            if self.namespace:  # other namespaces' proxies are not this client's business
                prefix = self.namespace + "."
                events = [e for e, item in zip(events, items or [], strict=True)
                          if str(item.get("proxy", "")).startswith(prefix)]
            return events

        return _Call("GET", f"{_EXTENSION_PREFIX}/events?{'&'.join(params)}", parse,
                     extension=True)

    @staticmethod
    def _last_event_seq_call() -> _Call[int]:
        def parse(r: httpx.Response) -> int:
            body = _json(r)
            return int(body["events_next"]) - 1 if isinstance(body, dict) else 0

        return _Call("GET", f"{_EXTENSION_PREFIX}/info", parse, extension=True)

    def _event(self, item: dict[str, Any]) -> Event:
        proxy = item.get("proxy")
        local = self._local_name(proxy) if isinstance(proxy, str) else None
        data = {k: v for k, v in item.items()
                if k not in ("seq", "time", "kind", "proxy", "conn")}
        conn = item.get("conn")
        return Event(seq=int(item.get("seq", 0)), time=float(item.get("time", 0.0)),
                     kind=str(item.get("kind", "")),
                     proxy=local if local is not None else proxy,
                     conn=conn if isinstance(conn, int) else None, data=data)

    def _connections_call(self, proxy: str | None) -> _Call[list[Connection]]:
        path = f"{_EXTENSION_PREFIX}/connections"
        if proxy is not None:
            path += "?proxy=" + _quote(self.server_name(proxy))

        def parse(r: httpx.Response) -> list[Connection]:
            body = _json(r)
            out = []
            for server_name, items in (body.get("proxies") or {}).items():
                local = self._local_name(server_name)
                if local is None:
                    continue  # another namespace's proxy
                for item in items or []:
                    out.append(Connection(
                        proxy=local,
                        conn=int(item.get("conn", 0)),
                        client=f"{item.get('client', '')}:{item.get('client_port', '')}",
                        bytes_up=int(item.get("bytes_up", 0)),
                        bytes_down=int(item.get("bytes_down", 0)),
                        opened_at=float(item.get("opened_at", 0.0)),
                        data=dict(item),
                    ))
            return out

        return _Call("GET", path, parse, extension=True)

    def _fail_first_path(self, proxy: str) -> str:
        return f"{_EXTENSION_PREFIX}/proxies/{_quote(self.server_name(proxy))}/fail_first"

    def _fail_first_call(self, method: str, proxy: str,
                         body: Any = None) -> _Call[FailFirstState]:
        def parse(r: httpx.Response) -> FailFirstState:
            data = _json(r)
            mode = data.get("mode")
            return FailFirstState(
                proxy=proxy, armed=bool(data.get("armed")), count=int(data.get("count", 0)),
                mode=str(mode) if mode is not None else None,
                failed=int(data.get("failed", 0)), remaining=int(data.get("remaining", 0)),
            )

        what = {"POST": "fail_first()", "GET": "fail_first_state()"}.get(method,
                                                                        "disarming fail_first")
        return _Call(method, self._fail_first_path(proxy), parse, body, extension=True,
                     needs_engine=f"{what} (proxy {proxy!r})")

    def _check_response(self, call: _Call[Any], response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        unknown_path = response.status_code == 405 or (
            response.status_code == 404 and response.text.strip() == "404 page not found")
        if call.extension and unknown_path and call.needs_engine:
            raise NeedsBuiltinEngine(
                f"{call.needs_engine} needs the built-in engine of pytest-resilience "
                f"(--resilience-toxiproxy=builtin): this server answers "
                f"{response.status_code} to {call.path.split('?')[0]}, an extension a real "
                "toxiproxy-server does not have",
                status=response.status_code, method=call.method, url=str(response.request.url),
            )
        if call.extension and unknown_path:
            raise ExtensionUnsupported(
                f"{call.path.split('?')[0]} is an extension of the pytest-resilience built-in "
                "engine; this server does not have it (a real toxiproxy-server?)",
                status=response.status_code, method=call.method, url=str(response.request.url),
            )
        error = _error_for(response)
        if call.path == "/metrics" and isinstance(error, NotFound):
            error.args = (error.args[0] + " (toxiproxy-server serves /metrics only when "
                          "started with -proxy-metrics or -runtime-metrics; the built-in "
                          "engine with --proxy-metrics / proxy_metrics=True)",)
        raise error


# The parse functions need the client that will own the objects they build, so
# the sync and async clients each build their own; the rest is shared above.


def _toxic_from(data: Mapping[str, Any], proxy: str) -> dict[str, Any]:
    attributes = data.get("attributes") or {}
    return {
        "name": str(data["name"]),
        "type": str(data["type"]),
        "stream": str(data.get("stream", "downstream")),
        "toxicity": float(data.get("toxicity", 1.0)),
        "attributes": {str(k): v for k, v in attributes.items()},
        "proxy": proxy,
    }


def _proxy_fields(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {
        "name": name,
        "listen": str(data.get("listen", "")),
        "upstream": str(data.get("upstream", "")),
        "enabled": bool(data.get("enabled", True)),
    }


@user_facing
class Client(_Base):
    """A synchronous Toxiproxy client. Close it, or use it as a context manager.

    ``namespace`` prefixes every proxy name on the server (``"<namespace>.<name>"``)
    and scopes :meth:`list_proxies` and :meth:`reset` to those proxies, so several
    clients (e.g. pytest-xdist workers) can share one server without colliding.
    """

    def __init__(self, url: str = DEFAULT_URL, *, namespace: str = "", timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        import httpx

        self._init_common(url, namespace)
        self._http = httpx.Client(base_url=self.url, timeout=timeout, trust_env=False,
                                  headers={"User-Agent": USER_AGENT}, transport=transport)

    def __repr__(self) -> str:
        return f"Client(url={self.url!r}, namespace={self.namespace!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _run(self, call: _Call[_T]) -> _T:
        import httpx

        content = None if call.body is None else json.dumps(call.body).encode()
        try:
            response = self._http.request(call.method, call.path, content=content)
            if response.status_code == 405 and call.method == "PATCH":
                # toxiproxy-server before 2.6 updates with POST only
                response = self._http.request("POST", call.path, content=content)
        except httpx.TransportError as exc:
            raise ToxiproxyUnreachable(self.url, f"{type(exc).__name__}: {exc}") from exc
        self._check_response(call, response)
        return call.parse(response)

    # -- objects
    def _toxic(self, data: Mapping[str, Any], proxy: str) -> Toxic:
        return Toxic(**_toxic_from(data, proxy), client=self)

    def _proxy(self, data: Mapping[str, Any], name: str) -> Proxy:
        return Proxy(**_proxy_fields(data, name), client=self,
                     toxics=[self._toxic(t, name) for t in data.get("toxics") or []])

    # -- API
    def version(self) -> str:
        """The server's version, e.g. ``"2.12.0"``."""
        return self._run(self._version_call())

    def list_proxies(self) -> dict[str, Proxy]:
        """Every proxy (of this client's namespace), by name."""
        def parse(r: httpx.Response) -> dict[str, Proxy]:
            out = {}
            for server_name, data in (_json(r) or {}).items():
                local = self._local_name(server_name)
                if local is not None:
                    out[local] = self._proxy(data, local)
            return out

        return self._run(_Call("GET", "/proxies", parse))

    def get_proxy(self, name: str) -> Proxy:
        """One proxy with its toxics; :class:`NotFound` if it does not exist."""
        return self._run(_Call("GET", self._proxy_path(name),
                               lambda r: self._proxy(_json(r), name)))

    def create_proxy(self, name: str, upstream: str, *, listen: str = "127.0.0.1:0",
                     enabled: bool = True) -> Proxy:
        """Create a proxy. ``listen`` defaults to an ephemeral loopback port."""
        body = {"name": self.server_name(name), **self._proxy_body(upstream, listen, enabled)}
        try:
            return self._run(_Call("POST", "/proxies", lambda r: self._proxy(_json(r), name),
                                   body))
        except Conflict as exc:
            raise _duplicate_proxy(exc, name) from None

    def update_proxy(self, name: str, *, listen: str | None = None,
                     upstream: str | None = None, enabled: bool | None = None) -> Proxy:
        """PATCH a proxy; fields left ``None`` keep their value."""
        body = self._proxy_body(upstream, listen, enabled)
        return self._run(_Call("PATCH", self._proxy_path(name),
                               lambda r: self._proxy(_json(r), name), body))

    def delete_proxy(self, name: str) -> None:
        """Delete a proxy: its listener and live connections close."""
        self._run(_Call("DELETE", self._proxy_path(name), self._none))

    def populate(self, proxies: Iterable[ProxySpec | Mapping[str, Any]]) -> list[Proxy]:
        """Create or replace several proxies at once (``POST /populate``)."""
        specs = [p if isinstance(p, ProxySpec) else ProxySpec(**p) for p in proxies]
        body = [s.to_json(self.server_name(s.name)) for s in specs]

        def parse(r: httpx.Response) -> list[Proxy]:
            out = []
            for data in (_json(r) or {}).get("proxies") or []:
                local = self._local_name(str(data["name"]))
                out.append(self._proxy(data, local if local is not None else data["name"]))
            return out

        return self._run(_Call("POST", "/populate", parse, body))

    def list_toxics(self, proxy: str) -> list[Toxic]:
        return self._run(_Call("GET", self._proxy_path(proxy) + "/toxics",
                               lambda r: [self._toxic(t, proxy) for t in _json(r) or []]))

    def get_toxic(self, proxy: str, name: str) -> Toxic:
        return self._run(_Call("GET", self._toxic_path(proxy, name),
                               lambda r: self._toxic(_json(r), proxy)))

    def add_toxic(self, proxy: str, type: str, attributes: Mapping[str, int] | None = None, *,
                  stream: str = "downstream", toxicity: float = 1.0,
                  name: str | None = None) -> Toxic:
        """Add a toxic (validated here first). Returns it; it is a context manager."""
        body = validate_toxic(type, attributes, stream=stream, toxicity=toxicity, name=name)
        return self._run(_Call("POST", self._proxy_path(proxy) + "/toxics",
                               lambda r: self._toxic(_json(r), proxy), body))

    create_toxic = add_toxic

    def update_toxic(self, proxy: str, name: str, *, attributes: Mapping[str, int] | None = None,
                     toxicity: float | None = None) -> Toxic:
        """PATCH a toxic: attributes are merged, an omitted toxicity is kept."""
        body = self._toxic_update_body(attributes, toxicity)
        return self._run(_Call("PATCH", self._toxic_path(proxy, name),
                               lambda r: self._toxic(_json(r), proxy), body))

    def delete_toxic(self, proxy: str, name: str) -> None:
        self._run(_Call("DELETE", self._toxic_path(proxy, name), self._none))

    def reset(self) -> None:
        """Remove every toxic and re-enable every proxy.

        With a namespace only this namespace's proxies are touched; without
        one this is the server-wide ``POST /reset``.
        """
        if not self.namespace:
            self._run(_Call("POST", "/reset", self._none))
            return
        for proxy in self.list_proxies().values():
            for toxic in proxy.toxics:
                toxic.remove()
            if not proxy.enabled:
                proxy.enable()

    def delete_all(self) -> None:
        """Delete every proxy (of this client's namespace)."""
        for name in self.list_proxies():
            with contextlib.suppress(NotFound):
                self.delete_proxy(name)

    def metrics(self) -> str:
        """The Prometheus metrics text (``GET /metrics``)."""
        return self._run(self._metrics_call())

    def events(self, proxy: str | None = None, since: int = 0) -> list[Event]:
        """The built-in engine's event log after sequence number ``since``.

        Raises :class:`ExtensionUnsupported` against a real toxiproxy-server.
        """
        return self._run(self._events_call(proxy, since))

    def last_event_seq(self) -> int:
        """The sequence number of the engine's latest event (0 before any): pass it as
        ``since=`` to see only what happens from now on.

        Raises :class:`ExtensionUnsupported` against a real toxiproxy-server.
        """
        return self._run(self._last_event_seq_call())

    def connections(self, proxy: str | None = None) -> list[Connection]:
        """The built-in engine's live connections (extension)."""
        return self._run(self._connections_call(proxy))

    def arm_fail_first(self, proxy: str, count: int, mode: str = "reset", *,
                       handle: Proxy | None = None) -> FailFirst:
        """Arm ``fail_first`` on ``proxy`` (see :meth:`Proxy.fail_first`)."""
        body = _fail_first_args(count, mode)
        state = self._run(self._fail_first_call("POST", proxy, body))
        return FailFirst(handle if handle is not None else self.get_proxy(proxy), state)

    def fail_first_state(self, proxy: str) -> FailFirstState:
        """The ``fail_first`` state of ``proxy`` (built-in engine only)."""
        return self._run(self._fail_first_call("GET", proxy))

    def disarm_fail_first(self, proxy: str) -> FailFirstState:
        """Disarm ``fail_first`` on ``proxy``; returns the state it ended with."""
        return self._run(self._fail_first_call("DELETE", proxy))


@user_facing
class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: the same methods, awaited."""

    def __init__(self, url: str = DEFAULT_URL, *, namespace: str = "", timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        import httpx

        self._init_common(url, namespace)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, trust_env=False,
                                       headers={"User-Agent": USER_AGENT}, transport=transport)

    def __repr__(self) -> str:
        return f"AsyncClient(url={self.url!r}, namespace={self.namespace!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def _run(self, call: _Call[_T]) -> _T:
        import httpx

        content = None if call.body is None else json.dumps(call.body).encode()
        try:
            response = await self._http.request(call.method, call.path, content=content)
            if response.status_code == 405 and call.method == "PATCH":
                # toxiproxy-server before 2.6 updates with POST only
                response = await self._http.request("POST", call.path, content=content)
        except httpx.TransportError as exc:
            raise ToxiproxyUnreachable(self.url, f"{type(exc).__name__}: {exc}") from exc
        self._check_response(call, response)
        return call.parse(response)

    def _toxic(self, data: Mapping[str, Any], proxy: str) -> AsyncToxic:
        return AsyncToxic(**_toxic_from(data, proxy), client=self)

    def _proxy(self, data: Mapping[str, Any], name: str) -> AsyncProxy:
        return AsyncProxy(**_proxy_fields(data, name), client=self,
                          toxics=[self._toxic(t, name) for t in data.get("toxics") or []])

    async def version(self) -> str:
        return await self._run(self._version_call())

    async def list_proxies(self) -> dict[str, AsyncProxy]:
        def parse(r: httpx.Response) -> dict[str, AsyncProxy]:
            out = {}
            for server_name, data in (_json(r) or {}).items():
                local = self._local_name(server_name)
                if local is not None:
                    out[local] = self._proxy(data, local)
            return out

        return await self._run(_Call("GET", "/proxies", parse))

    async def get_proxy(self, name: str) -> AsyncProxy:
        return await self._run(_Call("GET", self._proxy_path(name),
                                     lambda r: self._proxy(_json(r), name)))

    async def create_proxy(self, name: str, upstream: str, *, listen: str = "127.0.0.1:0",
                           enabled: bool = True) -> AsyncProxy:
        body = {"name": self.server_name(name), **self._proxy_body(upstream, listen, enabled)}
        try:
            return await self._run(_Call("POST", "/proxies",
                                         lambda r: self._proxy(_json(r), name), body))
        except Conflict as exc:
            raise _duplicate_proxy(exc, name) from None

    async def update_proxy(self, name: str, *, listen: str | None = None,
                           upstream: str | None = None,
                           enabled: bool | None = None) -> AsyncProxy:
        body = self._proxy_body(upstream, listen, enabled)
        return await self._run(_Call("PATCH", self._proxy_path(name),
                                     lambda r: self._proxy(_json(r), name), body))

    async def delete_proxy(self, name: str) -> None:
        await self._run(_Call("DELETE", self._proxy_path(name), self._none))

    async def populate(self, proxies: Iterable[ProxySpec | Mapping[str, Any]]) -> list[AsyncProxy]:
        specs = [p if isinstance(p, ProxySpec) else ProxySpec(**p) for p in proxies]
        body = [s.to_json(self.server_name(s.name)) for s in specs]

        def parse(r: httpx.Response) -> list[AsyncProxy]:
            out = []
            for data in (_json(r) or {}).get("proxies") or []:
                local = self._local_name(str(data["name"]))
                out.append(self._proxy(data, local if local is not None else data["name"]))
            return out

        return await self._run(_Call("POST", "/populate", parse, body))

    async def list_toxics(self, proxy: str) -> list[AsyncToxic]:
        return await self._run(_Call("GET", self._proxy_path(proxy) + "/toxics",
                                     lambda r: [self._toxic(t, proxy) for t in _json(r) or []]))

    async def get_toxic(self, proxy: str, name: str) -> AsyncToxic:
        return await self._run(_Call("GET", self._toxic_path(proxy, name),
                                     lambda r: self._toxic(_json(r), proxy)))

    async def add_toxic(self, proxy: str, type: str, attributes: Mapping[str, int] | None = None,
                        *, stream: str = "downstream", toxicity: float = 1.0,
                        name: str | None = None) -> AsyncToxic:
        body = validate_toxic(type, attributes, stream=stream, toxicity=toxicity, name=name)
        return await self._run(_Call("POST", self._proxy_path(proxy) + "/toxics",
                                     lambda r: self._toxic(_json(r), proxy), body))

    create_toxic = add_toxic

    async def update_toxic(self, proxy: str, name: str, *,
                           attributes: Mapping[str, int] | None = None,
                           toxicity: float | None = None) -> AsyncToxic:
        body = self._toxic_update_body(attributes, toxicity)
        return await self._run(_Call("PATCH", self._toxic_path(proxy, name),
                                     lambda r: self._toxic(_json(r), proxy), body))

    async def delete_toxic(self, proxy: str, name: str) -> None:
        await self._run(_Call("DELETE", self._toxic_path(proxy, name), self._none))

    async def reset(self) -> None:
        if not self.namespace:
            await self._run(_Call("POST", "/reset", self._none))
            return
        for proxy in (await self.list_proxies()).values():
            for toxic in proxy.toxics:
                await toxic.remove()
            if not proxy.enabled:
                await proxy.enable()

    async def delete_all(self) -> None:
        for name in await self.list_proxies():
            with contextlib.suppress(NotFound):
                await self.delete_proxy(name)

    async def metrics(self) -> str:
        return await self._run(self._metrics_call())

    async def events(self, proxy: str | None = None, since: int = 0) -> list[Event]:
        return await self._run(self._events_call(proxy, since))

    async def last_event_seq(self) -> int:
        """The sequence number of the engine's latest event (see :meth:`Client.last_event_seq`)."""
        return await self._run(self._last_event_seq_call())

    async def connections(self, proxy: str | None = None) -> list[Connection]:
        return await self._run(self._connections_call(proxy))

    async def arm_fail_first(self, proxy: str, count: int, mode: str = "reset", *,
                             handle: AsyncProxy | None = None) -> AsyncFailFirst:
        body = _fail_first_args(count, mode)
        state = await self._run(self._fail_first_call("POST", proxy, body))
        return AsyncFailFirst(handle if handle is not None else await self.get_proxy(proxy),
                              state)

    async def fail_first_state(self, proxy: str) -> FailFirstState:
        return await self._run(self._fail_first_call("GET", proxy))

    async def disarm_fail_first(self, proxy: str) -> FailFirstState:
        return await self._run(self._fail_first_call("DELETE", proxy))
