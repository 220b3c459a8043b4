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

The names (status, the socket faults, the options and mapping keys), which
option applies to which fault, and the value rules (status 100-599, durations,
delay kinds, dribble, Retry-After, times, size) come from
:mod:`pytest_resilience.faults` (``HTTP_FAULTS``), read on every parse.
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

from pytest_resilience import faults
from pytest_resilience.errors import ConfigError
from pytest_resilience.faults import parse_duration
from pytest_resilience.toxiproxy.client import user_facing_call

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


def _hide_config_errors(excinfo: Any) -> bool:
    """pytest's ``__tracebackhide__`` for this module's frames: a :class:`ConfigError`
    (a script mistake) is shown at the user's line, without the parser's frames, and
    without the ``__init__`` that ``dataclasses`` generates with this module's globals."""
    return isinstance(getattr(excinfo, "value", None), ConfigError)


__tracebackhide__ = _hide_config_errors

#: The socket faults, for type checkers (tests check it matches ``faults.socket_faults()``).
FaultKind = Literal["empty", "malformed", "truncated", "garbage", "reset", "hang"]
#: The socket faults of :data:`pytest_resilience.faults.HTTP_FAULTS` when this module was
#: imported; validation reads ``faults.socket_faults()`` live.
FAULT_KINDS: tuple[FaultKind, ...] = cast("tuple[FaultKind, ...]", faults.socket_faults())
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

    @user_facing_call
    def __post_init__(self) -> None:
        faults.check_delay("fixed", (self.seconds,))

    def draw(self, rng: random.Random) -> float:
        return self.seconds

    def describe(self) -> str:
        return _fmt_duration(self.seconds)


@dataclass(frozen=True)
class Uniform(Delay):
    """Uniformly drawn from ``[low, high]`` seconds."""

    low: float
    high: float

    @user_facing_call
    def __post_init__(self) -> None:
        faults.check_delay("uniform", (self.low, self.high))

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

    @user_facing_call
    def __post_init__(self) -> None:
        faults.check_delay("lognormal", (self.median, self.sigma))

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

    @user_facing_call
    def __post_init__(self) -> None:
        faults.check_dribble(self.chunks, self.over)

    def describe(self) -> str:
        return f"{self.chunks}/{_fmt_duration(self.over)}"


def _fmt_duration(seconds: float) -> str:
    if seconds >= 1 or seconds == 0:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


_DELAYS: dict[str, Callable[..., Delay]] = {"fixed": Fixed, "uniform": Uniform,
                                           "lognormal": LogNormal}


@user_facing_call
def parse_delay(value: object, what: str = "delay", *, unit_required: bool = False) -> Delay:
    """A :class:`Delay`, a number of seconds, ``"100ms"``, ``"uniform(50ms,150ms)"``,
    ``"lognormal(100ms,0.5)"`` or a mapping ``{"uniform": [a, b]}`` -> :class:`Delay`."""
    if isinstance(value, Delay):
        return value
    kind, params = faults.delay_parts(value, what, unit_required=unit_required)
    return _DELAYS[kind](*params)


def _parse_dribble(value: object, what: str) -> Dribble:
    if isinstance(value, Dribble):
        return value
    return Dribble(*faults.dribble_parts(value, what))


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

    @user_facing_call
    def __post_init__(self) -> None:
        faults.check_value("status", "status", self.status, label="Response", shown="status")
        given = [n for n, v in (("json", self.json is not _MISSING),
                                ("text", self.text is not None),
                                ("body", self.body is not None)) if v]
        faults.check_exclusive("status", given, "Response")
        if self.text is not None and not isinstance(self.text, str):
            raise ConfigError(f"Response: text must be a str, got {type(self.text).__name__}")
        if self.body is not None and not isinstance(self.body, bytes | bytearray):
            raise ConfigError(f"Response: body must be bytes, got {type(self.body).__name__}")
        if self.json is not _MISSING:
            faults.check_value("status", "json", self.json, label="Response", shown="json")
        object.__setattr__(self, "_headers", faults.check_headers(self.headers, "Response"))
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

    @user_facing_call
    def __post_init__(self) -> None:
        kinds = faults.socket_faults()
        if self.kind not in kinds:
            raise ConfigError(f"Fault: unknown kind {self.kind!r}; choose one of "
                              f"{', '.join(kinds)}")
        # Only faults with a size (garbage) use it; the rule is the same for all.
        sized = self.kind if faults.get(self.kind).attribute("size") else "garbage"
        faults.check_value(sized, "size", self.size, label="Fault", shown="size")
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

    @user_facing_call
    def __post_init__(self) -> None:
        if self.count is not None and (isinstance(self.count, bool)
                                       or not isinstance(self.count, int) or self.count < 1):
            raise ConfigError(f"step {self.describe()!r}: times must be {faults.TIMES.bounds}, "
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


@user_facing_call
def times(action: StepLike, n: int) -> Step:
    """``action`` (any step form) ``n`` times in a row."""
    step = parse_step(action, "times()")
    return Step(step.action, n, "")


@user_facing_call
def forever(action: StepLike) -> Step:
    """``action`` (any step form) for every request from now on."""
    step = parse_step(action, "forever()")
    return Step(step.action, None, "")


@user_facing_call
def retry_after(after: int | datetime, status: int = 503, **kwargs: Any) -> Response:
    """A response (503 by default) carrying ``Retry-After``: whole seconds or an HTTP date."""
    headers = dict(kwargs.pop("headers", None) or {})
    headers["Retry-After"] = _retry_after_value(after, "retry_after()")
    return Response(status, headers=headers, **kwargs)


@user_facing_call
def too_many_requests(retry_after: int | datetime | None = None, **kwargs: Any) -> Response:
    """A 429 Too Many Requests, with ``Retry-After`` when given."""
    headers = dict(kwargs.pop("headers", None) or {})
    if retry_after is not None:
        headers["Retry-After"] = _retry_after_value(retry_after, "too_many_requests()")
    return Response(429, headers=headers, **kwargs)


def _retry_after_value(after: object, what: str) -> str:
    after = faults.check_retry_after(after, what)
    if isinstance(after, datetime):
        when = after if after.tzinfo else after.replace(tzinfo=UTC)
        return format_datetime(when.astimezone(UTC), usegmt=True)
    return str(after)


# -------------------------------------------------------------------------- parsing

_OPTION_RE = re.compile(r"^(x\d+|x\*|forever|[a-z][a-z_-]*=\S*)$")
#: ``x`` then a digit or ``*`` that is not a valid count (``x3x``, ``x*2``, ``X3``,
#: ``x1.5``): a typo, never the first word of a text body
_COUNT_TYPO_RE = re.compile(r"^[xX][\d*]")


def _join(items: Sequence[str]) -> str:
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else "".join(items)


def _string_options(fault: faults.FaultDef | None = None) -> list[str]:
    """The compact form's options (of one fault) as messages list them: ``xN, x*, forever,
    delay=, ...``, from :mod:`pytest_resilience.faults`."""
    if fault is None:
        return ["xN", "x*", "forever", *(f"{o}=" for o in faults.string_options())]
    return ["xN", "forever", *(f"{a.option}=" for a in fault.all_attributes if a.option)]


def _mapping_keys() -> list[str]:
    """Every key of the mapping form: a response's attributes, ``fault``, the faults' ones."""
    keys = dict.fromkeys(a.name for a in faults.get("status").all_attributes)
    keys["fault"] = None
    for fault in faults.HTTP_FAULTS.values():
        keys.update(dict.fromkeys(a.name for a in fault.all_attributes))
    return list(keys)


def _taking(key: str) -> list[str]:
    """The socket faults that take the attribute ``key``."""
    return [f for f in faults.socket_faults() if faults.get(f).attribute(key) is not None]


def _status_range() -> tuple[int, int]:
    status = faults.get("status").attribute("status")
    assert status is not None, "faults.HTTP_FAULTS['status'] has a status attribute"
    low, high = status.minimum, status.maximum
    assert low is not None, "the status attribute has a minimum"
    assert high is not None, "the status attribute has a maximum"
    return int(low), int(high)


@user_facing_call
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
    known = faults.string_options()
    while rest:
        token, _, after = rest.partition(" ")
        if not _OPTION_RE.match(token):
            if _COUNT_TYPO_RE.match(token):
                raise fail(f"{token!r} is not a count; write xN (a whole number, e.g. x3), "
                           "x* or forever")
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
            if key not in known:
                raise fail(f"unknown option {key!r}; valid options: "
                           f"{', '.join(_string_options())}")
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
        socket_faults = faults.socket_faults()
        if head in socket_faults:
            fault = faults.get(head)
            for key in options:
                if fault.option(key) is None:
                    raise fail(f"option {key!r} does not apply to the fault {head!r}")
            if body:
                raise fail(f"the fault {head!r} takes no body (got {body!r}); only "
                           f"{_join(_string_options(fault))} apply")
            extra: dict[str, Any] = {}
            if "size" in options:
                raw = options["size"]
                extra["size"] = int(raw) if raw.isdigit() else raw  # Fault names a bad one
            return Step(Fault(cast(FaultKind, head), delay, **extra), count, text)
        low, high = _status_range()
        if not (head.isascii() and head.isdigit() and str(int(head)) == head
                and low <= int(head) <= high):
            raise fail(f"{head!r} is not a status code ({low}-{high}) or a fault "
                       f"({', '.join(socket_faults)})")
        status = faults.get("status")
        for key in options:
            if status.option(key) is None:
                raise fail(f"option {key!r} does not apply to a status response, only to the "
                           f"fault {_join(_taking(_attribute_of(key)))}")
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


def _attribute_of(option: str) -> str:
    """The attribute name of a compact-form option (``retry-after`` -> ``retry_after``)."""
    return faults.string_options().get(option, option)


def _parse_mapping(value: Mapping[str, Any], where: str) -> Step:
    shown = dict(value)
    keys = _mapping_keys()
    unknown = [k for k in value if k not in keys]
    if unknown:
        raise ConfigError(f"{where} {shown!r}: unknown key {unknown[0]!r}; valid keys: "
                          f"{', '.join(keys)} ({README})")
    count = faults.parse_times(value.get("times", 1), f"{where} {shown!r}: times")

    def build() -> Step:
        kind = value.get("fault", "status")
        if kind != "status":
            fault = faults.HTTP_FAULTS.get(kind) if isinstance(kind, str) else None
            if fault is not None:
                extra = [k for k in value if k != "fault" and fault.attribute(k) is None]
                if extra:
                    raise ConfigError(f"key {extra[0]!r} does not apply to a fault (the fault "
                                      f"{kind!r} takes {', '.join(['fault', *_keys_of(fault)])})")
            size = {"size": value["size"]} if "size" in value else {}
            return Step(Fault(kind, value.get("delay"), **size), count)
        status = faults.get("status")
        extra = [k for k in value if k != "fault" and status.attribute(k) is None]
        if extra:
            raise ConfigError(f"key {extra[0]!r} applies only to faults "
                              f"({', '.join(_taking(extra[0]))})")
        headers = dict(faults.check_headers(value.get("headers"), "headers"))
        if value.get("retry_after") is not None:
            headers["Retry-After"] = _retry_after_value(value["retry_after"], "retry_after")
        if value.get("content_type") is not None:
            headers["Content-Type"] = faults.check_value(
                "status", "content_type", value["content_type"], label="", shown="content_type")
        body = value.get("body")
        if isinstance(body, str):
            body = body.encode()
        status_default = status.attribute("status")
        return Step(Response(value.get("status", status_default and status_default.default),
                             json=value.get("json", _MISSING), text=value.get("text"),
                             body=body, headers=headers or None, delay=value.get("delay"),
                             dribble=value.get("dribble")), count)

    return _wrap(where, repr(shown), build)


def _keys_of(fault: faults.FaultDef) -> list[str]:
    return [a.name for a in fault.all_attributes]


@dataclass(frozen=True)
class Script:
    """The validated script of one route."""

    steps: tuple[Step, ...]
    default: Step | None = None
    cycle: bool = False


@user_facing_call
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
