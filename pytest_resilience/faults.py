"""The fault vocabulary: every fault the plugin can inject, named once, with its attributes.

Pure data and validation (stdlib only, no I/O), so it is cheap to import. The
Toxiproxy client, the built-in engine's validation, the fake HTTP backends'
script parser — and later scenario YAML, its JSON Schema and Hypothesis fault
schedules — read their fault names and attribute rules from here.

A fault *spec* is a mapping ``{"fault": NAME, ATTRIBUTE: VALUE, ...}``::

    {"fault": "latency", "latency": 200, "jitter": 20, "stream": "upstream"}
    {"fault": "down"}
    {"fault": "status", "status": 503, "times": 3}
    {"fault": "reset", "delay": "50ms"}

Three layers:

* **network** (``NETWORK_FAULTS``): the Toxiproxy toxics (``latency``,
  ``bandwidth``, ``slow_close``, ``timeout``, ``reset_peer``, ``slicer``,
  ``limit_data``, ``noop``) plus ``down`` (the proxy disabled) and ``fail_first``
  (the next ``count`` connections fail; an extension of the built-in engine, not a
  toxic: ``proxy.fail_first(count, mode=...)``). A toxic's
  ``attributes`` are the Toxiproxy ``attributes`` object (integers; in Go field
  order, the order toxiproxy-server prints them in); its ``options`` are the
  toxic's other fields (``stream``, ``toxicity``, ``name``).
* **http** (``HTTP_FAULTS``): what one step of a fake HTTP backend's script
  answers: ``status`` (a response; slow responses, slow bodies and Retry-After
  are its ``delay``, ``dribble`` and ``retry_after`` attributes, which combine,
  e.g. ``"429 retry-after=2 delay=1s"``) or one of the socket faults ``empty``,
  ``malformed``, ``truncated``, ``garbage``, ``reset``, ``hang``. Their option
  is ``times`` (``3``, or ``"forever"``).
* **postgres** (``POSTGRES_FAULTS``): the faults of the Postgres-protocol stage
  (``pytest_resilience.pgwire``): ``sqlstate`` (the server raises an ERROR),
  ``fatal``, ``refuse_startup`` and ``cut_mid_response``, on the statements that
  ``match`` (``nth``, ``times``, ``probability``, ``seed``).

:func:`validate` checks a spec and raises
:class:`~pytest_resilience.errors.ConfigError` naming the fault, the attribute,
the bad value and the rule; :func:`json_schema` describes a spec as JSON
Schema; :func:`register` adds a fault, which the consumers then know (the
engine and the HTTP backends still need an implementation to *run* a new one:
see :func:`register`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pytest_resilience.errors import ConfigError

__all__ = [
    "DELAY_KINDS",
    "DRIBBLE_CHUNKS",
    "DURATION_PATTERN",
    "DURATION_UNITS",
    "FAIL_FIRST_ATTRIBUTES",
    "FAIL_FIRST_MODES",
    "HTTP_FAULTS",
    "NETWORK_FAULTS",
    "POSTGRES_FAULTS",
    "STREAM",
    "TIMES",
    "TOXICITY",
    "TOXIC_NAME",
    "TOXIC_OPTIONS",
    "Attribute",
    "FaultDef",
    "Violation",
    "check_attributes",
    "check_delay",
    "check_dribble",
    "check_exclusive",
    "check_headers",
    "check_retry_after",
    "check_value",
    "crash_violation",
    "delay_parts",
    "dribble_parts",
    "get",
    "json_schema",
    "names",
    "non_negative",
    "parse_duration",
    "parse_times",
    "register",
    "socket_faults",
    "string_options",
    "toxic_types",
    "unregister",
    "validate",
    "with_defaults",
]

Layer = Literal["network", "http", "postgres"]
#: How an attribute's value is written and checked.
ValueType = Literal[
    "integer", "number", "string", "any", "body", "headers",
    "duration", "delay", "dribble", "retry_after", "times",
]

README = "see the 'Fault vocabulary' section of the pytest-resilience README"


# ------------------------------------------------------------------------ durations


def non_negative(what: str, value: object, unit: str = " seconds") -> None:
    """``value`` must be a finite number >= 0 (a bool is not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        of = f" of{unit}" if unit else ""
        raise ConfigError(f"{what} must be a number{of}, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{what} must be a finite number >= 0{unit}, got {value!r}")


DURATION_PATTERN = r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(us|µs|ms|s|m|h)\s*$"
_DURATION_RE = re.compile(DURATION_PATTERN)
#: Seconds per duration unit.
DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object, what: str = "duration", *, unit_required: bool = False) -> float:
    """``"100ms"`` / ``"1.5s"`` / ``250`` (seconds) -> seconds, or a ``ConfigError``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if unit_required:
            raise ConfigError(f"{what} {value!r} needs a unit: e.g. 100ms or 1.5s")
        non_negative(what, value)
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
        seconds = float(m.group(1)) * DURATION_UNITS[m.group(2)]
        non_negative(what, seconds)
        return seconds
    raise ConfigError(f"{what} must be a duration like '100ms' or a number of seconds, "
                      f"got {value!r}")


# --------------------------------------------------------------------- attributes


def _num(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Attribute:
    """One attribute of a fault: its name, type, unit, default and rules.

    ``default`` is what applies when it is omitted (for a toxic: what
    toxiproxy-server assumes). ``minimum``/``maximum`` bound numbers;
    ``at_most`` names another attribute this one must not exceed; ``choices``
    lists the allowed strings (compared lower-cased); ``pattern`` is a regex a
    string must match; ``rule`` is how the rule reads in messages when the
    derived wording would not do. ``crash`` says why toxiproxy-server crashes
    on a value outside the bounds: the built-in engine answers those with 400
    (other out-of-bounds values the real server accepts, so the engine does too).
    ``option`` is the key in the compact string form of an HTTP step
    (``"retry-after"`` in ``"429 retry-after=2"``).
    """

    name: str
    type: ValueType
    description: str
    unit: str | None = None
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    at_most: str | None = None
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    required: bool = False
    rule: str | None = None
    crash: str | None = None
    option: str | None = None

    @property
    def bounds(self) -> str:
        """The value rule in words: ``">= 0"``, ``"between 0 and average_size"``, ``"an
        integer 100-599"``."""
        if self.rule is not None:
            return self.rule
        if self.choices:
            return "one of " + ", ".join(self.choices)
        low = None if self.minimum is None else _num(self.minimum)
        high = self.at_most or (None if self.maximum is None else _num(self.maximum))
        if low is not None and high is not None:
            return f"between {low} and {high}"
        if low is not None:
            return f">= {low}"
        if high is not None:
            return f"<= {high}"
        return _TYPE_WORDS[self.type]

    def check(self, value: object, *, label: str = "", shown: str | None = None) -> Any:
        """``value`` checked against this attribute's type and bounds (not ``at_most``,
        which needs the other attributes: :func:`check_attributes`).

        Returns the value, normalised: a lower-cased choice, a float for a
        number; for the HTTP types the parsed form (seconds, ``(kind, params)``
        for a delay, ``(chunks, seconds)`` for a dribble, ``None`` for forever).
        ``label`` prefixes the message (``"latency toxic"``) and ``shown`` is
        how the attribute is named in it (default: quoted, ``'latency'``).
        """
        shown = repr(self.name) if shown is None else shown
        what = f"{label}: {shown}" if label else shown

        def fail(rule: str) -> ConfigError:
            return ConfigError(f"{what} must be {rule}, got {value!r}")

        kind = self.type
        if kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise fail(self.rule or "an integer")
            self._check_bounds(value, fail)
            return value
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                raise fail(self.rule or "a number")
            self._check_bounds(value, fail)
            return float(value)
        if kind == "string":
            if not isinstance(value, str):
                raise fail(self.bounds if self.choices else self.rule or "a string")
            if self.choices:
                if value.lower() not in self.choices:
                    raise fail(self.bounds)
                return value.lower()
            if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
                raise fail(self.rule or f"a string matching {self.pattern}")
            return value
        if kind == "body":
            if not isinstance(value, str | bytes | bytearray):
                raise fail("text or bytes")
            return value
        if kind == "headers":
            return check_headers(value, label or shown)
        if kind == "duration":
            return parse_duration(value, what)
        if kind == "delay":
            return delay_parts(value, what)
        if kind == "dribble":
            return dribble_parts(value, what)
        if kind == "retry_after":
            return check_retry_after(value, what)
        if kind == "times":
            return parse_times(value, what)
        import json  # already loaded in practice; kept off the import path

        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{what} is not JSON-serialisable: {exc}") from None
        return value  # "any"

    def _check_bounds(self, value: float, fail: Any) -> None:
        if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum):
            raise fail(self.rule or self.bounds)

    def schema(self) -> dict[str, Any]:
        """A JSON Schema for this attribute's value."""
        out: dict[str, Any] = dict(_TYPE_SCHEMAS[self.type])
        if self.type in ("integer", "number"):
            if self.minimum is not None:
                out["minimum"] = self.minimum
            if self.maximum is not None:
                out["maximum"] = self.maximum
        if self.choices:
            out["enum"] = list(self.choices)
        if self.pattern is not None:
            out["pattern"] = self.pattern
        text = self.description
        if self.unit:
            text += f" (unit: {self.unit})"
        if self.at_most:
            text += f"; at most {self.at_most}"
        out["description"] = text
        if self.default is not None:
            out["default"] = self.default
        return out


_TYPE_WORDS: dict[str, str] = {
    "integer": "an integer", "number": "a number", "string": "a string", "any": "any JSON value",
    "body": "text", "headers": "a mapping of header names to values",
    "duration": "a duration like 100ms", "delay": "a delay", "dribble": "N/DURATION",
    "retry_after": "whole seconds >= 0", "times": "a positive integer or 'forever'",
}
_DURATION_SCHEMA: list[dict[str, Any]] = [
    {"type": "number", "minimum": 0},
    {"type": "string", "pattern": DURATION_PATTERN},
]
_TYPE_SCHEMAS: dict[str, dict[str, Any]] = {
    "integer": {"type": "integer"},
    "number": {"type": "number"},
    "string": {"type": "string"},
    "any": {},
    "body": {"type": "string"},
    "headers": {"oneOf": [
        {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
        {"type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2}},
    ]},
    "duration": {"oneOf": _DURATION_SCHEMA},
    "delay": {"oneOf": [
        *_DURATION_SCHEMA,
        {"type": "string", "pattern": r"^\s*(uniform|lognormal)\s*\(.*\)\s*$"},
        {"type": "object", "minProperties": 1, "maxProperties": 1, "properties": {
            "fixed": {"oneOf": _DURATION_SCHEMA},
            "uniform": {"type": "array", "minItems": 2, "maxItems": 2},
            "lognormal": {"type": "array", "minItems": 2, "maxItems": 2},
        }, "additionalProperties": False},
    ]},
    "dribble": {"oneOf": [
        {"type": "string", "pattern": r"^\s*[0-9]+/.+$"},
        {"type": "object", "required": ["chunks", "over"], "additionalProperties": False,
         "properties": {"chunks": {"type": "integer", "minimum": 1},
                        "over": {"oneOf": _DURATION_SCHEMA}}},
    ]},
    "retry_after": {"oneOf": [{"type": "integer", "minimum": 0},
                              {"type": "string", "pattern": "^[0-9]+$"}]},
    "times": {"oneOf": [{"type": "integer", "minimum": 1},
                        {"enum": ["forever", "*", None]}]},
}


# ------------------------------------------------------------------- HTTP values

#: Random delay kinds of HTTP steps and their parameters (in order).
DELAY_KINDS: dict[str, tuple[Attribute, ...]] = {
    "fixed": (Attribute("seconds", "number", "always this long", "s", minimum=0),),
    "uniform": (Attribute("low", "number", "shortest delay", "s", minimum=0),
                Attribute("high", "number", "longest delay (>= low)", "s", minimum=0)),
    "lognormal": (Attribute("median", "number", "median delay", "s", minimum=0),
                  Attribute("sigma", "number", "sigma of the underlying normal (0.5: "
                            "the 95th percentile is 2.3 times the median)", minimum=0)),
}
_FUNC_RE = re.compile(r"^\s*(uniform|lognormal)\s*\((.*)\)\s*$")


def check_delay(kind: str, params: Sequence[float], what: str = "delay") -> None:
    """The parameters of a ``DELAY_KINDS`` delay, checked (the delay classes call it)."""
    if kind == "fixed":
        non_negative(what, params[0])
        return
    prefix = "" if what == "delay" else f"{what}: "
    for attr, value in zip(DELAY_KINDS[kind], params, strict=True):
        non_negative(f"{prefix}{kind} delay {attr.name}", value,
                     " seconds" if attr.unit else "")
    if kind == "uniform" and params[1] < params[0]:
        raise ConfigError(f"{prefix}uniform delay: high ({params[1]}) is below low "
                          f"({params[0]})")


def delay_parts(value: object, what: str = "delay", *,
                unit_required: bool = False) -> tuple[str, tuple[float, ...]]:
    """A delay as written -> ``(kind, params)`` of :data:`DELAY_KINDS`, checked.

    A number of seconds, ``"100ms"``, ``"uniform(50ms,150ms)"``,
    ``"lognormal(100ms,0.5)"`` or ``{"uniform": [a, b]}``.
    """
    if isinstance(value, Mapping):
        if len(value) != 1:
            raise ConfigError(f"{what} {value!r}: expected one of {{'uniform': [low, high]}}, "
                              "{'lognormal': [median, sigma]}, {'fixed': duration}")
        ((kind, args),) = value.items()
        if kind == "fixed":
            return delay_parts(parse_duration(args, what), what)
        if kind in DELAY_KINDS and isinstance(args, Sequence) \
                and not isinstance(args, str) and len(args) == 2:
            return delay_parts(f"{kind}({args[0]},{args[1]})", what)
        raise ConfigError(f"{what} {value!r}: unknown delay kind {kind!r}; "
                          f"use {', '.join(DELAY_KINDS)}")
    if isinstance(value, str):
        m = _FUNC_RE.match(value)
        if m is not None:
            kind, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
            if len(args) != 2:
                raise ConfigError(f"{what} {value!r}: {kind}() takes two arguments")
            first = parse_duration(args[0], what, unit_required=unit_required)
            if kind == "uniform":
                params = (first, parse_duration(args[1], what, unit_required=unit_required))
            else:
                try:
                    params = (first, float(args[1]))
                except ValueError:
                    raise ConfigError(f"{what} {value!r}: lognormal sigma {args[1]!r} is not "
                                      "a number") from None
            check_delay(kind, params, what)
            return kind, params
    seconds = parse_duration(value, what, unit_required=unit_required)
    return "fixed", (seconds,)


def check_dribble(chunks: object, over: object, what: str = "dribble") -> None:
    """A slow body: ``chunks`` pieces over ``over`` seconds (the ``Dribble`` class calls it)."""
    DRIBBLE_CHUNKS.check(chunks, label=what, shown="chunks")
    non_negative(f"{what} duration", over)


def dribble_parts(value: object, what: str = "dribble") -> tuple[int, float]:
    """``"5/1s"``, ``{"chunks": 5, "over": "1s"}`` or ``(5, 1.0)`` -> ``(chunks, seconds)``."""
    parts: tuple[Any, float] | None = None
    if isinstance(value, Mapping):
        extra = set(value) - {"chunks", "over"}
        if extra or "chunks" not in value or "over" not in value:
            raise ConfigError(f"{what} {dict(value)!r}: expected {{'chunks': N, 'over': "
                              "duration}")
        parts = (value["chunks"], parse_duration(value["over"], what))
    elif isinstance(value, tuple) and len(value) == 2:
        parts = (value[0], parse_duration(value[1], what))
    elif isinstance(value, str):
        chunks, sep, over = value.partition("/")
        if sep and chunks.strip().isdigit():
            parts = (int(chunks), parse_duration(over, what, unit_required=True))
    if parts is None:
        raise ConfigError(f"{what} {value!r}: expected N/DURATION, e.g. 5/1s "
                          "(5 chunks over 1 s)")
    check_dribble(*parts, what)
    return parts


def check_retry_after(value: object, what: str = "retry_after") -> int | str | datetime:
    """Retry-After: whole seconds >= 0 (an int or a string of digits) or a datetime."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return value
    raise ConfigError(f"{what}: Retry-After must be whole seconds >= 0 or a datetime, got "
                      f"{value!r} (clients such as urllib3 ignore fractional values)")


def parse_times(value: object, what: str = "times") -> int | None:
    """How often a step answers: a positive integer, or ``"forever"``/``"*"``/``None``."""
    if value in ("forever", "*", None):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(f"{what} must be a positive integer or 'forever', got {value!r}")


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def check_headers(headers: object, what: str = "headers") -> tuple[tuple[str, str], ...]:
    """A mapping or a list of ``(name, value)`` pairs -> checked pairs (values as text)."""
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
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ConfigError(f"{what}: {name!r} is not a valid header name")
        value = str(value)
        if "\r" in value or "\n" in value:
            raise ConfigError(f"{what}: header {name} has a line break in its value")
        out.append((name, value))
    return tuple(out)


# -------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class FaultDef:
    """One fault: its canonical name, layer, a one-line description and its attributes.

    ``attributes`` are the fault's own (for a toxic: the Toxiproxy ``attributes``
    object, in Go field order); ``options`` are those every fault of its kind
    has (a toxic's ``stream``/``toxicity``/``name``; an HTTP step's ``times``).
    ``toxic``: a Toxiproxy toxic type (``POST /proxies/{p}/toxics``).
    ``exclusive``: groups of attributes of which at most one may be given.
    ``example``: a valid spec's attributes, for documentation and tests.
    """

    name: str
    layer: Layer
    description: str
    attributes: tuple[Attribute, ...] = ()
    options: tuple[Attribute, ...] = ()
    toxic: bool = False
    exclusive: tuple[tuple[str, ...], ...] = ()
    example: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How messages name it: ``"latency toxic"``, ``"reset fault"``."""
        return f"{self.name} toxic" if self.toxic else f"{self.name} fault"

    @property
    def all_attributes(self) -> tuple[Attribute, ...]:
        return self.attributes + self.options

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    def attribute(self, name: str) -> Attribute | None:
        """The attribute (or option) called ``name``, or ``None``."""
        for attr in self.all_attributes:
            if attr.name == name:
                return attr
        return None

    def option(self, key: str) -> Attribute | None:
        """The attribute written ``key=...`` in the compact string form, or ``None``."""
        for attr in self.all_attributes:
            if attr.option == key:
                return attr
        return None


def _ms(name: str, description: str) -> Attribute:
    return Attribute(name, "integer", description, "ms", 0, minimum=0)


#: A toxic's direction: ``downstream`` (server to client) or ``upstream``.
STREAM = Attribute("stream", "string", "direction: downstream (server to client) or upstream",
                   default="downstream", choices=("upstream", "downstream"))
#: The probability that a connection gets the toxic.
TOXICITY = Attribute("toxicity", "number", "probability that a connection gets the toxic",
                     default=1.0, minimum=0, maximum=1, rule="a number from 0 to 1")
#: A toxic's name, unique per proxy (default ``<type>_<stream>``).
TOXIC_NAME = Attribute("name", "string", "the toxic's name, unique per proxy (default: "
                       "<type>_<stream>)", pattern=r"[^/]+", rule="a non-empty name without '/'")
TOXIC_OPTIONS = (STREAM, TOXICITY, TOXIC_NAME)

#: How many requests in a row an HTTP step answers.
TIMES = Attribute("times", "times", "how many requests in a row the step answers "
                  "(xN / x* / forever in the string form)", default=1,
                  rule="a positive integer or 'forever'")
_DELAY = Attribute("delay", "delay", "wait before answering: a duration (100ms, 1.5s), "
                   "uniform(low,high) or lognormal(median,sigma)", "s", option="delay")
_SIZE = Attribute("size", "integer", "how many bytes to send", "bytes", 64, minimum=1,
                  rule="a positive integer", option="size")
_STATUS = Attribute("status", "integer", "the HTTP status code", default=200, minimum=100,
                    maximum=599, rule="an integer 100-599")
#: The number of pieces of a dribbled (slow) body.
DRIBBLE_CHUNKS = Attribute("chunks", "integer", "pieces of the body", minimum=1,
                           rule="a positive integer")


#: How a connection of the ``fail_first`` fault fails.
FAIL_FIRST_MODES = ("reset", "close")
#: The attributes of ``fail_first`` (a fault of the built-in engine, not a Toxiproxy toxic:
#: ``/x-resilience/proxies/{proxy}/fail_first``).
FAIL_FIRST_ATTRIBUTES = (
    Attribute("count", "integer", "how many new connections fail, counted from the arming",
              "connections", minimum=0, required=True, rule="an integer >= 0"),
    Attribute("mode", "string", "reset: RST at once (ECONNRESET); close: closed without a "
              "byte (EOF)", default="reset", choices=FAIL_FIRST_MODES),
)


def _toxic(name: str, description: str, *attributes: Attribute,
           example: Mapping[str, Any] | None = None) -> FaultDef:
    return FaultDef(name, "network", description, attributes, TOXIC_OPTIONS, toxic=True,
                    example=example or {})


def _socket(name: str, description: str, *extra: Attribute) -> FaultDef:
    return FaultDef(name, "http", description, (_DELAY, *extra), (TIMES,),
                    example={"times": 2})


#: The network faults, by name: the Toxiproxy toxics and ``down``.
NETWORK_FAULTS: dict[str, FaultDef] = {f.name: f for f in (
    _toxic("latency", "delay every chunk of data by latency ± jitter",
           _ms("latency", "added delay"),
           _ms("jitter", "random extra delay, drawn from [-jitter, +jitter)"),
           example={"latency": 200, "jitter": 20}),
    _toxic("bandwidth", "limit the rate of the stream (0 stalls it)",
           Attribute("rate", "integer", "the rate (1 KB = 1000 bytes)", "KB/s", 0, minimum=0,
                     crash="a negative rate crashes toxiproxy-server"),
           example={"rate": 100}),
    _toxic("slow_close", "hold back the close of the connection",
           _ms("delay", "how long the close is held back"), example={"delay": 500}),
    _toxic("timeout", "drop all data; close the connection after timeout ms without data "
           "(0: never)", _ms("timeout", "idle time before the close (0: never close)"),
           example={"timeout": 1000}),
    _toxic("reset_peer", "on the first data, wait timeout ms, then reset the connection "
           "(RST for connections opened after the toxic)",
           _ms("timeout", "wait before the reset"), example={"timeout": 0}),
    _toxic("slicer", "slice the data into pieces of about average_size bytes, delay µs apart",
           Attribute("average_size", "integer", "size of a piece", "bytes", 0, minimum=1,
                     required=True,
                     crash="0 or less makes toxiproxy-server recurse until it crashes"),
           Attribute("size_variation", "integer", "random variation of a piece's size",
                     "bytes", 0, minimum=0, at_most="average_size",
                     crash="a larger one crashes toxiproxy-server"),
           Attribute("delay", "integer", "pause after each piece", "µs", 0, minimum=0),
           example={"average_size": 100, "size_variation": 10, "delay": 500}),
    _toxic("limit_data", "close the connection once this many bytes have passed",
           Attribute("bytes", "integer", "bytes let through", "bytes", 0, minimum=0),
           example={"bytes": 1000}),
    _toxic("noop", "pass the data unchanged"),
    FaultDef("down", "network", "disable the proxy: new connections are refused, live ones "
             "closed"),
    FaultDef("fail_first", "network", "the next count new connections fail at once (reset "
             "or closed, upstream never dialled), later ones pass; built-in engine only",
             FAIL_FIRST_ATTRIBUTES, example={"count": 2, "mode": "reset"}),
)}

#: The HTTP faults of fake backends' scripts, by name: ``status`` and the socket faults.
HTTP_FAULTS: dict[str, FaultDef] = {f.name: f for f in (
    FaultDef("status", "http", "answer with an HTTP status (503 x3 then 200), optionally "
             "late (delay), with a slow body (dribble) or a Retry-After (429)", (
                 _STATUS,
                 Attribute("json", "any", "a JSON body"),
                 Attribute("text", "body", "a text body"),
                 Attribute("body", "body", "a raw body"),
                 Attribute("headers", "headers", "response headers"),
                 _DELAY,
                 Attribute("dribble", "dribble", "send the body in N chunks spread over a "
                           "duration: N/DURATION (5/1s)", option="dribble"),
                 Attribute("retry_after", "retry_after", "the Retry-After header: whole "
                           "seconds (or a datetime)", "s", option="retry-after"),
                 Attribute("content_type", "string", "the Content-Type header",
                           option="content-type"),
             ), (TIMES,), exclusive=(("json", "text", "body"),),
             example={"status": 503, "times": 3, "retry_after": 2}),
    _socket("empty", "close the connection before sending any byte"),
    _socket("malformed", "valid chunked headers, then a malformed chunk, then close"),
    _socket("truncated", "headers announcing 64 body bytes, 18 bytes, then close"),
    _socket("garbage", "random bytes that are not HTTP, then close", _SIZE),
    _socket("reset", "reset the connection (RST)"),
    _socket("hang", "never answer; the connection stays open until the client gives up"),
)}

_SQLSTATE = Attribute("code", "string", "the SQLSTATE: 5 digits or upper-case letters",
                     pattern=r"[0-9A-Z]{5}", required=True,
                     rule="a 5-character SQLSTATE such as 40001")
_PG_MATCH = Attribute("match", "string", "a regular expression searched in the statement "
                      "text (the Parse text for prepared statements); omitted: every statement")
_PG_NTH = Attribute("nth", "integer", "fire from the nth matching execution on (counted per "
                    "proxy, across connections)", minimum=1, rule="a positive integer")
_PG_TIMES = Attribute("times", "integer", "how many times it fires (default: once with nth, "
                      "else every match)", minimum=1, rule="a positive integer")
_PG_PROBABILITY = Attribute("probability", "number", "probability that a matching execution "
                            "fires", default=1.0, minimum=0, maximum=1,
                            rule="a number from 0 to 1")
_PG_SEED = Attribute("seed", "integer", "seed of the probability draws")
_PG_SELECT = (_PG_MATCH, _PG_NTH, _PG_TIMES, _PG_PROBABILITY, _PG_SEED)

#: The Postgres-protocol faults of the fault stage (``pytest_resilience.pgwire``), by name.
POSTGRES_FAULTS: dict[str, FaultDef] = {f.name: f for f in (
    FaultDef("sqlstate", "postgres", "the server raises an ERROR with this SQLSTATE instead "
             "of running a matching statement (at COMMIT the transaction ends)",
             (_SQLSTATE, Attribute("message", "string", "text added to the error message"),
              *_PG_SELECT), example={"code": "40001", "match": "UPDATE accounts", "nth": 3}),
    FaultDef("fatal", "postgres", "a FATAL error (57P01 admin shutdown by default) instead of "
             "a matching statement's response, then the connection is closed",
             (Attribute("code", "string", "the SQLSTATE", default="57P01",
                        pattern=r"[0-9A-Z]{5}", rule="a 5-character SQLSTATE such as 57P01"),
              *_PG_SELECT), example={"code": "57P01", "match": "SELECT"}),
    FaultDef("refuse_startup", "postgres", "the next n connections are refused at startup "
             "with a FATAL (53300 too many connections by default)",
             (Attribute("n", "integer", "how many connections are refused", "connections",
                        default=1, minimum=1, rule="a positive integer"),
              Attribute("code", "string", "the SQLSTATE", default="53300",
                        pattern=r"[0-9A-Z]{5}", rule="a 5-character SQLSTATE such as 53300")),
             example={"n": 2}),
    FaultDef("cut_mid_response", "postgres", "part of a matching statement's response is "
             "forwarded, then the connection is closed (08006 connection failure)",
             (Attribute("after_messages", "integer", "whole response messages forwarded "
                        "before the cut (then half of the next)", "messages", default=1,
                        minimum=0), *_PG_SELECT),
             example={"match": "FROM big_table", "after_messages": 2}),
    FaultDef("hang_query", "postgres", "a matching statement gets no answer until the client "
             "cancels it or closes the connection (the server busy in pg_sleep, or its "
             "response held)",
             (Attribute("server", "string", "busy: the server runs pg_sleep in its place; "
                        "done: the server runs it and its response is held",
                        default="busy", choices=("busy", "done")),
              Attribute("release_after", "number", "the stage ends a hang nobody ended "
                        "after this many seconds", "s", minimum=0),
              *_PG_SELECT), example={"match": "FROM orders", "server": "busy"}),
)}

_REGISTRIES: dict[Layer, dict[str, FaultDef]] = {"network": NETWORK_FAULTS,
                                                 "http": HTTP_FAULTS,
                                                 "postgres": POSTGRES_FAULTS}


def names(layer: Layer | None = None) -> tuple[str, ...]:
    """Every fault name (of one layer): network, then HTTP, then Postgres faults."""
    layers: tuple[Layer, ...] = (layer,) if layer is not None else (
        "network", "http", "postgres")
    return tuple(name for lay in layers for name in _REGISTRIES[lay])


def toxic_types() -> tuple[str, ...]:
    """The Toxiproxy toxic types (the network faults but ``down`` and ``fail_first``), in
    registry order."""
    return tuple(name for name, f in NETWORK_FAULTS.items() if f.toxic)


def socket_faults() -> tuple[str, ...]:
    """The HTTP socket faults (every HTTP fault but ``status``)."""
    return tuple(name for name in HTTP_FAULTS if name != "status")


def string_options() -> dict[str, str]:
    """``{option: attribute name}`` of the compact HTTP string form (``retry-after``)."""
    out: dict[str, str] = {}
    for fault in HTTP_FAULTS.values():
        for attr in fault.all_attributes:
            if attr.option is not None:
                out.setdefault(attr.option, attr.name)
    return out


def get(name: object) -> FaultDef:
    """The fault called ``name``, or a ``ConfigError`` listing the known ones."""
    if isinstance(name, str):
        for registry in _REGISTRIES.values():
            if name in registry:
                return registry[name]
    raise ConfigError(f"unknown fault {name!r}; known faults: {', '.join(names())} ({README})")


def register(fault: FaultDef) -> FaultDef:
    """Add a fault to the vocabulary (``NETWORK_FAULTS`` or ``HTTP_FAULTS`` by its layer).

    The client and the validating consumers read the registry on every call,
    so they know it at once. To *run* it, the built-in engine needs a stage
    (``pytest_resilience.toxiproxy.toxics._STAGES``) and the HTTP backends a
    case for the new socket fault; until then the engine answers ``400
    invalid toxic type`` and a backend does not know how to answer.
    """
    if fault.name in names():
        raise ConfigError(f"a fault named {fault.name!r} exists already")
    if fault.layer not in _REGISTRIES:
        raise ConfigError(f"fault {fault.name!r}: layer must be network, http or postgres, "
                          f"got {fault.layer!r}")
    _REGISTRIES[fault.layer][fault.name] = fault
    return fault


def unregister(name: str) -> None:
    """Remove a fault added with :func:`register`."""
    for registry in _REGISTRIES.values():
        registry.pop(name, None)


# ---------------------------------------------------------------------- validation


def check_value(fault: str, attribute: str, value: object, *, label: str | None = None,
                shown: str | None = None) -> Any:
    """One attribute's value checked by the rules of ``fault`` (see :meth:`Attribute.check`).

    ``label`` defaults to the fault's (``"latency toxic"``); pass the name the
    caller's users wrote in ``shown`` (``"'ms'"`` for ``proxy.latency(ms)``).
    """
    spec = get(fault)
    attr = spec.attribute(attribute)
    if attr is None:
        raise ConfigError(f"{spec.label}: unknown attribute {attribute!r} (valid attributes: "
                          f"{', '.join(a.name for a in spec.all_attributes) or 'none'})")
    return attr.check(value, label=spec.label if label is None else label, shown=shown)


def check_exclusive(fault: str, given: Sequence[str], label: str | None = None) -> None:
    """At most one attribute of each of the fault's ``exclusive`` groups is given."""
    spec = get(fault)
    for group in spec.exclusive:
        hit = [n for n in group if n in given]
        if len(hit) > 1:
            listed = ", ".join(group[:-1]) + f" or {group[-1]}"
            raise ConfigError(f"{spec.label if label is None else label}: give only one of "
                              f"{listed} (got {' and '.join(hit)})")


def check_attributes(fault: str, values: Mapping[str, Any], *, options: bool = True,
                     label: str | None = None,
                     shown: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every given attribute checked, required ones present, ``at_most`` rules held.

    ``options=False`` accepts only the fault's own attributes (the Toxiproxy
    ``attributes`` object of a toxic). ``shown`` renames attributes in
    messages. Returns the values as given, normalised (see :meth:`Attribute.check`
    for what changes; parsed HTTP forms are *not* returned: the values stay
    as written).
    """
    spec = get(fault)
    label = spec.label if label is None else label
    shown = shown or {}
    allowed = spec.all_attributes if options else spec.attributes
    by_name = {a.name: a for a in allowed}

    def show(name: str) -> str:
        return shown.get(name, repr(name))

    out: dict[str, Any] = {}
    for key, value in values.items():
        attr = by_name.get(key)
        if attr is None:
            valid = ", ".join(by_name) or "none"
            raise ConfigError(f"{label}: unknown attribute {key!r} (valid attributes: {valid})")
        checked = attr.check(value, label=label, shown=show(key))
        out[key] = checked if attr.type in ("integer", "number", "string") else value
    for attr in allowed:
        if attr.required and attr.name not in values:
            raise ConfigError(f"{label}: {show(attr.name)} is required ({attr.bounds})")
        if attr.at_most is not None and attr.name in out:
            limit = out.get(attr.at_most, _default_of(spec, attr.at_most))
            if out[attr.name] > limit:
                raise ConfigError(f"{label}: {show(attr.name)} ({out[attr.name]}) must not "
                                  f"exceed {show(attr.at_most)} ({limit})")
    check_exclusive(fault, list(values), label)
    return out


def _default_of(spec: FaultDef, name: str) -> Any:
    attr = spec.attribute(name)
    return None if attr is None else attr.default


def validate(fault: str | Mapping[str, Any], /, **attributes: Any) -> dict[str, Any]:
    """Check a fault spec; return it (``{"fault": name, ...}``, values normalised).

    ``validate({"fault": "latency", "latency": 100})`` or
    ``validate("latency", latency=100)``. Raises
    :class:`~pytest_resilience.errors.ConfigError` naming the fault, the
    attribute, the bad value and the rule.
    """
    if isinstance(fault, Mapping):
        if attributes:
            raise ConfigError("validate() takes a spec mapping or a name with attributes, "
                              "not both")
        values = dict(fault)
        if "fault" not in values:
            raise ConfigError(f"fault spec {values!r} has no 'fault' key; known faults: "
                              f"{', '.join(names())}")
        name = values.pop("fault")
    else:
        name, values = fault, attributes
    spec = get(name)
    return {"fault": spec.name, **check_attributes(spec.name, values)}


def with_defaults(fault: str, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fault's attributes and options with their defaults, overridden by ``values``."""
    spec = get(fault)
    out = {a.name: a.default for a in spec.all_attributes if a.default is not None}
    out.update(values or {})
    return out


@dataclass(frozen=True)
class Violation:
    """A value that breaks a rule: which fault, attribute, value, rule and why it matters."""

    fault: str
    attribute: str
    value: Any
    rule: str
    why: str


def crash_violation(fault: str, values: Mapping[str, int]) -> Violation | None:
    """The first attribute value that would crash toxiproxy-server (see ``Attribute.crash``),
    or ``None``. Omitted attributes count as their default, as on the server."""
    spec = get(fault)
    for attr in spec.attributes:
        if attr.crash is None:
            continue
        value = values.get(attr.name, attr.default)
        low = attr.minimum is not None and value < attr.minimum
        high = attr.at_most is not None and value > values.get(
            attr.at_most, _default_of(spec, attr.at_most))
        if low or high:
            return Violation(fault, attr.name, value, attr.bounds, attr.crash)
    return None


# ------------------------------------------------------------------------- schema


def json_schema(name: str | None = None) -> dict[str, Any]:
    """A JSON Schema fragment for one fault spec ``{"fault": name, ...attributes}``;
    without a name, ``{"oneOf": [...]}`` over every fault."""
    if name is None:
        return {"oneOf": [json_schema(n) for n in names()]}
    spec = get(name)
    properties: dict[str, Any] = {"fault": {"const": spec.name}}
    for attr in spec.all_attributes:
        properties[attr.name] = attr.schema()
    return {
        "type": "object",
        "title": spec.name,
        "description": spec.description,
        "properties": properties,
        "required": ["fault", *(a.name for a in spec.all_attributes if a.required)],
        "additionalProperties": False,
    }
