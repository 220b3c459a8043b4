"""The scenario file format: pydantic models, their validation, the JSON Schema.

Every word maps onto the Python API: ``services`` onto ``pg_proxy`` /
``http_backends`` / ``proxy_for``, ``faults`` onto :mod:`pytest_resilience.faults`
(the one fault vocabulary), ``clock: virtual`` onto the virtual clock, ``expect`` onto
the verdicts. ``python -m pytest_resilience.scenarios schema`` prints the JSON Schema
that editors use to complete and check scenario files.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from pytest_resilience import faults

__all__ = ["Scenario", "ValidationError", "json_schema", "suggest"]


def _duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as 100ms, 2s, 15m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration must not be negative, got {value}")
        return float(value)
    if isinstance(value, str):
        try:
            return faults.parse_duration(value, unit_required=True)
        except Exception as exc:  # ConfigError: reworded for the file's reader
            raise ValueError(
                f"{value!r} is not a duration; write a number of seconds or e.g. 100ms, "
                "2s, 15m"
            ) from exc
    raise ValueError("a duration is a number of seconds or a string such as 100ms, 2s, 15m")


Duration = Annotated[
    float, BeforeValidator(_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0},
                              {"type": "string", "pattern": faults.DURATION_PATTERN}],
                    "description": "seconds, or a string such as 100ms, 2s, 15m"}),
]
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_ROUTE = re.compile(r"^[A-Z]+ /\S*$")
#: ``after:`` triggers of a fault step
AFTER = re.compile(
    r"^\s*(?:faults\[(?P<step>\d+)\]|(?P<calls>\d+)\s+calls?"
    r"|(?P<requests>\d+)\s+requests?\s+to\s+(?P<service>[A-Za-z_][\w-]*)"
    r"(?:\s+(?P<route>[A-Z]+\s+/\S*))?"
    r"|breaker\s+(?P<breaker>opened|open|half[_-]open(?:ed)?|closed))\s*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Service(_Model):
    """``postgres`` (key ``postgres``: a fresh database behind a proxy), an HTTP backend
    (``routes``), or any TCP service behind a proxy (``tcp``)."""

    routes: dict[str, Any] | None = Field(
        None, description='HTTP backend routes: {"GET /trends": "503 x3 then 200"}'
    )
    tcp: str | None = Field(None, description="host:port of a TCP service to proxy",
                            pattern=r"^[^\s:]+:\d{1,5}$")
    proxy: bool | None = Field(
        None, description="put the service behind a Toxiproxy proxy (default: when a "
        "network fault targets it; always for postgres and tcp)")

    @field_validator("routes")
    @classmethod
    def _routes(cls, routes: dict[str, Any] | None) -> dict[str, Any] | None:
        for route in routes or {}:
            if not _ROUTE.match(route):
                raise ValueError(f"route {route!r} must read 'METHOD /path', e.g. 'GET /trends'")
        return routes


class HttpTarget(_Model):
    """An HTTP request to an ASGI app (``app``, in-process) or to a process the scenario
    starts (``command``) and waits for; ``{port}`` and the services' addresses
    (``{trends_api_url}``, ``{postgres_dsn}``...) are filled into ``command`` and ``env``."""

    app: str | None = Field(None, description="ASGI app by import path: package.module:app",
                            pattern=_IMPORT_PATH.pattern)
    command: list[str] | str | None = Field(
        None, description="the server to start (a list of arguments, or one string split "
        "like a shell would); it must listen on 127.0.0.1:{port}")
    env: dict[str, str] = Field(default_factory=dict,
                                description="extra environment of the command")
    ready: str = Field("/", pattern=r"^/", description="path polled until the command "
                       "answers (any status below 500)")
    ready_timeout: Duration = Field(30.0, gt=0, le=600)
    method: str = "GET"
    path: str = Field("/", pattern=r"^/")
    json_body: Any = Field(None, alias="json")

    @model_validator(mode="after")
    def _one(self) -> HttpTarget:
        if (self.app is None) == (self.command is None):
            raise ValueError("give exactly one of 'app' (an ASGI app, in-process) or "
                             "'command' (a server process the scenario starts)")
        if self.env and self.command is None:
            raise ValueError("'env' goes with 'command'")
        return self


class Target(_Model):
    """What is exercised: a callable (``call``) or an HTTP request to an ASGI app."""

    call: str | None = Field(
        None, pattern=_IMPORT_PATH.pattern,
        description="package.module:function (sync or async); its parameters named like a "
        "service get that service's URL/DSN/address; the others come from args")
    args: dict[str, Any] = Field(default_factory=dict)
    http: HttpTarget | None = None
    setup: str | None = Field(
        None, pattern=_IMPORT_PATH.pattern,
        description="package.module:factory of an async context manager (or async "
        "generator), bound like call and entered once around the drive; what it yields "
        "reaches the call as its 'context' parameter")

    @model_validator(mode="after")
    def _one(self) -> Target:
        if (self.call is None) == (self.http is None):
            raise ValueError("give exactly one of 'call' (a callable) or 'http' (an ASGI app)")
        return self


class FaultStep(BaseModel):
    """One step of the fault timeline, on a service from ``at`` (seconds since the drive
    started) for ``for`` seconds (default: to the end), again every ``every`` seconds:
    a network fault of the fault vocabulary (through the service's proxy; its attributes
    sit next to ``fault``), an HTTP fault on a backend (``fault: status``, ``reset``,
    ``hang``...: every request to ``route``, or to the whole backend, answers so), or a new
    ``script`` for a backend ``route`` (``["503 x3", "200 forever"]``)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    on: str = Field(description="the service (its proxy, or an HTTP backend's routes)")
    fault: str | None = Field(None, description="a fault: " + ", ".join(faults.names()))
    route: str | None = Field(None, description="HTTP backends: only this route "
                              "(METHOD /path, as scripted); default: all of them")
    script: list[Any] | str | None = Field(
        None, description="HTTP backends: the route's new steps while the step lasts")
    at: Duration = 0.0
    for_: Duration | None = Field(None, alias="for")
    first: int | None = Field(None, ge=1, description="only the first N connections")
    every: Duration | None = Field(
        None, gt=0, description="repeat: the fault starts again every this long (with "
        "'for' shorter than it), e.g. latency 10 s every minute in a soak run")
    after: str | None = Field(
        None, json_schema_extra={"pattern": AFTER.pattern},
        description="start 'at' seconds after a trigger instead of the drive's start: "
        "'faults[0]' (that step's window ended), '10 calls' (completed), "
        "'5 requests to trends_api' or '5 requests to trends_api GET /trends', "
        "'breaker opened' (the target's breaker reached that state; needs expect.breaker)")

    @field_validator("after")
    @classmethod
    def _after(cls, value: str | None) -> str | None:
        if value is not None and not AFTER.match(value):
            raise ValueError(f"{value!r} is not a trigger; write 'faults[0]' (after that "
                             "step ended), '10 calls' (completed), '5 requests to "
                             "<backend>' (optionally followed by a route: GET /trends) or "
                             "'breaker opened' / 'breaker half_open' / 'breaker closed'")
        return value

    @model_validator(mode="after")
    def _fault(self) -> FaultStep:
        if self.every is not None and (self.for_ is None or self.for_ >= self.every):
            raise ValueError("a repeating fault ('every') needs 'for' shorter than 'every' "
                             "(how long each occurrence lasts)")
        attributes = dict(self.model_extra or {})
        if self.script is not None:
            if self.fault is not None or attributes:
                raise ValueError("give either 'fault' (with its attributes) or 'script' (a "
                                 "route's new steps), not both")
            return self
        if self.fault is None:
            raise ValueError("give 'fault' (e.g. latency, down, status) or 'script'")
        try:
            fault = faults.get(self.fault)
        except Exception:
            hint = suggest(self.fault, faults.names())
            raise ValueError(f"unknown fault {self.fault!r}{hint}; known: "
                             f"{', '.join(faults.names())}") from None
        if fault.layer == "postgres":
            if self.route is not None:
                raise ValueError(f"'route' goes with HTTP faults; {self.fault!r} is a "
                                 "Postgres-protocol fault (use 'match' for statements)")
            try:
                faults.validate(self.fault, **attributes)
            except Exception as exc:
                raise ValueError(str(exc)) from None
            return self
        if self.route is not None and fault.layer != "http":
            raise ValueError(f"'route' goes with HTTP faults and scripts; {self.fault!r} is a "
                             "network fault on the whole service")
        if fault.layer == "http":
            try:
                from pytest_resilience.services.http_script import parse_step

                parse_step({"fault": self.fault, **attributes, "times": "forever"},
                           f"the {self.fault!r} fault")
            except Exception as exc:
                raise ValueError(str(exc)) from None
            return self
        try:
            faults.validate(self.fault, **attributes)
        except Exception as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def attributes(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def postgres(self) -> bool:
        """A step on the Postgres protocol (the ``pg_fault`` stage), not on a proxy."""
        return self.fault is not None and faults.get(self.fault).layer == "postgres"

    @property
    def http(self) -> bool:
        """A step on an HTTP backend's answers (not on its proxy)."""
        return self.script is not None or (
            self.fault is not None and faults.get(self.fault).layer == "http")


class Drive(_Model):
    """How the target is driven: ``calls`` calls one after another, ``every`` apart; or a
    load run (``rate``, ``concurrency`` above 1, or ``soak: true``): arrivals at ``rate``
    per second (open model) from ``concurrency`` workers, for ``duration`` (default 10 s)
    or ``calls`` calls, sampled every ``sample_every``."""

    rate: float | None = Field(None, gt=0, le=1_000_000,
                               description="arrivals per second (open model)")
    concurrency: int = Field(1, ge=1, le=10_000, description="calls in flight at once")
    calls: int | None = Field(None, ge=1, le=100_000_000,
                              description="number of calls (default 1, at most 100000 one "
                              "after another; a load run: a bound)")
    every: Duration = 0.0
    duration: Duration | None = Field(None, gt=0, le=7 * 24 * 3600)
    warmup: Duration = Field(0.0, description="load runs: drift verdicts ignore this start")
    sample_every: Duration = Field(1.0, ge=0.01, le=3600,
                                   description="load runs: sampling interval")
    soak: bool = Field(False, description="a load run even at rate/concurrency defaults; "
                       "--resilience-soak re-bounds it")

    @field_validator("calls")
    @classmethod
    def _sequential_bound(cls, value: int | None, info: Any) -> int | None:
        data = info.data
        load = data.get("rate") is not None or (data.get("concurrency") or 1) > 1
        if value is not None and value > 100_000 and not load:
            raise ValueError("Input should be less than or equal to 100000 for calls one "
                             "after another; a load run (rate, concurrency above 1) takes up "
                             "to 100000000")
        return value

    @property
    def load(self) -> bool:
        """A load/soak run (the soak driver) rather than calls one after another."""
        return self.soak or self.rate is not None or self.concurrency > 1

    @model_validator(mode="after")
    def _modes(self) -> Drive:
        if not self.load and self.warmup:
            raise ValueError("warmup applies to load runs: set rate, concurrency or soak: true")
        if self.load and self.every:
            raise ValueError("every applies to calls one after another; a load run paces "
                             "calls with rate (arrivals per second)")
        if self.load and self.duration is not None and self.warmup >= self.duration:
            raise ValueError(f"warmup ({self.warmup} s) must be shorter than the duration "
                             f"({self.duration} s)")
        return self


class Backoff(_Model):
    """The retry delays seen by a backend follow a curve."""

    service: str
    route: str | None = Field(None, description="only this route's requests (METHOD /path)")
    model: Literal["exponential", "constant", "linear"] = "exponential"
    initial: Duration
    multiplier: float = Field(2.0, gt=0)
    cap: Duration | None = None
    jitter: Literal["none", "full", "equal", "additive"] = "none"
    jitter_max: Duration = 0.0
    attempts: int | None = Field(None, ge=1, description="attempts per call (per client)")
    tolerance: Duration | list[Duration] | None = Field(
        None, description="seconds either way, or [early, late]")
    per: Literal["call", "connection", "run"] = Field(
        "call", description="one retry timeline per call of the drive (calls one after "
        "another), per client connection (clients that fail together, each on its own "
        "connection), or one for the whole run")
    spread: bool | None = Field(
        None, description="the timelines must not retry in lock-step (their waits spread "
        "across the jitter band); default: checked when jitter is claimed and there are "
        "2 or more timelines")
    curve: bool = Field(True, description="judge each timeline against the curve; false: "
                        "only the spread (e.g. clients whose retries a shared outage delays)")

    @model_validator(mode="after")
    def _judges_something(self) -> Backoff:
        if not self.curve and self.spread is False:
            raise ValueError("curve: false and spread: false judge nothing: drop one of them")
        if not self.curve and self.jitter == "none":
            raise ValueError("curve: false leaves only the spread, which needs a jittered "
                             "curve: set jitter")
        return self


class Attempts(_Model):
    """How many requests reached a backend (a route of it)."""

    service: str
    route: str | None = None
    exactly: int | None = Field(None, ge=0)
    at_most: int | None = Field(None, ge=0)
    at_least: int | None = Field(None, ge=0)


class Timeout(_Model):
    """Each call raises ``exc`` after ``within`` seconds (± tolerance)."""

    within: Duration
    tolerance: Duration | list[Duration] | None = None
    exc: str = "TimeoutError"


class Cancelled(_Model):
    """A hung statement is given up on time and stops on the server: the first statement
    matching ``match`` gets no answer (the server runs ``pg_sleep`` in its place, or its
    answer is held); the client must send a CancelRequest or close its socket
    ``timeout`` ± ``tolerance`` after sending it, and the server backend must be idle or
    gone ``server_idle_within`` after that."""

    timeout: Duration = Field(gt=0, description="the client's claimed statement timeout")
    match: str | None = Field(None, description="regex on the statement text (default: the "
                              "first statement)")
    nth: int | None = Field(None, ge=1, description="hold the nth matching execution")
    server: Literal["busy", "done"] = Field(
        "busy", description="busy: the server runs pg_sleep in its place (a close without "
        "a cancel leaves it running); done: the server ran it, its answer is held")
    tolerance: float = Field(0.1, ge=0, lt=1, description="a fraction of the timeout "
                             "(0.1: ± 10 %)")
    server_idle_within: Duration = Field(1.0, gt=0)
    give_up_after: Duration | None = Field(
        None, gt=0, description="the stage ends a hang nobody ended after this long "
        "(default: 4 x timeout, at least timeout + 2 s)")


class Breaker(_Model):
    """The breaker's transitions, as the target reported them to its ``breaker``
    parameter (a ``BreakerObserver`` the runner passes in)."""

    states: list[str] = Field(min_length=1, description="the state sequence, from the "
                              "initial state: [closed, open, half_open, closed]")
    opens_after: int | None = Field(None, ge=1, description="consecutive failures that "
                                    "open it")
    recovery_timeout: Duration | None = Field(None, description="open -> half_open after")
    tolerance: Duration | list[Duration] | None = None


class Latency(_Model):
    p50: Duration | None = None
    p95: Duration | None = None
    p99: Duration | None = None
    max: Duration | None = None


class Sustained(_Model):
    """A series breaks ``at_most`` for ``consecutive`` samples in a row (a single spike
    is not a breach). Series: p50_s, p95_s, p99_s, max_s, error_rate, in_flight..."""

    series: str
    at_most: float | Duration = Field(description="seconds for *_s series, a share for "
                                      "error_rate, a count otherwise")
    consecutive: int = Field(3, ge=1)


class StageLatency(_Model):
    """Latency during each fault window vs outside, and the recovery after each."""

    series: str = "p95_s"
    at_most_during: Duration | None = None
    at_most_outside: Duration | None = None
    recover_within: Duration | None = None


class Amplification(_Model):
    """Requests reaching the backends per call (retry amplification)."""

    at_most: float = Field(gt=0)
    during_faults: bool = Field(False, description="only over the fault windows")


class Drift(_Model):
    """Load runs: judged on the trend after warm-up, not the last value."""

    no_growth: list[str] = Field(
        default_factory=list, description="series that must not grow: pg_sessions, fds, "
        "fds_socket, fds_file, tasks, threads, pool_size...")
    rss_ratio: float | None = Field(None, gt=1, description="RSS at the end at most this "
                                    "times RSS after warm-up")
    sustained: list[Sustained] = Field(default_factory=list)
    stage_latency: StageLatency | None = None
    amplification: Amplification | None = None


class Expect(_Model):
    """The claims checked after the drive; each produces a Verdict."""

    returns: Any = Field(None, description="every call returns this value")
    raises: str | None = Field(None, description="every call raises this exception type")
    error_rate: float | None = Field(None, ge=0, le=1, description="at most this share fails")
    backoff: Backoff | None = None
    attempts: Attempts | list[Attempts] | None = None
    timeout: Timeout | None = None
    cancelled: Cancelled | None = Field(
        None, description="a hung Postgres statement is cancelled on time and stops on the "
        "server (the 'postgres' service)")
    breaker: Breaker | None = None
    latency: Latency | None = None
    loop_lag: Duration | None = Field(
        None, description="async targets: the event loop is never blocked longer than this "
        "(no sync I/O in async code); measured on the real clock")
    no_leaks: bool | list[str] = False
    drift: Drift | None = Field(None, description="load runs: drift verdicts over the samples")


class Explore(_Model):
    """Let Hypothesis search fault timelines against the scenario: each example applies
    a generated schedule, drives the target and judges ``expect``; a failure shrinks to
    the smallest schedule, reported as a ``faults:`` section and a replay file."""

    on: list[str] | None = Field(None, description="services to break (default: all): "
                                 "network faults on postgres/tcp, HTTP faults on backends")
    faults: list[str] | None = Field(None, description="fault names to draw from")
    max_faults: int = Field(2, ge=1, le=10)
    horizon: Duration = Field(2.0, gt=0, le=3600, description="clock triggers and windows "
                              "within this")
    max_calls: int | None = Field(None, ge=0, le=1000, description="logical triggers: "
                                  "after 0..N calls (default: drive.calls)")
    clock: bool = Field(False, description="also trigger on the clock (less repeatable)")
    examples: int = Field(30, ge=1, le=10_000)
    max_time: Duration = Field(120.0, gt=0, le=24 * 3600)
    replays: list[int] = Field([1, 1], min_length=2, max_length=2,
                               description="[m, k]: a schedule fails when it fails m of k runs")
    rate_runs: int = Field(5, ge=1, le=100, description="replays of the minimal schedule "
                           "for its reproduction rate")


class Scenario(_Model):
    """One scenario: a claim, the services, the target, the fault timeline, the drive
    and what is expected."""

    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    marks: list[str | dict[str, Any]] = Field(default_factory=list)
    usefixtures: list[str] = Field(default_factory=list)
    parametrize: dict[str, list[Any]] = Field(default_factory=dict)
    seed: int | None = None
    clock: Literal["real", "virtual"] = "real"
    services: dict[str, Service | None] = Field(default_factory=dict)
    target: Target
    faults: list[FaultStep] = Field(default_factory=list)
    drive: Drive = Field(default_factory=lambda: Drive())
    expect: Expect = Field(default_factory=lambda: Expect())
    explore: Explore | None = None

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        names = set(self.services)
        for i, step in enumerate(self.faults):
            if step.on not in names:
                raise ValueError(f"faults[{i}].on: no service {step.on!r}"
                                 f"{suggest(step.on, names)}; services: {sorted(names)}")
            spec = self.services.get(step.on)
            if step.postgres and step.on != "postgres":
                raise ValueError(f"faults[{i}]: {step.fault} is a Postgres-protocol fault; "
                                 f"put it on the service named 'postgres', not {step.on!r}")
            if step.http and (spec is None or spec.routes is None):
                raise ValueError(f"faults[{i}]: {step.fault or 'script'!s} changes an HTTP "
                                 f"backend's answers; {step.on!r} is not an HTTP backend "
                                 "(one with 'routes')")
            trigger = AFTER.match(step.after) if step.after is not None else None
            if trigger is not None and trigger["step"] is not None \
                    and int(trigger["step"]) >= i:
                raise ValueError(f"faults[{i}].after: {step.after!r} must name an earlier "
                                 f"step (faults[0]..faults[{i - 1}])" if i else
                                 f"faults[{i}].after: the first step cannot wait for a step")
            if trigger is not None and trigger["breaker"] is not None \
                    and self.expect.breaker is None:
                raise ValueError(f"faults[{i}].after: {step.after!r} watches the target's "
                                 "breaker: add expect.breaker (the target reports its "
                                 "transitions to its 'breaker' parameter)")
            if trigger is not None and trigger["service"] is not None:
                target = trigger["service"]
                tspec = self.services.get(target)
                if tspec is None or tspec.routes is None:
                    raise ValueError(f"faults[{i}].after: {target!r} is not an HTTP backend "
                                     f"of this scenario{suggest(target, names)}")
                troute = " ".join(trigger["route"].split()) if trigger["route"] else None
                if troute is not None and troute not in tspec.routes:
                    raise ValueError(f"faults[{i}].after: {target!r} has no route "
                                     f"{troute!r}; routes: {sorted(tspec.routes)}")
            if step.route is not None and spec is not None and spec.routes is not None \
                    and step.route not in spec.routes:
                raise ValueError(f"faults[{i}].route: {step.on!r} has no route "
                                 f"{step.route!r}{suggest(step.route, spec.routes)}; "
                                 f"routes: {sorted(spec.routes)}")
        checks = [self.expect.backoff] + (
            self.expect.attempts if isinstance(self.expect.attempts, list)
            else [self.expect.attempts])
        for check in checks:
            if check is not None and check.service not in names:
                raise ValueError(f"expect: no service {check.service!r}"
                                 f"{suggest(check.service, names)}")
        for key, values in self.parametrize.items():
            if not values:
                raise ValueError(f"parametrize.{key}: give at least one value")
        if self.expect.drift is not None and not self.drive.load:
            raise ValueError("expect.drift judges a load run: give drive.rate, "
                             "drive.concurrency above 1 or drive.soak: true")
        if self.drive.load:
            if "returns" in self.expect.model_fields_set or self.expect.raises is not None:
                raise ValueError("a load run does not keep every call's value: use "
                                 "expect.error_rate instead of returns/raises")
            for key in ("backoff", "timeout", "cancelled", "loop_lag", "breaker"):
                if getattr(self.expect, key) is not None:
                    raise ValueError(f"expect.{key} judges calls one after another, not a "
                                     "load run; check it in a separate scenario")
            if self.clock == "virtual":
                raise ValueError("a load run is measured on the real clock: use clock: real")
        if self.explore is not None:
            if self.faults:
                raise ValueError("explore generates the fault timeline: leave 'faults' out "
                                 "(or drop 'explore' to run the timeline you wrote)")
            if self.drive.load:
                raise ValueError("explore drives calls one after another; a load run "
                                 "cannot be explored yet")
            for target in self.explore.on or []:
                if target not in names:
                    raise ValueError(f"explore.on: no service {target!r}"
                                     f"{suggest(target, names)}")
            m, k = self.explore.replays
            if not 1 <= m <= k:
                raise ValueError(f"explore.replays: [{m}, {k}] needs 1 <= m <= k")
        if self.target.setup is not None and self.target.call is None:
            raise ValueError("target.setup goes with target.call (the call gets 'context')")
        if self.expect.cancelled is not None:
            if "postgres" not in names:
                raise ValueError("expect.cancelled holds a statement on the 'postgres' "
                                 "service: add 'postgres: {}' to services")
            if self.clock == "virtual":
                raise ValueError("expect.cancelled is measured on the real clock (the "
                                 "client's cancel travels over real sockets): use clock: real")
        if self.expect.loop_lag is not None and self.clock == "virtual":
            raise ValueError("expect.loop_lag is measured on the real clock: use clock: real")
        if self.expect.backoff is not None and self.clock == "virtual":
            raise ValueError(
                "expect.backoff reads the backend's request log, which is kept on the real "
                "clock (the backend serves real sockets): use clock: real for a backoff "
                "curve, or check it in Python with the requested waits on the virtual clock")
        return self


def suggest(word: str, choices: Any) -> str:
    """``; did you mean 'x'?`` for the closest choice, or nothing."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def known_keys() -> set[str]:
    """Every key the format knows (for 'did you mean' on unknown keys)."""
    keys: set[str] = set()
    for model in (Scenario, Service, Target, HttpTarget, FaultStep, Drive, Backoff,
                  Attempts, Timeout, Breaker, Latency, Expect, Drift, Sustained, StageLatency,
                  Amplification, Explore):
        for name, info in model.model_fields.items():
            keys.add(info.alias or name)
    return keys


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one scenario document (for editors)."""
    schema = Scenario.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://pytest-resilience.invalid/scenario.schema.json"
    schema["title"] = "pytest-resilience scenario"
    # the fault steps: one of the vocabulary's faults with its attributes
    defs = schema.setdefault("$defs", {})
    step = defs.get("FaultStep", {})
    step.setdefault("properties", {})["fault"] = {
        "enum": list(faults.names()),
        "description": "a network fault (through the service's proxy) or an HTTP fault "
                       "(an HTTP backend's answers)"}
    return schema
