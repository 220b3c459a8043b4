"""Routes, the request log and the expectations both kinds of fake HTTP backend share.

:class:`BackendCore` holds the routes (method + path pattern + script), picks
the step that answers each request, records every request, and lists what a
test left unmet at teardown: scripted steps never requested, requests nobody
scripted, callables that raised. The real server (``http_backend``) and the
respx twin (``http_respx``) only move bytes or ``httpx`` objects around it.
"""

from __future__ import annotations

import itertools
import json as _json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from pytest_resilience.errors import ConfigError
from pytest_resilience.services.http_script import (
    Reply,
    Response,
    Script,
    Step,
    StepLike,
    parse_script,
)
from pytest_resilience.toxiproxy.client import user_facing_call

__all__ = ["BackendCore", "Headers", "RecordedRequest", "Route", "Unexpected"]

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "*")


class Headers(Mapping[str, str]):
    """Request headers: case-insensitive lookup, order and repeats kept in :attr:`raw`."""

    __slots__ = ("_index", "raw")

    def __init__(self, raw: Sequence[tuple[str, str]]) -> None:
        self.raw: tuple[tuple[str, str], ...] = tuple(raw)
        index: dict[str, str] = {}
        for name, value in self.raw:
            key = name.lower()
            index[key] = f"{index[key]}, {value}" if key in index else value
        self._index = index

    def __getitem__(self, name: str) -> str:
        return self._index[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self.raw if n.lower() == key]

    def __repr__(self) -> str:
        return f"Headers({list(self.raw)!r})"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the backend received it."""

    method: str
    path: str
    query: str
    headers: Headers
    body: bytes
    arrived: float
    """``time.monotonic()`` when the request head had arrived."""
    index: int
    """0-based position in the backend's log."""
    route: str | None = None
    """The route that matched, e.g. ``"GET /users/{id}"``; ``None``: no route."""
    step: int | None = None
    """1-based index of the script step that answered; ``None`` for a default or no route."""
    answer: str = ""
    """What answered, e.g. ``"503 x3"``, ``"default 200"`` or ``"404 no route"``."""
    path_params: Mapping[str, str] = field(default_factory=dict)
    connection: int = 0
    """Which connection it came on (1, 2, ...): a new number means a new connection."""
    http_version: str = "HTTP/1.1"

    @property
    def target(self) -> str:
        return self.path + ("?" + self.query if self.query else "")

    @property
    def params(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return _json.loads(self.body)

    def __repr__(self) -> str:
        return (f"<RecordedRequest #{self.index} {self.method} {self.target} "
                f"-> {self.answer or '?'} at {self.arrived:.6f}>")


@dataclass(frozen=True)
class Unexpected:
    """A request that no script answered, and why."""

    request: RecordedRequest
    reason: str


def _compile(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        return pattern
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise ConfigError(f"route path {pattern!r} must start with '/' (or be a compiled regex)")
    out, pos = ["^"], 0
    for m in re.finditer(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(path))?\}", pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>{'.+' if m.group(2) else '[^/]+'})")
        pos = m.end()
    rest = pattern[pos:]
    if "{" in rest or "}" in rest:
        raise ConfigError(f"route path {pattern!r}: a placeholder must look like {{name}} or "
                          "{name:path}")
    out.append(re.escape(rest) + "$")
    try:
        return re.compile("".join(out))
    except re.error as exc:  # duplicate group names
        raise ConfigError(f"route path {pattern!r}: {exc}") from None


class Route:
    """A method + path pattern and its script; :attr:`requests` are the ones it answered."""

    def __init__(self, method: str, path: str | re.Pattern[str], script: Script,
                 rng: random.Random) -> None:
        self.method = method
        self.path = path
        self.label = f"{method} {path.pattern if isinstance(path, re.Pattern) else path}"
        self.script = script
        self.regex = _compile(path)
        self.rng = rng
        self.requests: list[RecordedRequest] = []
        self.used = [0] * len(script.steps)
        self._pass_used = [0] * len(script.steps)
        self._pos = 0
        # re-scripted layers: (token, the state below it), bottom first
        self._layers: list[tuple[object, tuple[Script, list[int], list[int], int]]] = []

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method != "*" and self.method != method:
            return None
        m = self.regex.fullmatch(path)
        return None if m is None else m.groupdict()

    def next_step(self) -> tuple[int | None, Step | None]:
        """The step that answers the next request: (1-based index, step); (None, default);
        (None, None) when the script is exhausted and there is no default."""
        steps = self.script.steps
        while True:
            while self._pos < len(steps):
                step = steps[self._pos]
                if step.count is None or self._pass_used[self._pos] < step.count:
                    self._pass_used[self._pos] += 1
                    self.used[self._pos] += 1
                    return self._pos + 1, step
                self._pos += 1
            if self.script.cycle and steps:
                self._pos = 0
                self._pass_used = [0] * len(steps)
                continue
            return None, self.script.default

    def swap(self, script: Script) -> Callable[[], None]:
        """Answer with ``script`` from now on (from its first step); the returned function
        takes this layer away again, whatever was layered on top of it since: the route
        answers with the script below (at the position it had), or the one on top."""
        below = (self.script, self.used, self._pass_used, self._pos)
        token = object()
        self._layers.append((token, below))
        self.script = script
        self.used = [0] * len(script.steps)
        self._pass_used = [0] * len(script.steps)
        self._pos = 0

        def restore() -> None:
            for i, (t, saved) in enumerate(self._layers):
                if t is not token:
                    continue
                if i == len(self._layers) - 1:  # the top layer: back to the one below
                    self.script, self.used, self._pass_used, self._pos = saved
                else:  # a layer in the middle: the one above now sits on what was below
                    above_token, _ = self._layers[i + 1]
                    self._layers[i + 1] = (above_token, saved)
                del self._layers[i]
                return

        return restore

    def unused(self) -> list[str]:
        out = []
        for i, step in enumerate(self.script.steps):
            want = 1 if step.count is None else step.count
            if self.used[i] < want:
                of = "at least once" if step.count is None else f"{step.count} times"
                out.append(f"{self.label} step {i + 1} of {len(self.script.steps)} "
                           f"{step.describe()!r}: answered {self.used[i]} times, "
                           f"scripted {of}")
        return out

    def __repr__(self) -> str:
        return f"<Route {self.label} ({len(self.requests)} requests)>"


_ROUTE_KEYS = {"steps", "default", "cycle"}


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


class BackendCore:
    """What the real server and the respx twin share: routes, the log, expectations.

    ``assert_all_used`` (default on): a scripted step that never answered fails
    the test at teardown. ``assert_all_expected`` (default on): a request no
    route answered (or that came after a script ran out) fails it too.
    Both can be switched off per test by setting the attribute, by the
    factory's keyword arguments or by ``@pytest.mark.http_backend(...)``.
    """

    kind = "http_backend"

    def __init__(self, *, routes: Mapping[str, object] | None = None, seed: int | str = 0,
                 name: str | None = None, assert_all_used: bool = True,
                 assert_all_expected: bool = True) -> None:
        self.name = name
        self.seed = seed
        self.assert_all_used = assert_all_used
        self.assert_all_expected = assert_all_expected
        self.routes: list[Route] = []
        self._log: list[RecordedRequest] = []
        self.unexpected: list[Unexpected] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        if routes:
            self.add_routes(routes)

    # ------------------------------------------------------------------ scripting

    @user_facing_call
    def route(self, method: str, path: str | re.Pattern[str],
              *steps: StepLike | Sequence[StepLike],
              default: StepLike | None = None, cycle: bool = False) -> Route:
        """Script ``method path``: the steps answer requests in order.

        ``steps`` may be given one by one or as one list. ``default`` answers
        every request after the steps ran out (it is never "unused");
        ``cycle=True`` starts the steps over instead. Path patterns:
        ``/users/{id}`` (one segment), ``/files/{rest:path}`` (the rest), or a
        compiled ``re.Pattern`` matched against the whole path.
        """
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise ConfigError(f"route method {method!r} is not one of {', '.join(METHODS)}")
        method = method.upper()
        flat: list[object] = []
        for s in steps:
            if isinstance(s, list | tuple):
                flat.extend(s)
            else:
                flat.append(s)
        label = f"{method} {path.pattern if isinstance(path, re.Pattern) else path}"
        regex = _compile(path)
        script = parse_script(flat, label, default=default, cycle=cycle)
        with self._lock:
            for r in self.routes:
                if r.method == method and r.regex.pattern == regex.pattern:
                    raise ConfigError(f"{label} is already scripted on this backend; give all "
                                      "its steps in one route() call")
            rng = random.Random(f"{self.seed}:{label}")
            route = Route(method, path, script, rng)
            self.routes.append(route)
        return route

    @user_facing_call
    def get(self, path: str | re.Pattern[str], *steps: StepLike | Sequence[StepLike],
            **kw: Any) -> Route:
        return self.route("GET", path, *steps, **kw)

    @user_facing_call
    def post(self, path: str | re.Pattern[str], *steps: StepLike | Sequence[StepLike],
            **kw: Any) -> Route:
        return self.route("POST", path, *steps, **kw)

    @user_facing_call
    def put(self, path: str | re.Pattern[str], *steps: StepLike | Sequence[StepLike],
            **kw: Any) -> Route:
        return self.route("PUT", path, *steps, **kw)

    @user_facing_call
    def delete(self, path: str | re.Pattern[str], *steps: StepLike | Sequence[StepLike],
            **kw: Any) -> Route:
        return self.route("DELETE", path, *steps, **kw)

    @user_facing_call
    def add_routes(self, routes: Mapping[str, object]) -> None:
        """Script several routes from ``{"GET /trends": ["503 x5", "200 {}"], ...}``.

        A value may also be ``{"steps": [...], "default": step, "cycle": bool}``.
        """
        if not isinstance(routes, Mapping):
            raise ConfigError(f"routes must be a mapping like {{'GET /x': ['503 x3', '200']}}, "
                              f"got {routes!r}")
        for key, steps in routes.items():
            method, _, path = str(key).strip().partition(" ")
            if not path:
                raise ConfigError(f"routes key {key!r} must be 'METHOD /path', e.g. 'GET /trends'")
            if isinstance(steps, Mapping) and steps and set(steps) <= _ROUTE_KEYS:
                # {"steps": [...], "default": ..., "cycle": ...}
                self.route(method, path.strip(), steps.get("steps", []),
                           default=steps.get("default"), cycle=bool(steps.get("cycle", False)))
            else:
                self.route(method, path.strip(), steps)  # type: ignore[arg-type]

    @user_facing_call
    def rescript(self, route: str | None, steps: StepLike | Sequence[StepLike], *,
                 default: StepLike | None = None, cycle: bool = False) -> Callable[[], None]:
        """Re-script a route mid-test: ``route`` (``"GET /trends"``, as scripted; ``None``:
        every route of this backend) answers with ``steps`` from now on. Returns the
        function that restores the previous scripts. At teardown only the script in place
        is checked for unused steps: a re-script still in place is checked like any
        script, the one it replaced only once it is restored.

        ``restore = backend.rescript("GET /trends", ["503 forever"])`` ... ``restore()``.
        """
        with self._lock:
            if route is None:
                chosen = list(self.routes)
            else:
                method, _, path = route.strip().partition(" ")
                chosen = [r for r in self.routes if r.label == f"{method.upper()} {path.strip()}"]
            if not chosen:
                scripted = ", ".join(r.label for r in self.routes) or "none"
                raise ConfigError(f"rescript: no route {route!r} on this backend (scripted: "
                                  f"{scripted}); script it first, then re-script it")
            restores = [r.swap(parse_script(steps, f"{r.label} (re-scripted)",
                                            default=default, cycle=cycle)) for r in chosen]

        def restore() -> None:
            with self._lock:
                for undo in reversed(restores):
                    undo()

        return restore

    # ----------------------------------------------------------------- the log

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._log)

    def requests_for(self, method: str, path: str | re.Pattern[str]) -> list[RecordedRequest]:
        """Requests with this method whose path is ``path`` (or that the route declared as
        ``path``, e.g. ``"/users/{id}"``, answered); ``method="*"`` for any method."""
        method = method.upper()
        label = path.pattern if isinstance(path, re.Pattern) else path
        with self._lock:
            return [r for r in self._log
                    if (method == "*" or r.method == method)
                    and (r.path == path or (r.route is not None
                                            and r.route.partition(" ")[2] == label))]

    def arrival_gaps(self, method: str, path: str | re.Pattern[str]) -> list[float]:
        """Seconds between consecutive arrivals of ``requests_for(method, path)``:
        what a backoff verdict compares with the intended delays."""
        times = [r.arrived for r in self.requests_for(method, path)]
        return [b - a for a, b in itertools.pairwise(times)]

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until the log holds at least ``n`` requests (or raise ``TimeoutError``)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._log) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.describe()}: {len(self._log)} requests after "
                                       f"{timeout} s, waited for {n}")
                self._changed.wait(left)
            return list(self._log)

    def clear(self) -> None:
        """Forget the log and the unexpected requests (the scripts keep their position)."""
        with self._lock:
            self._log.clear()
            self.unexpected.clear()
            for r in self.routes:
                r.requests.clear()

    def reset(self) -> None:
        """Forget the log and start every route's script over (as freshly scripted)."""
        with self._lock:
            self._log.clear()
            self.unexpected.clear()
            for r in self.routes:
                r.requests.clear()
                r.used = [0] * len(r.script.steps)
                r._pass_used = [0] * len(r.script.steps)
                r._pos = 0

    # ------------------------------------------------------------- dispatching

    def dispatch(self, method: str, path: str, query: str,
                 headers: Sequence[tuple[str, str]], body: bytes, arrived: float,
                 connection: int = 0, http_version: str = "HTTP/1.1",
                 ) -> tuple[RecordedRequest, Step | None, Route | None]:
        """Record a request and pick what answers it.

        Returns the record, the step (``None``: answer 404/500 with
        :meth:`unexpected_reply`) and the route that matched.
        """
        with self._lock:
            found: tuple[Route, dict[str, str]] | None = None
            for r in self.routes:
                params = r.match(method, path)
                if params is not None:
                    found = (r, params)
                    break
            step: Step | None = None
            index: int | None = None
            if found is None:
                answer, route, params = "404 no route", None, {}
            else:
                route, params = found
                index, step = route.next_step()
                if step is None:
                    answer = "500 script exhausted"
                elif index is None:
                    answer = "default " + step.describe()
                else:
                    answer = step.describe()
            rec = RecordedRequest(method, path, query, Headers(headers), body, arrived,
                                  len(self._log), route.label if route else None, index,
                                  answer, params, connection, http_version)
            self._log.append(rec)
            if route is not None:
                route.requests.append(rec)
            if step is None:
                reason = answer.partition(" ")[2]
                if route is not None:
                    reason = (f"script exhausted: all {len(route.script.steps)} steps of "
                              f"{route.label} were used")
                self.unexpected.append(Unexpected(rec, reason))
            self._changed.notify_all()
        return rec, step, route

    def unexpected_reply(self, rec: RecordedRequest, route: Route | None) -> Reply:
        if route is None:
            scripted = ", ".join(r.label for r in self.routes) or "none"
            text = (f"pytest-resilience {self.kind}: no route for {rec.method} {rec.path}; "
                    f"scripted routes: {scripted}\n")
            return Response(404, text=text).reply(random.Random(0))
        text = (f"pytest-resilience {self.kind}: the script of {route.label} is exhausted "
                f"(all {len(route.script.steps)} steps used); add steps, a default= or "
                "'forever'\n")
        return Response(500, text=text).reply(random.Random(0))

    def handler_failed(self, rec: RecordedRequest, exc: BaseException) -> Reply:
        msg = f"{rec.route} step {rec.step}: the callable raised {type(exc).__name__}: {exc}"
        with self._lock:
            self.errors.append(msg)
        return Response(500, text=f"pytest-resilience {self.kind}: {msg}\n").reply(
            random.Random(0))

    # ------------------------------------------------------------ expectations

    def describe(self) -> str:
        return f"{self.kind} {self.name!r}" if self.name else self.kind

    def unmet(self) -> list[str]:
        """Lines describing what the test left unmet (empty: all good)."""
        lines: list[str] = []
        with self._lock:
            if self.errors:
                lines.append(f"{self.describe()}: {_n(len(self.errors), 'error')} while "
                             "answering:")
                lines.extend("  " + e for e in self.errors)
            if self.assert_all_used:
                unused = [u for r in self.routes for u in r.unused()]
                if unused:
                    lines.append(f"{self.describe()}: {_n(len(unused), 'scripted step')} never "
                                 "answered (did the client give up before retrying?):")
                    lines.extend("  " + u for u in unused)
                    lines.append("  opt out: @pytest.mark.http_backend(assert_all_used=False) "
                                 "or backend.assert_all_used = False "
                                 "(README: 'Fake HTTP backends')")
            if self.assert_all_expected and self.unexpected:
                lines.append(f"{self.describe()}: {_n(len(self.unexpected), 'request')} "
                             "not scripted:")
                lines.extend(f"  #{u.request.index} {u.request.method} {u.request.target}: "
                             f"{u.reason}" for u in self.unexpected)
                lines.append("  opt out: @pytest.mark.http_backend(assert_all_expected=False) "
                             "or backend.assert_all_expected = False "
                             "(README: 'Fake HTTP backends')")
        return lines
