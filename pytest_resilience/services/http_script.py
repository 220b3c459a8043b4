"""The script vocabulary of fake HTTP backends, shared by the real server and the respx twin.

A *script* is what one route answers, request after request: a list of *steps*.
Each step is an action (a :class:`Response`, a :class:`Fault` or a callable)
used ``times`` times in a row (or forever). Steps can be written three ways,
and every form is validated once, when the route is declared, with a
:class:`~pytest_resilience.errors.ConfigError` that names the step:

* typed: ``Response(503).times(3)``, ``Response(json={"ok": True}, delay=0.1)``,
  ``Fault.reset()``, ``too_many_requests(retry_after=2)``;
* compact strings: ``"503 x3"``, ``'200 {"ok": true}'``, ``"200 delay=100ms hello"``,
  ``"reset"``, ``"429 retry-after=2"``, ``"200 dribble=5/1s x*"``;
* mappings (what a scenario YAML holds): ``{"status": 503, "times": 3, "delay": "100ms"}``.

Grammar of the compact string form::

    STEP    := HEAD (SP OPTION)* [SP BODY]
    HEAD    := a status code 100-599 | empty | malformed | truncated | garbage | reset | hang
    OPTION  := xN | x* | forever | delay=DELAY | dribble=N/DURATION
             | retry-after=SECONDS | content-type=TYPE
    DELAY   := DURATION | uniform(DURATION,DURATION) | lognormal(DURATION,SIGMA)
    DURATION:= a number with a unit: 250us, 100ms, 1.5s
    BODY    := the rest of the string: JSON when it starts with { or [, else text

Random delays draw from a ``random.Random`` the backend seeds per route, so a
run replays with the same ``--resilience-seed``.
"""

from __future__ import annotations

import json as _json
import math
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

from pytest_resilience.errors import ConfigError

if TYPE_CHECKING:
    from pytest_resilience.services.http_routes import RecordedRequest

__all__ = [
    "FAULT_KINDS",
    "Delay",
    "Dribble",
    "Fault",
    "FaultKind",
    "Fixed",
    "LogNormal",
    "Reply",
    "Response",
    "Script",
    "Step",
    "StepLike",
    "Uniform",
    "forever",
    "parse_delay",
    "parse_duration",
    "parse_script",
    "parse_step",
    "retry_after",
    "times",
    "too_many_requests",
]

README = "see the 'Fake HTTP backends' section of the pytest-resilience README"

FaultKind = Literal["empty", "malformed", "truncated", "garbage", "reset", "hang"]
FAULT_KINDS: tuple[FaultKind, ...] = ("empty", "malformed", "truncated", "garbage", "reset",
                                      "hang")
TRUNCATED_BODY = b'{"items": [1, 2, 3'
TRUNCATED_LENGTH = 64

class _Missing:
    def __repr__(self) -> str:
        return "<no json>"


_MISSING: Any = _Missing()


# --------------------------------------------------------------------------- delays


@dataclass(frozen=True)
class Delay:
    """A delay before the response headers; subclasses say how it is drawn."""

    def draw(self, rng: random.Random) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Fixed(Delay):
    """Always ``seconds``."""

    seconds: float

    def __post_init__(self) -> None:
        _non_negative("delay", self.seconds)

    def draw(self, rng: random.Random) -> float:
        return self.seconds

    def describe(self) -> str:
        return _fmt_duration(self.seconds)


@dataclass(frozen=True)
class Uniform(Delay):
    """Uniformly drawn from ``[low, high]`` seconds."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _non_negative("uniform delay low", self.low)
        _non_negative("uniform delay high", self.high)
        if self.high < self.low:
            raise ConfigError(
                f"uniform delay: high ({self.high}) is below low ({self.low})"
            )

    def draw(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def describe(self) -> str:
        return f"uniform({_fmt_duration(self.low)},{_fmt_duration(self.high)})"


@dataclass(frozen=True)
class LogNormal(Delay):
    """Log-normal with the given ``median`` (seconds) and ``sigma`` (of the underlying normal).

    Long-tailed like real latency: half the draws are below the median, and
    ``sigma=0.5`` puts the 95th percentile at about 2.3 times the median.
    """

    median: float
    sigma: float

    def __post_init__(self) -> None:
        _non_negative("lognormal delay median", self.median)
        _non_negative("lognormal delay sigma", self.sigma)

    def draw(self, rng: random.Random) -> float:
        if self.median == 0:
            return 0.0
        return rng.lognormvariate(math.log(self.median), self.sigma)

    def describe(self) -> str:
        return f"lognormal({_fmt_duration(self.median)},{self.sigma:g})"


@dataclass(frozen=True)
class Dribble:
    """Send the body in ``chunks`` pieces spread evenly over ``over`` seconds.

    The headers go out at once (after any delay); chunk *k* (1-based) is sent
    ``k * over / chunks`` seconds later, so the body completes after ``over``.
    """

    chunks: int
    over: float

    def __post_init__(self) -> None:
        if isinstance(self.chunks, bool) or not isinstance(self.chunks, int) or self.chunks < 1:
            raise ConfigError(f"dribble: chunks must be a positive integer, got {self.chunks!r}")
        _non_negative("dribble duration", self.over)

    def describe(self) -> str:
        return f"{self.chunks}/{_fmt_duration(self.over)}"


def _non_negative(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{what} must be a finite number >= 0 seconds, got {value!r}")


def _fmt_duration(seconds: float) -> str:
    if seconds >= 1 or seconds == 0:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(us|µs|ms|s|m)\s*$")
_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_duration(value: object, what: str = "duration", *, unit_required: bool = False) -> float:
    """``"100ms"`` / ``"1.5s"`` / ``250`` (seconds) -> seconds, or a ``ConfigError``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if unit_required:
            raise ConfigError(f"{what} {value!r} needs a unit: e.g. 100ms or 1.5s")
        _non_negative(what, value)
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ConfigError(f"{what} {value!r} is negative; delays are >= 0")
        m = _DURATION_RE.match(text)
        if m is None:
            if re.fullmatch(r"[0-9]*\.?[0-9]+", text):
                raise ConfigError(f"{what} {value!r} needs a unit: e.g. {text}ms or {text}s")
            raise ConfigError(
                f"{what} {value!r} is not a duration; write e.g. 100ms, 1.5s or 250us"
            )
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
        _non_negative(what, seconds)
        return seconds
    raise ConfigError(f"{what} must be a duration like '100ms' or a number of seconds, "
                      f"got {value!r}")


_FUNC_RE = re.compile(r"^\s*(uniform|lognormal)\s*\((.*)\)\s*$")


def parse_delay(value: object, what: str = "delay", *, unit_required: bool = False) -> Delay:
    """A :class:`Delay`, a number of seconds, ``"100ms"``, ``"uniform(50ms,150ms)"``,
    ``"lognormal(100ms,0.5)"`` or a mapping ``{"uniform": [a, b]}`` -> :class:`Delay`."""
    if isinstance(value, Delay):
        return value
    if isinstance(value, Mapping):
        if len(value) != 1:
            raise ConfigError(f"{what} {value!r}: expected one of {{'uniform': [low, high]}}, "
                              "{'lognormal': [median, sigma]}, {'fixed': duration}")
        ((kind, args),) = value.items()
        if kind == "fixed":
            return Fixed(parse_duration(args, what))
        if kind in ("uniform", "lognormal") and isinstance(args, Sequence) \
                and not isinstance(args, str) and len(args) == 2:
            return parse_delay(f"{kind}({args[0]},{args[1]})", what)
        raise ConfigError(f"{what} {value!r}: unknown delay kind {kind!r}; "
                          "use fixed, uniform or lognormal")
    if isinstance(value, str):
        m = _FUNC_RE.match(value)
        if m is not None:
            kind, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
            if len(args) != 2:
                raise ConfigError(f"{what} {value!r}: {kind}() takes two arguments")
            if kind == "uniform":
                return Uniform(parse_duration(args[0], what, unit_required=unit_required),
                               parse_duration(args[1], what, unit_required=unit_required))
            median = parse_duration(args[0], what, unit_required=unit_required)
            try:
                sigma = float(args[1])
            except ValueError:
                raise ConfigError(f"{what} {value!r}: lognormal sigma {args[1]!r} is not a "
                                  "number") from None
            return LogNormal(median, sigma)
    return Fixed(parse_duration(value, what, unit_required=unit_required))


def _parse_dribble(value: object, what: str) -> Dribble:
    if isinstance(value, Dribble):
        return value
    if isinstance(value, Mapping):
        extra = set(value) - {"chunks", "over"}
        if extra or "chunks" not in value or "over" not in value:
            raise ConfigError(f"{what} {dict(value)!r}: expected {{'chunks': N, 'over': "
                              "duration}")
        return Dribble(value["chunks"], parse_duration(value["over"], what))
    if isinstance(value, tuple) and len(value) == 2:
        return Dribble(value[0], parse_duration(value[1], what))
    if isinstance(value, str):
        chunks, sep, over = value.partition("/")
        if sep and chunks.strip().isdigit():
            return Dribble(int(chunks), parse_duration(over, what, unit_required=True))
    raise ConfigError(f"{what} {value!r}: expected N/DURATION, e.g. 5/1s (5 chunks over 1 s)")


# ------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Reply:
    """A concrete answer, with every random draw made: what the server or the twin does."""

    kind: Literal["response", "empty", "malformed", "truncated", "garbage", "reset", "hang"]
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    delay: float = 0.0
    dribble: Dribble | None = None


def _clean_headers(headers: object, what: str) -> tuple[tuple[str, str], ...]:
    if headers is None:
        return ()
    items: Sequence[Any]
    if isinstance(headers, Mapping):
        items = list(headers.items())
    elif isinstance(headers, Sequence) and not isinstance(headers, str | bytes):
        items = list(headers)
    else:
        raise ConfigError(f"{what}: headers must be a mapping or a list of (name, value) pairs, "
                          f"got {headers!r}")
    out = []
    for item in items:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ConfigError(f"{what}: header {item!r} is not a (name, value) pair")
        name, value = item
        if not isinstance(name, str) or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise ConfigError(f"{what}: {name!r} is not a valid header name")
        value = str(value)
        if "\r" in value or "\n" in value:
            raise ConfigError(f"{what}: header {name} has a line break in its value")
        out.append((name, value))
    return tuple(out)


@dataclass(frozen=True)
class Response:
    """An HTTP response to send: status, headers and one of ``json``/``text``/``body``.

    ``delay`` (seconds, or a :class:`Delay`) waits before the headers;
    ``dribble`` (a :class:`Dribble` or ``(chunks, seconds)``) spreads the body.
    """

    status: int = 200
    json: Any = _MISSING
    text: str | None = None
    body: bytes | None = None
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None
    delay: float | str | Delay | None = None
    dribble: Dribble | tuple[int, float] | str | None = None
    _delay: Delay | None = field(init=False, repr=False, compare=False, default=None)
    _dribble: Dribble | None = field(init=False, repr=False, compare=False, default=None)
    _headers: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False,
                                                  default=())

    def __post_init__(self) -> None:
        if isinstance(self.status, bool) or not isinstance(self.status, int) \
                or not 100 <= self.status <= 599:
            raise ConfigError(f"Response: status must be an integer 100-599, got "
                              f"{self.status!r}")
        given = [n for n, v in (("json", self.json is not _MISSING),
                                ("text", self.text is not None),
                                ("body", self.body is not None)) if v]
        if len(given) > 1:
            raise ConfigError(f"Response: give only one of json, text or body (got "
                              f"{' and '.join(given)})")
        if self.text is not None and not isinstance(self.text, str):
            raise ConfigError(f"Response: text must be a str, got {type(self.text).__name__}")
        if self.body is not None and not isinstance(self.body, bytes | bytearray):
            raise ConfigError(f"Response: body must be bytes, got {type(self.body).__name__}")
        if self.json is not _MISSING:
            try:
                _json.dumps(self.json)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"Response: json is not JSON-serialisable: {exc}") from None
        object.__setattr__(self, "_headers", _clean_headers(self.headers, "Response"))
        if self.delay is not None:
            object.__setattr__(self, "_delay", parse_delay(self.delay, "Response: delay"))
        if self.dribble is not None:
            object.__setattr__(self, "_dribble", _parse_dribble(self.dribble, "Response: dribble"))

    def times(self, n: int) -> Step:
        """This response ``n`` times in a row."""
        return times(self, n)

    def forever(self) -> Step:
        """This response for every request from now on."""
        return forever(self)

    def content(self) -> tuple[bytes, str | None]:
        """The body bytes and the content type they imply."""
        if self.json is not _MISSING:
            return _json.dumps(self.json).encode(), "application/json"
        if self.text is not None:
            return self.text.encode(), "text/plain; charset=utf-8"
        if self.body is not None:
            return bytes(self.body), None
        return b"", None

    def reply(self, rng: random.Random) -> Reply:
        body, ctype = self.content()
        headers = list(self._headers)
        if ctype is not None and not any(n.lower() == "content-type" for n, _ in headers):
            headers.append(("Content-Type", ctype))
        return Reply("response", self.status, tuple(headers), body,
                     self._delay.draw(rng) if self._delay else 0.0, self._dribble)

    def describe(self) -> str:
        parts = [str(self.status)]
        if self._delay is not None:
            parts.append(f"delay={self._delay.describe()}")
        if self._dribble is not None:
            parts.append(f"dribble={self._dribble.describe()}")
        body, _ = self.content()
        if body:
            shown = body[:40].decode("utf-8", "replace")
            parts.append(shown + ("..." if len(body) > 40 else ""))
        return " ".join(parts)


@dataclass(frozen=True)
class Fault:
    """A socket-level failure instead of a response.

    ``empty``: close the connection before sending any byte;
    ``malformed``: valid headers (chunked), then a malformed chunk, then close;
    ``truncated``: headers announcing 64 bytes, 18 bytes of JSON, then close;
    ``garbage``: ``size`` random bytes (not HTTP), then close;
    ``reset``: connection reset by peer (RST, via ``SO_LINGER`` 0);
    ``hang``: never answer; the connection stays open until the client gives up.
    """

    kind: FaultKind
    delay: float | str | Delay | None = None
    size: int = 64
    _delay: Delay | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ConfigError(f"Fault: unknown kind {self.kind!r}; choose one of "
                              f"{', '.join(FAULT_KINDS)}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"Fault: size must be a positive integer, got {self.size!r}")
        if self.delay is not None:
            object.__setattr__(self, "_delay", parse_delay(self.delay, "Fault: delay"))

    @classmethod
    def empty(cls, delay: float | str | Delay | None = None) -> Fault:
        return cls("empty", delay)

    @classmethod
    def malformed(cls, delay: float | str | Delay | None = None) -> Fault:
        return cls("malformed", delay)

    @classmethod
    def truncated(cls, delay: float | str | Delay | None = None) -> Fault:
        return cls("truncated", delay)

    @classmethod
    def garbage(cls, delay: float | str | Delay | None = None, size: int = 64) -> Fault:
        return cls("garbage", delay, size)

    @classmethod
    def reset(cls, delay: float | str | Delay | None = None) -> Fault:
        return cls("reset", delay)

    @classmethod
    def hang(cls) -> Fault:
        return cls("hang")

    def times(self, n: int) -> Step:
        return times(self, n)

    def forever(self) -> Step:
        return forever(self)

    def reply(self, rng: random.Random) -> Reply:
        delay = self._delay.draw(rng) if self._delay else 0.0
        if self.kind == "garbage":
            # Random bytes that can never start an HTTP status line, in lines and ending
            # in a blank line, so a client's parser sees a bad head instead of waiting.
            data = b"".join(bytes(rng.randrange(0x80, 0x100) for _ in range(min(30, n))) + b"\r\n"
                            for n in range(self.size, 0, -30)) + b"\r\n"
            return Reply("garbage", body=data, delay=delay)
        if self.kind in ("malformed", "truncated"):
            return Reply(self.kind, 200, (("Content-Type", "application/json"),),
                         TRUNCATED_BODY if self.kind == "truncated" else b"", delay=delay)
        return Reply(self.kind, delay=delay)

    def describe(self) -> str:
        return self.kind + (f" delay={self._delay.describe()}" if self._delay else "")


Handler: TypeAlias = Callable[["RecordedRequest"], "StepLike | Awaitable[StepLike]"]
Action: TypeAlias = Response | Fault | Handler
StepLike: TypeAlias = "Step | Response | Fault | str | Mapping[str, Any] | Handler"


@dataclass(frozen=True)
class Step:
    """One entry of a script: an action used ``count`` times (``None``: forever)."""

    action: Action
    count: int | None = 1
    source: str = ""

    def __post_init__(self) -> None:
        if self.count is not None and (isinstance(self.count, bool)
                                       or not isinstance(self.count, int) or self.count < 1):
            raise ConfigError(f"step {self.describe()!r}: times must be a positive integer, "
                              f"got {self.count!r}")

    def times(self, n: int) -> Step:
        return Step(self.action, n, self.source)

    def forever(self) -> Step:
        return Step(self.action, None, self.source)

    def describe(self) -> str:
        if self.source:
            return self.source
        action = self.action
        if isinstance(action, Response | Fault):
            text = action.describe()
        else:
            text = f"callable {getattr(action, '__qualname__', repr(action))}"
        if self.count is None:
            return text + " forever"
        return text + (f" x{self.count}" if self.count != 1 else "")


def times(action: StepLike, n: int) -> Step:
    """``action`` (any step form) ``n`` times in a row."""
    step = parse_step(action, "times()")
    return Step(step.action, n, "")


def forever(action: StepLike) -> Step:
    """``action`` (any step form) for every request from now on."""
    step = parse_step(action, "forever()")
    return Step(step.action, None, "")


def retry_after(after: int | datetime, status: int = 503, **kwargs: Any) -> Response:
    """A response (503 by default) carrying ``Retry-After``: whole seconds or an HTTP date."""
    headers = dict(kwargs.pop("headers", None) or {})
    headers["Retry-After"] = _retry_after_value(after, "retry_after()")
    return Response(status, headers=headers, **kwargs)


def too_many_requests(retry_after: int | datetime | None = None, **kwargs: Any) -> Response:
    """A 429 Too Many Requests, with ``Retry-After`` when given."""
    headers = dict(kwargs.pop("headers", None) or {})
    if retry_after is not None:
        headers["Retry-After"] = _retry_after_value(retry_after, "too_many_requests()")
    return Response(429, headers=headers, **kwargs)


def _retry_after_value(after: object, what: str) -> str:
    if isinstance(after, datetime):
        when = after if after.tzinfo else after.replace(tzinfo=UTC)
        return format_datetime(when.astimezone(UTC), usegmt=True)
    if isinstance(after, int) and not isinstance(after, bool) and after >= 0:
        return str(after)
    if isinstance(after, str) and after.isdigit():
        return after
    raise ConfigError(f"{what}: Retry-After must be whole seconds >= 0 or a datetime, got "
                      f"{after!r} (clients such as urllib3 ignore fractional values)")


# -------------------------------------------------------------------------- parsing

_OPTION_RE = re.compile(r"^(x\d+|x\*|forever|[a-z][a-z_-]*=\S*)$")
_STRING_OPTIONS = ("xN", "x*", "forever", "delay=", "dribble=", "retry-after=", "content-type=")
_MAPPING_KEYS = ("status", "json", "text", "body", "headers", "delay", "dribble", "times",
                 "fault", "retry_after", "size")


def parse_step(value: object, where: str) -> Step:
    """Any step form -> a validated :class:`Step`; ``where`` names it in errors."""
    if isinstance(value, Step):
        return value
    if isinstance(value, Response | Fault):
        return Step(value)
    if isinstance(value, str):
        return _parse_string(value, where)
    if isinstance(value, Mapping):
        return _parse_mapping(value, where)
    if isinstance(value, HTTPStatus):
        return Step(Response(int(value)))
    if isinstance(value, int) and not isinstance(value, bool):
        return _wrap(where, repr(value), lambda: Step(Response(value)))
    if callable(value):
        return Step(cast(Handler, value))
    raise ConfigError(f"{where}: {value!r} is not a step; use a string like '503 x3', a "
                      f"Response, a Fault, a mapping or a callable ({README})")


def _wrap(where: str, text: str, build: Callable[[], Step]) -> Step:
    try:
        return build()
    except ConfigError as exc:
        raise ConfigError(f"{where} {text!r}: {exc}") from None


def _parse_string(text: str, where: str) -> Step:
    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{where} {text!r}: {msg} ({README})")

    rest = text.strip()
    if not rest:
        raise fail("empty step; expected a status code like 200 or a fault")
    head, _, rest = rest.partition(" ")
    rest = rest.lstrip()
    count: int | None = 1
    options: dict[str, str] = {}
    while rest:
        token, _, after = rest.partition(" ")
        if not _OPTION_RE.match(token):
            break
        if token in ("x*", "forever"):
            count = None
        elif token.startswith("x") and token[1:].isdigit():
            count = int(token[1:])
            if count < 1:
                raise fail(f"{token}: the count must be at least 1")
        else:
            key, _, val = token.partition("=")
            key = key.replace("_", "-")
            if key not in ("delay", "dribble", "retry-after", "content-type"):
                raise fail(f"unknown option {key!r}; valid options: {', '.join(_STRING_OPTIONS)}")
            if key in options:
                raise fail(f"option {key!r} given twice")
            if not val:
                raise fail(f"option {key!r} has no value")
            options[key] = val
        rest = after.lstrip()
    body = rest

    try:
        delay = parse_delay(options["delay"], "delay", unit_required=True) \
            if "delay" in options else None
        if head in FAULT_KINDS:
            for key in ("dribble", "retry-after", "content-type"):
                if key in options:
                    raise fail(f"option {key!r} does not apply to the fault {head!r}")
            if body:
                raise fail(f"the fault {head!r} takes no body (got {body!r}); only xN, "
                           "forever and delay= apply")
            return Step(Fault(head, delay), count, text)
        if not re.fullmatch(r"[1-5][0-9][0-9]", head):
            raise fail(f"{head!r} is not a status code (100-599) or a fault "
                       f"({', '.join(FAULT_KINDS)})")
        headers: dict[str, str] = {}
        if "retry-after" in options:
            headers["Retry-After"] = _retry_after_value(options["retry-after"], "retry-after")
        kwargs: dict[str, Any] = {}
        if body[:1] in ("{", "["):
            try:
                kwargs["json"] = _json.loads(body)
            except ValueError as exc:
                raise fail(f"body starts like JSON but is not valid JSON: {exc}") from None
        elif body:
            kwargs["text"] = body
        if "content-type" in options:
            headers["Content-Type"] = options["content-type"]
        dribble = _parse_dribble(options["dribble"], "dribble") if "dribble" in options else None
        response = Response(int(head), headers=headers or None, delay=delay, dribble=dribble,
                            **kwargs)
    except ConfigError as exc:
        if str(exc).startswith(f"{where} {text!r}"):
            raise
        raise fail(str(exc)) from None
    return Step(response, count, text)


def _parse_mapping(value: Mapping[str, Any], where: str) -> Step:
    shown = dict(value)
    unknown = [k for k in value if k not in _MAPPING_KEYS]
    if unknown:
        raise ConfigError(f"{where} {shown!r}: unknown key {unknown[0]!r}; valid keys: "
                          f"{', '.join(_MAPPING_KEYS)} ({README})")
    raw_count = value.get("times", 1)
    count: int | None
    if raw_count in ("forever", "*", None):
        count = None
    elif isinstance(raw_count, int) and not isinstance(raw_count, bool) and raw_count >= 1:
        count = raw_count
    else:
        raise ConfigError(f"{where} {shown!r}: times must be a positive integer or 'forever', "
                          f"got {raw_count!r}")

    def build() -> Step:
        if "fault" in value:
            extra = [k for k in value if k not in ("fault", "delay", "times", "size")]
            if extra:
                raise ConfigError(f"key {extra[0]!r} does not apply to a fault")
            return Step(Fault(value["fault"], value.get("delay"), value.get("size", 64)), count)
        if "size" in value:
            raise ConfigError("key 'size' applies only to faults")
        headers = dict(_clean_headers(value.get("headers"), "headers"))
        if value.get("retry_after") is not None:
            headers["Retry-After"] = _retry_after_value(value["retry_after"], "retry_after")
        body = value.get("body")
        if isinstance(body, str):
            body = body.encode()
        return Step(Response(value.get("status", 200), json=value.get("json", _MISSING),
                             text=value.get("text"), body=body, headers=headers or None,
                             delay=value.get("delay"), dribble=value.get("dribble")), count)

    return _wrap(where, repr(shown), build)


@dataclass(frozen=True)
class Script:
    """The validated script of one route."""

    steps: tuple[Step, ...]
    default: Step | None = None
    cycle: bool = False


def parse_script(steps: object, where: str, *, default: object = None,
                 cycle: bool = False) -> Script:
    """A step or a list of steps (any forms) -> a :class:`Script`.

    Errors name the route and the step: ``GET /x step 2 '5O3': ...``.
    """
    items: list[object]
    if isinstance(steps, Sequence) and not isinstance(steps, str | bytes):
        items = list(steps)
    else:
        items = [steps]
    parsed = tuple(parse_step(item, f"{where} step {i}") for i, item in enumerate(items, 1))
    for i, step in enumerate(parsed[:-1], 1):
        if step.count is None and not cycle:
            raise ConfigError(f"{where} step {i} {step.describe()!r} repeats forever, so the "
                              f"steps after it can never answer; make it the last step")
    if cycle and any(step.count is None for step in parsed):
        raise ConfigError(f"{where}: cycle=True needs a finite count on every step")
    dflt = None
    if default is not None:
        dflt = parse_step(default, f"{where} default")
        if dflt.count != 1:
            raise ConfigError(f"{where} default: a default answers every request left over; "
                              "it takes no count")
    if not parsed and dflt is None:
        raise ConfigError(f"{where}: the script is empty; give at least one step or a default")
    return Script(parsed, dflt, cycle)


def coerce_reply(result: object, where: str, rng: random.Random) -> Reply:
    """What a callable step returned -> a concrete :class:`Reply`."""
    if isinstance(result, Reply):
        return result
    step = parse_step(result, where)
    if not isinstance(step.action, Response | Fault):
        raise ConfigError(f"{where}: a callable step must return a Response, a Fault, a "
                          f"string or a mapping, not {result!r}")
    return step.action.reply(rng)
