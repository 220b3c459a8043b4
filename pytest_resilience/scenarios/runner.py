"""Running one scenario: services up, the target driven, faults applied on a timeline,
every expectation judged as a Verdict; on failure the verdict tables and the fault
timeline as it actually ran.

The timeline is evaluated at call boundaries of the drive (before each call, on the
scenario's clock), so a scenario runs the same way on the real and the virtual clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from pytest_resilience.report.state import attach
from pytest_resilience.scenarios.schema import Backoff, FaultStep, Scenario
from pytest_resilience.verdicts.core import (
    Verdict,
    VerdictFailed,
    collect,
    fmt_s,
    pop_sink,
    push_sink,
    render_table,
)

__all__ = ["run_scenario"]

README = "see 'Scenarios' in the pytest-resilience README"


class ScenarioUsageError(Exception):
    pass


def _fail(message: str) -> None:
    __tracebackhide__ = True
    pytest.fail(f"{message} ({README})", pytrace=False)


@dataclass
class ServiceHandle:
    name: str
    kind: str  # postgres | http | tcp
    address: str
    proxy: Any = None  # a client Proxy when the service is behind one
    backend: Any = None  # the HttpBackend
    stage: Any = None  # the pg_fault stage (Postgres-protocol faults)


@dataclass
class Call:
    index: int
    started: float  # seconds since the drive started, on the scenario's clock
    elapsed: float
    value: Any = None
    error: BaseException | None = None
    window: tuple[float, float] = (0.0, 0.0)  # time.monotonic() at its start and its end

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Timeline:
    """The fault steps as they actually ran."""

    events: list[tuple[float, str]] = field(default_factory=list)

    def note(self, at: float, text: str) -> None:
        self.events.append((at, text))

    def text(self) -> str:
        if not self.events:
            return "fault timeline: (no faults)"
        rows = [[f"+{fmt_s(at)}", what] for at, what in self.events]
        return "fault timeline as it ran:\n" + render_table(["at", "what"], rows)


def resolve(path: str) -> Any:
    """The object at ``package.module:attr`` (raises :class:`ScenarioUsageError` saying
    what is missing; any error while importing the user's module is theirs)."""
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ScenarioUsageError(
            f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ScenarioUsageError(f"{module_name!r} has no {attr!r}") from None
    return obj


def _import(path: str, what: str) -> Any:
    try:
        return resolve(path)
    except ScenarioUsageError as exc:
        raise ScenarioUsageError(f"{what}: {exc}") from None


def _needs_proxy(scenario: Scenario, name: str, kind: str) -> bool:
    spec = scenario.services.get(name)
    if spec is not None and spec.proxy is not None:
        return spec.proxy
    if kind in ("postgres", "tcp"):
        return True
    return any(step.on == name and not step.http and not step.postgres
               for step in scenario.faults)


def _chained_postgres(name: str, request: pytest.FixtureRequest) -> ServiceHandle:
    """Client -> Postgres-protocol stage -> proxy -> the test's database: protocol faults
    (the stage) and network faults (the proxy) on one scenario's Postgres."""
    from pytest_resilience.fixtures.pgwire import PgFault
    from pytest_resilience.pgwire import start

    proxy = request.getfixturevalue("pg_proxy")
    db = request.getfixturevalue("postgres_db")
    stage = start(proxy.host, proxy.port)
    request.addfinalizer(stage.close)
    fault = PgFault(stage, stage.dsn_for(proxy.dsn), db.dsn)
    return ServiceHandle(name, "postgres", fault.dsn, proxy=proxy, stage=fault)


def _start_services(scenario: Scenario, request: pytest.FixtureRequest) -> dict[str, ServiceHandle]:
    handles: dict[str, ServiceHandle] = {}
    for name, spec in scenario.services.items():
        if name == "postgres" or (spec is not None and spec.routes is None and spec.tcp is None):
            if name != "postgres":
                raise ScenarioUsageError(
                    f"services.{name}: give 'routes' (an HTTP backend) or 'tcp' (host:port); "
                    "only the service named 'postgres' needs nothing")
            protocol = scenario.expect.cancelled is not None or any(
                step.on == name and step.postgres for step in scenario.faults)
            network = any(step.on == name and not step.postgres for step in scenario.faults)
            if protocol and network:  # the stage in front of the proxy: both kinds apply
                handles[name] = _chained_postgres(name, request)
            elif protocol:
                stage = request.getfixturevalue("pg_fault")  # protocol faults: the stage
                handles[name] = ServiceHandle(name, "postgres", stage.dsn, stage=stage)
            else:
                proxy = request.getfixturevalue("pg_proxy")
                handles[name] = ServiceHandle(name, "postgres", proxy.dsn, proxy=proxy)
        elif spec is not None and spec.routes is not None:
            backends = request.getfixturevalue("http_backends")
            backend = backends(spec.routes, name=name, seed=scenario.seed,
                               assert_all_used=False)
            if _needs_proxy(scenario, name, "http"):
                proxied = backend.via_proxy()
                handles[name] = ServiceHandle(name, "http", proxied.url, proxy=proxied.proxy,
                                              backend=backend)
            else:
                handles[name] = ServiceHandle(name, "http", backend.url, backend=backend)
        elif spec is not None and spec.tcp is not None:
            host, _, port = spec.tcp.rpartition(":")
            proxy_for = request.getfixturevalue("proxy_for")
            proxy = proxy_for(host, int(port), name=name)
            handles[name] = ServiceHandle(name, "tcp", f"{proxy.host}:{proxy.port}", proxy=proxy)
    return handles


def _bind(fn: Callable[..., Any], services: dict[str, ServiceHandle],
          args: dict[str, Any], context: bool = False) -> dict[str, Any]:
    bound: dict[str, Any] = {}
    for pname, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if context and pname == "context":
            continue  # what target.setup yields, bound when the drive starts
        if pname == "breaker" and pname not in args and "breaker" not in services:
            continue  # a BreakerObserver, bound by _run when expect.breaker asks for it
        base = pname
        for suffix in ("_url", "_dsn", "_address"):
            if pname.endswith(suffix) and pname[: -len(suffix)] in services:
                base = pname[: -len(suffix)]
        if pname in args:
            bound[pname] = args[pname]
        elif base in services:
            bound[pname] = services[base].address
        elif param.default is param.empty:
            raise ScenarioUsageError(
                f"target parameter {pname!r} is neither a service ({sorted(services)}) nor in "
                f"target.args / parametrize")
    for key in args:
        if key not in bound and key not in inspect.signature(fn).parameters:
            raise ScenarioUsageError(f"target.args.{key}: the target has no parameter {key!r}")
    return bound


class _Faults:
    """The scenario's fault steps as a :class:`FaultSchedule` (applied at call boundaries,
    or every 20 ms in a load run; ``every`` repeats a step); the timeline notes what ran."""

    def __init__(self, steps: list[FaultStep], services: dict[str, ServiceHandle],
                 timeline: Timeline, breaker: Any = None) -> None:
        from pytest_resilience.soak.schedule import FaultSchedule

        self.services = services
        self.timeline = timeline
        self.schedule = FaultSchedule(note=timeline.note)
        #: calls completed so far (the drive sets it: an ``after: N calls`` trigger)
        self.completed: Callable[[], int] = lambda: 0
        #: the target's BreakerObserver (``after: breaker opened``)
        self.breaker = breaker
        from pytest_resilience.explore import logged_applier

        for index, step in enumerate(steps):
            # explore/replay runs record which fault fired when and which requests it hit
            backend = services[step.on].backend if step.http else None
            apply = logged_applier(self._applier(index, step), index,
                                   self._label(index, step), target=backend,
                                   calls=lambda: self.completed())
            self.schedule.add(self._label(index, step), apply,
                              at=step.at, for_=step.for_, every=step.every,
                              after=self._trigger(step),
                              after_label=f"after {step.after}" if step.after else "")

    def _trigger(self, step: FaultStep) -> Callable[[], bool] | int | None:
        from pytest_resilience.scenarios.schema import AFTER

        if step.after is None:
            return None
        m = AFTER.match(step.after)
        assert m is not None  # the schema checked it
        if m["step"] is not None:
            return int(m["step"])
        if m["calls"] is not None:
            n = int(m["calls"])
            return lambda: self.completed() >= n
        if m["breaker"] is not None:
            from pytest_resilience.observe.breaker import normalize_state

            word = m["breaker"].replace("-", "_")
            state = normalize_state("half_open" if word.startswith("half") else
                                    "open" if word.startswith("open") else word)
            observer = self.breaker
            return lambda: observer is not None and state in observer.states()[1:]
        n = int(m["requests"])
        service = self.services[m["service"]]
        route = " ".join(m["route"].split()) if m["route"] else None
        return lambda: len(_requests(service, route)) >= n

    @staticmethod
    def _label(index: int, step: FaultStep) -> str:
        attrs = step.attributes
        what = step.fault if step.fault is not None else f"script {step.script!r}"
        label = f"faults[{index}] {what} on {step.on}" + (
            f" {step.route}" if step.route else "")
        if attrs:
            label += " (" + ", ".join(f"{k}={v}" for k, v in attrs.items()) + ")"
        return label

    def _applier(self, index: int, step: FaultStep) -> Callable[[], Callable[[], None]]:
        from pytest_resilience.soak.schedule import http_fault, network_fault

        service = self.services[step.on]
        if step.postgres:
            def apply_rule() -> Callable[[], None]:
                method = {"hang_query": "hang"}.get(str(step.fault), str(step.fault))
                rule = getattr(service.stage, method)(**step.attributes)
                disarm_rule: Callable[[], None] = rule.disarm
                return disarm_rule

            return apply_rule
        if step.http:
            if service.backend is None:
                raise ScenarioUsageError(f"faults[{index}]: {step.on!r} is not an HTTP "
                                         "backend")
            steps: Any = step.script if step.script is not None else [
                {"fault": step.fault, **step.attributes, "times": "forever"}]
            return http_fault(service.backend, step.route, steps)
        if service.proxy is None:
            raise ScenarioUsageError(f"faults[{index}]: {step.on!r} is not behind a proxy; "
                                     "set proxy: true on the service")
        return network_fault(service.proxy, str(step.fault), step.attributes)

    def tick(self, now: float) -> None:
        self.schedule.tick(now)

    def heal_all(self, now: float) -> None:
        self.schedule.heal_all(now)
        for waiting in self.schedule.waiting():
            self.timeline.note(now, f"never triggered: {waiting}")

    def stages(self) -> list[Any]:
        return self.schedule.stages()

    def current(self) -> str:
        return self.schedule.current()


def _drive_sync(fn: Callable[..., Any], kwargs: dict[str, Any], scenario: Scenario,
                faults: _Faults) -> list[Call]:
    calls: list[Call] = []
    faults.completed = lambda: len(calls)
    start = time.monotonic()
    drive = scenario.drive
    deadline = start + (drive.duration if drive.duration is not None else math.inf)
    calls_n = drive.calls or 1
    for i in range(calls_n):
        now = time.monotonic() - start
        if time.monotonic() > deadline:
            break
        faults.tick(now)
        began = time.monotonic()
        call = Call(i, now, 0.0)
        try:
            call.value = fn(**kwargs)
        except Exception as exc:
            call.error = exc
        call.elapsed = time.monotonic() - began
        call.window = (began, began + call.elapsed)
        calls.append(call)
        if drive.every and i + 1 < calls_n:
            time.sleep(drive.every)
    faults.heal_all(time.monotonic() - start)
    return calls


async def _drive_async(fn: Callable[..., Any], kwargs: dict[str, Any], scenario: Scenario,
                       faults: _Faults, lag: list[float],
                       sites: list[str | None]) -> list[Call]:
    probe = None
    if scenario.expect.loop_lag is not None:
        from pytest_resilience.verdicts.timeout import LoopLagProbe

        # the watchdog samples the loop thread's stack while it is late: names the site
        probe = LoopLagProbe(watch=scenario.expect.loop_lag)
        probe.start()
    try:
        return await _drive_async_calls(fn, kwargs, scenario, faults)
    finally:
        if probe is not None:
            lag.append(await probe.stop())
            sites.append(probe.blocked_at)


async def _drive_async_calls(fn: Callable[..., Any], kwargs: dict[str, Any],
                             scenario: Scenario, faults: _Faults) -> list[Call]:
    calls: list[Call] = []
    faults.completed = lambda: len(calls)
    loop = asyncio.get_running_loop()
    start = loop.time()
    drive = scenario.drive
    deadline = start + (drive.duration if drive.duration is not None else math.inf)
    calls_n = drive.calls or 1
    for i in range(calls_n):
        if loop.time() > deadline:
            break
        now = loop.time() - start
        faults.tick(now)
        began = loop.time()
        real = time.monotonic()
        call = Call(i, now, 0.0)
        try:
            call.value = await fn(**kwargs)
        except Exception as exc:
            call.error = exc
        call.elapsed = loop.time() - began
        call.window = (real, time.monotonic())
        calls.append(call)
        if drive.every and i + 1 < calls_n:
            await asyncio.sleep(drive.every)
    faults.heal_all(loop.time() - start)
    return calls


def _http_target(scenario: Scenario, services: dict[str, ServiceHandle],
                 request: pytest.FixtureRequest) -> Callable[..., Any]:
    spec = scenario.target.http
    assert spec is not None
    if spec.command is not None:
        base_url = _start_command(spec, services, request)
        app = None
    else:
        assert spec.app is not None
        app = _import(spec.app, "target.http.app")
        base_url = "http://scenario"

    clients: dict[int, Any] = {}  # one keep-alive client per event loop, closed at the end

    async def call() -> Any:
        import httpx

        loop_id = id(asyncio.get_running_loop())
        client = clients.get(loop_id)
        if client is None:
            transport = httpx.ASGITransport(app=app) if app is not None else None
            client = clients[loop_id] = httpx.AsyncClient(
                transport=transport, base_url=base_url, timeout=None,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))
        response = await client.request(spec.method, spec.path, json=spec.json_body)
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 500:
            raise RuntimeError(f"HTTP {response.status_code}: {str(body)[:200]}")
        return {"status": response.status_code, "body": body}

    async def aclose() -> None:
        client = clients.pop(id(asyncio.get_running_loop()), None)
        if client is not None:
            await client.aclose()

    call.aclose = aclose  # type: ignore[attr-defined]
    return call


async def _aclose(fn: Any) -> None:
    """Close what a target kept open across calls (the HTTP target's client)."""
    aclose = getattr(fn, "aclose", None)
    if aclose is not None:
        await aclose()


class _Placeholders(dict[str, str]):
    def __missing__(self, key: str) -> str:
        raise ScenarioUsageError(
            f"target.http: unknown placeholder {{{key}}}; known: "
            + ", ".join("{" + k + "}" for k in sorted(self)))


def _start_command(spec: Any, services: dict[str, ServiceHandle],
                   request: pytest.FixtureRequest) -> str:
    """Start the scenario's server process on a free loopback port, wait until it
    answers, stop it (and everything it started) after the test."""
    import os
    import shlex
    import subprocess
    import tempfile
    from pathlib import Path

    import httpx

    from pytest_resilience.services.supervise import log_tail, propose_port, spawn

    port = propose_port()
    values = _Placeholders(port=str(port))
    for name, handle in services.items():
        for suffix in ("", "_url", "_dsn", "_address"):
            values[name + suffix] = handle.address
    command = shlex.split(spec.command) if isinstance(spec.command, str) else spec.command
    try:
        argv = [arg.format_map(values) for arg in command]
        env = {key: value.format_map(values) for key, value in spec.env.items()}
    except (ValueError, IndexError) as exc:
        raise ScenarioUsageError(f"target.http.command: {exc} (write literal braces as "
                                 "{{ and }})") from None
    workdir = Path(tempfile.mkdtemp(prefix="resilience-scenario-"))
    log = workdir / "output.log"
    with log.open("wb") as out:
        try:
            child = spawn(argv, name=f"scenario command {argv[0]}", remove=workdir,
                          stdout=out, stderr=subprocess.STDOUT,
                          env={**os.environ, **env}, cwd=str(request.config.rootpath))
        except OSError as exc:
            raise ScenarioUsageError(f"target.http.command {argv[0]!r} cannot start: "
                                     f"{exc}") from None
    request.addfinalizer(child.stop)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + spec.ready_timeout
    last = "no answer yet"
    with httpx.Client(timeout=1.0) as client:
        while True:
            if not child.alive():
                raise ScenarioUsageError(
                    f"target.http.command {shlex.join(argv)!r} exited before it answered on "
                    f"{url}{spec.ready}; its output:\n{log_tail(log)}")
            try:
                if client.get(url + spec.ready).status_code < 500:
                    return url
                last = "it answered with a server error"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}"
            if time.monotonic() > deadline:
                child.stop()
                raise ScenarioUsageError(
                    f"target.http.command {shlex.join(argv)!r} did not answer on "
                    f"{url}{spec.ready} within {fmt_s(spec.ready_timeout)} ({last}); it must "
                    f"listen on 127.0.0.1:{{port}}; its output:\n{log_tail(log)}")
            time.sleep(0.05)  # a bounded readiness poll of a child process


# -- expectations -> verdicts ---------------------------------------------------------------

def _describe(call: Call) -> str:
    if call.error is not None:
        return f"raised {type(call.error).__name__}: {str(call.error)[:80]}"
    return repr(call.value)[:100]


def _verdict_returns(expected: Any, calls: list[Call]) -> Verdict:
    rows = [[str(c.index + 1), f"+{fmt_s(c.started)}", _describe(c),
             "" if c.ok and c.value == expected else "<--"] for c in calls]
    bad = [r for r in rows if r[3]]
    return Verdict(
        kind="returns", claim=f"every call returns {expected!r}", passed=bool(calls) and not bad,
        expected=expected, observed=[None if c.error else c.value for c in calls],
        headers=["call", "at", "result", ""], rows=rows,
        outcome=f"{len(bad)} of {len(calls)} calls did not" if bad else f"{len(calls)} calls did",
    )


def _verdict_raises(name: str, calls: list[Call]) -> Verdict:
    rows = [[str(c.index + 1), _describe(c),
             "" if c.error is not None and type(c.error).__name__ == name else "<--"]
            for c in calls]
    bad = [r for r in rows if r[2]]
    return Verdict(
        kind="raises", claim=f"every call raises {name}", passed=bool(calls) and not bad,
        expected=name, observed=[type(c.error).__name__ if c.error else None for c in calls],
        headers=["call", "result", ""], rows=rows,
        outcome=f"{len(bad)} of {len(calls)} calls did not" if bad else f"{len(calls)} calls did",
    )


def _verdict_error_rate(limit: float, calls: list[Call]) -> Verdict:
    failed = sum(not c.ok for c in calls)
    rate = failed / len(calls) if calls else 1.0
    return Verdict(
        kind="error-rate", claim=f"at most {limit:.0%} of calls fail", passed=rate <= limit,
        expected={"max": limit}, observed={"rate": rate, "failed": failed, "calls": len(calls)},
        outcome=f"{failed} of {len(calls)} failed ({rate:.0%})",
    )


def _requests(service: ServiceHandle, route: str | None) -> list[Any]:
    if service.backend is None:
        raise ScenarioUsageError(f"expect: {service.name!r} is not an HTTP backend")
    records = list(service.backend.requests)
    if route is not None:
        method, _, path = route.partition(" ")
        records = [r for r in records if r.method == method and r.path == path]
    return records


def _connections(service: ServiceHandle) -> list[Any]:
    """Connections the service's proxy accepted (the attempts of a TCP client: a DB
    driver opens one per attempt), from the built-in engine's event log."""
    if service.proxy is None:
        raise ScenarioUsageError(f"expect: {service.name!r} has neither HTTP routes nor a "
                                 "proxy whose connections could be counted")
    return [e for e in service.proxy.events()
            if getattr(e, "kind", None) in ("accepted", "connection_accepted")]


def _verdict_attempts(spec: Any, services: dict[str, ServiceHandle]) -> Verdict:
    service = services[spec.service]
    if service.backend is None:  # a TCP service: connections accepted by its proxy
        if spec.route is not None:
            raise ScenarioUsageError(f"expect.attempts.route: {spec.service!r} is not an "
                                     "HTTP backend")
        count = len(_connections(service))
    else:
        count = len(_requests(service, spec.route))
    noun = "requests" if service.backend is not None else "connections"
    where = spec.service + (f" {spec.route}" if spec.route else "")
    checks = []
    if spec.exactly is not None:
        checks.append(("exactly", spec.exactly, count == spec.exactly))
    if spec.at_most is not None:
        checks.append(("at most", spec.at_most, count <= spec.at_most))
    if spec.at_least is not None:
        checks.append(("at least", spec.at_least, count >= spec.at_least))
    rows = [[what, str(n), str(count), "" if ok else "<--"] for what, n, ok in checks]
    return Verdict(
        kind="attempts", claim=f"{noun} reaching {where}", passed=all(ok for *_, ok in checks),
        expected={what: n for what, n, _ in checks}, observed={"requests": count},
        headers=["bound", "expected", "observed", ""], rows=rows,
        outcome=f"{count} {noun}",
    )


def _verdict_backoff(spec: Backoff, services: dict[str, ServiceHandle], clock: str,
                     calls: list[Call]) -> list[Verdict]:
    """The curve of each retry timeline (per call, per client connection, or one for the
    run), and - when jitter is claimed over several timelines - that they do not retry in
    lock-step."""
    from pytest_resilience.observe.attempts import from_requests
    from pytest_resilience.verdicts import backoff as models

    service = services[spec.service]
    kind: Literal["real", "virtual"] = "real" if clock != "virtual" else "virtual"
    unit = {"call": "call", "connection": "client connection", "run": "run"}[spec.per]
    if service.backend is None:  # a TCP service: each accepted connection is an attempt
        from pytest_resilience.observe.attempts import from_toxiproxy_events

        if spec.per == "connection":
            raise ScenarioUsageError(
                f"expect.backoff.per: connection needs an HTTP backend; {spec.service!r} "
                "is a TCP service, where each connection is one attempt (use per: call)")
        events = _connections(service)
        groups = _per_call(events, calls, spec.per, lambda e: float(getattr(e, "time", 0.0)))
        timelines = [from_toxiproxy_events(group) for group in groups]
    else:
        records = _requests(service, spec.route)
        if spec.per == "connection":
            by_conn: dict[int, list[Any]] = {}
            for record in records:
                by_conn.setdefault(record.connection, []).append(record)
            groups = list(by_conn.values())
        else:
            groups = _per_call(records, calls, spec.per, lambda r: float(r.arrived))
        source = f"{spec.service} request log"
        timelines = [from_requests(group, clock=kind, source=source) for group in groups]
    cap = spec.cap if spec.cap is not None else math.inf
    if spec.model == "exponential":
        model = models.exponential(spec.initial, spec.multiplier, cap=cap, jitter=spec.jitter,
                                   jitter_max=spec.jitter_max)
    elif spec.model == "constant":
        model = models.constant(spec.initial, jitter=spec.jitter, jitter_max=spec.jitter_max)
    else:
        model = models.linear(spec.initial, spec.multiplier, cap=cap)
    tolerance: Any = spec.tolerance
    if isinstance(tolerance, list):
        tolerance = tuple(tolerance)

    sink: list[Verdict] = []
    push_sink(sink)  # judged here, collected once by _conclude
    try:
        curves = [_judge(models.expect_backoff, t, model, attempts=spec.attempts,
                         tolerance=tolerance) for t in timelines] if spec.curve else []
        spread = spec.spread if spec.spread is not None else (
            spec.jitter != "none" and (len(timelines) >= 2 or not spec.curve))
        jitter = None
        if spread:
            if model.exact:
                raise ScenarioUsageError(
                    "expect.backoff.spread: true needs a jittered curve (set jitter:); a "
                    "curve without jitter retries in lock-step by design")
            jitter = _judge(models.expect_jitter, timelines, model)
    finally:
        pop_sink(sink)
    verdicts = [] if not spec.curve else [
        curves[0] if len(curves) == 1 else _each(curves, unit)] if curves else [
        _not_measured_backoff(spec, model.describe(), unit)]
    if jitter is not None:
        verdicts.append(jitter)
    return verdicts


def _judge(check: Callable[..., Verdict], *args: Any, **kwargs: Any) -> Verdict:
    """The verdict of ``check(...)``, passed or failed (never raised)."""
    try:
        return check(*args, **kwargs)
    except VerdictFailed as exc:
        return exc.verdict


def _per_call(items: list[Any], calls: list[Call], per: str,
              at: Callable[[Any], float]) -> list[list[Any]]:
    """``items`` split by the call whose window holds them (calls one after another)."""
    if per == "run" or len(calls) <= 1:
        return [list(items)] if items or calls else []
    groups: list[list[Any]] = [[] for _ in calls]
    for item in items:
        t = at(item)
        for i, call in enumerate(calls):
            start = call.window[0]
            end = calls[i + 1].window[0] if i + 1 < len(calls) else math.inf
            if start <= t < end:
                groups[i].append(item)
                break
    return groups


def _each(curves: list[Verdict], unit: str) -> Verdict:
    """One verdict over the curve verdicts of several timelines."""
    failed = [i for i, v in enumerate(curves) if not v.passed]
    rows = [[str(i + 1), v.outcome or ("ok" if v.passed else "failed"),
             "" if v.passed else "<--"] for i, v in enumerate(curves)]
    notes = [f"{unit} {failed[0] + 1}:\n{curves[failed[0]].text()}"] if failed else []
    if len(failed) > 1:
        notes.append(f"{len(failed) - 1} more {unit}s failed the same curve")
    first = curves[0]
    claim = first.claim + f" (each of {len(curves)} {unit}s)"
    return Verdict(
        kind="backoff", claim=claim, passed=not failed, expected=first.expected,
        observed=[v.observed for v in curves], tolerance=first.tolerance,
        headers=[unit, "observed", ""], rows=rows, notes=notes,
        outcome=f"{len(curves) - len(failed)} of {len(curves)} {unit}s follow the curve",
    )


def _not_measured_backoff(spec: Backoff, curve: str, unit: str) -> Verdict:
    return Verdict(
        kind="backoff", claim=curve, passed=False, outcome="not measured",
        notes=[f"no {unit} reached {spec.service}: nothing to judge"],
    )


def _verdict_breaker(spec: Any, observer: Any) -> Verdict:
    from pytest_resilience.verdicts.breaker import expect_transitions

    tolerance: Any = spec.tolerance
    if isinstance(tolerance, list):
        tolerance = tuple(tolerance)
    return _judge(expect_transitions, observer, spec.states, opens_after=spec.opens_after,
                  recovery_timeout=spec.recovery_timeout, tolerance=tolerance)


def _verdict_timeout(spec: Any, calls: list[Call], clock: str) -> Verdict:
    from pytest_resilience.verdicts.core import Tolerance

    default = Tolerance() if clock == "virtual" else Tolerance(0.005, max(0.05, spec.within / 10))
    tol = Tolerance.coerce(tuple(spec.tolerance) if isinstance(spec.tolerance, list)
                           else spec.tolerance, default)
    lo, hi = tol.widen(spec.within, spec.within)
    rows = []
    for c in calls:
        raised = type(c.error).__name__ if c.error is not None else "(returned)"
        ok = c.error is not None and _is_exc(c.error, spec.exc) and lo <= c.elapsed <= hi
        rows.append([str(c.index + 1), raised, fmt_s(c.elapsed), "" if ok else "<--"])
    return Verdict(
        kind="timeout", claim=f"every call raises {spec.exc} after {fmt_s(spec.within)}",
        passed=bool(calls) and all(not r[3] for r in rows), tolerance=str(tol),
        expected={"exc": spec.exc, "within": spec.within},
        observed=[c.elapsed for c in calls], headers=["call", "raised", "after", ""], rows=rows,
    )


def _is_exc(error: BaseException, name: str) -> bool:
    return any(cls.__name__ == name for cls in type(error).__mro__)


def _verdict_latency(spec: Any, calls: list[Call]) -> Verdict:
    times = sorted(c.elapsed for c in calls)
    observed: dict[str, float] = {}
    rows = []
    passed = bool(times)
    for key, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100)):
        bound = getattr(spec, key)
        if bound is None or not times:
            continue
        value = times[-1] if q == 100 else (
            statistics.quantiles(times, n=100, method="inclusive")[q - 1]
            if len(times) > 1 else times[0])
        observed[key] = value
        ok = value <= bound
        passed &= ok
        rows.append([key, fmt_s(bound), fmt_s(value), "" if ok else "<--"])
    return Verdict(kind="latency", claim="call latency within bounds", passed=passed,
                   expected={k: getattr(spec, k) for k in ("p50", "p95", "p99", "max")},
                   observed=observed, headers=["percentile", "at most", "observed", ""],
                   rows=rows)


def _context_factory(setup_fn: Callable[..., Any], kwargs: dict[str, Any]
                     ) -> Callable[[], Any]:
    """``target.setup`` as an async context manager factory."""
    if inspect.isasyncgenfunction(setup_fn):
        return lambda: contextlib.asynccontextmanager(setup_fn)(**kwargs)

    def enter() -> Any:
        cm = setup_fn(**kwargs)
        if not hasattr(cm, "__aenter__"):
            raise ScenarioUsageError(
                "target.setup must return an async context manager (e.g. a function "
                "decorated with @contextlib.asynccontextmanager) or be an async generator")
        return cm

    return enter


def _run_load(scenario: Scenario, request: pytest.FixtureRequest, fn: Callable[..., Any],
              kwargs: dict[str, Any], factory: Callable[[], Any] | None, faults: _Faults,
              services: dict[str, ServiceHandle], timeline: Timeline) -> None:
    """A load/soak run of the scenario: the soak driver, samples, drift verdicts."""
    __tracebackhide__ = True
    import functools

    from pytest_resilience.errors import ConfigError
    from pytest_resilience.soak.driver import Driver
    from pytest_resilience.soak.sampler import Sampler
    from pytest_resilience.soak.session import Progress, finish, pg_session_counter, plan_for

    drive = scenario.drive
    values: dict[str, Any] = {"rate": drive.rate, "concurrency": drive.concurrency,
                              "warmup": drive.warmup, "interval": drive.sample_every}
    if drive.duration is not None:
        values["duration"] = drive.duration
    if drive.calls is not None:
        values["iterations"] = drive.calls
    try:
        plan = plan_for(request.node, **values)
    except ConfigError as exc:
        raise ScenarioUsageError(f"drive: {exc}") from None
    backends = [h.backend for h in services.values() if h.backend is not None]
    sampler = Sampler(
        pg_sessions=pg_session_counter(request, used=True) if "postgres" in services
        else None,
        attempts=(lambda: sum(len(b.requests) for b in backends)) if backends else None,
    )
    item = request.node
    progress = Progress(item.config, item.name, plan)
    is_async = inspect.iscoroutinefunction(fn)
    driver: Driver | None = None

    async def main() -> None:
        nonlocal driver
        context: Any = None
        cm = factory() if factory is not None else None
        if cm is not None:
            context = await cm.__aenter__()
        try:
            call_kwargs = dict(kwargs)
            if cm is not None:
                call_kwargs["context"] = context
            if is_async:
                async def target() -> Any:
                    return await fn(**call_kwargs)
                driver = Driver(target, plan, name=item.nodeid, sampler=sampler,
                                faults=faults if scenario.faults else None, on_sample=progress)
            else:
                driver = Driver(functools.partial(fn, **call_kwargs), plan, name=item.nodeid,
                                sampler=sampler, faults=faults if scenario.faults else None,
                                on_sample=progress)
            running = driver
            faults.completed = lambda: running.calls
            await driver.run()
        finally:
            await _aclose(fn)
            if cm is not None:
                await cm.__aexit__(None, None, None)

    try:
        asyncio.run(main())
    finally:
        if driver is not None:
            progress.done(driver.record)
            finish(item, driver.record)
    assert driver is not None
    record = driver.record
    _conclude(scenario, request, _load_verdicts(scenario, record), timeline,
              empty="expects nothing of its load run: add expect.error_rate, "
              "expect.latency or expect.drift")


def _load_verdicts(scenario: Scenario, record: Any) -> list[Verdict]:
    from pytest_resilience.soak import drift

    expect = scenario.expect
    out: list[Verdict] = []
    if expect.error_rate is not None:
        from pytest_resilience.soak.session import error_rate_verdict

        out.append(error_rate_verdict(record, expect.error_rate))
    if expect.latency is not None:
        h = record.histogram
        rows = []
        observed: dict[str, float] = {}
        passed = h.count > 0
        for key, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100)):
            bound = getattr(expect.latency, key)
            if bound is None:
                continue
            value = h.max if q == 100 else h.percentile(q)
            observed[key] = value
            ok = h.count > 0 and value <= bound
            passed &= ok
            rows.append([key, fmt_s(bound), fmt_s(value) if h.count else "not measured",
                         "" if ok else "<--"])
        out.append(Verdict(kind="latency", claim="call latency within bounds (the whole run, "
                           "from each call's due time)", passed=passed,
                           expected={k: getattr(expect.latency, k)
                                     for k in ("p50", "p95", "p99", "max")},
                           observed=observed, headers=["percentile", "at most", "observed", ""],
                           rows=rows, outcome=", ".join(
                               f"{k} {fmt_s(v)}" for k, v in observed.items()) + (
                               f" over {h.count} calls" if h.count else "not measured: "
                               "no call completed")))
    spec = expect.drift
    if spec is not None:
        for series in spec.no_growth:
            out.append(drift.expect_no_growth(record, series, raise_=False))
        if spec.rss_ratio is not None:
            out.append(drift.expect_rss_bounded(record, ratio=spec.rss_ratio, raise_=False))
        for sustained in spec.sustained:
            out.append(drift.expect_sustained(record, sustained.series,
                                              at_most=sustained.at_most,
                                              consecutive=sustained.consecutive, raise_=False))
        if spec.stage_latency is not None:
            sl = spec.stage_latency
            out.append(drift.expect_stage_latency(
                record, series=sl.series, at_most_during=sl.at_most_during,
                at_most_outside=sl.at_most_outside, recover_within=sl.recover_within,
                raise_=False))
        if spec.amplification is not None:
            out.append(drift.expect_amplification(
                record, at_most=spec.amplification.at_most,
                during_stages=spec.amplification.during_faults, raise_=False))
    return out


def run_scenario(scenario: Scenario, request: pytest.FixtureRequest,
                 params: dict[str, Any]) -> None:
    """Run ``scenario`` as the test ``request`` belongs to."""
    __tracebackhide__ = True
    problem: str | None = None
    try:
        _run(scenario, request, params)
    except ScenarioUsageError as exc:
        problem = str(exc)
    if problem is not None:  # failed outside the except block: no chained traceback
        _fail(f"scenario {scenario.name!r}: {problem}")


@dataclass
class _Prepared:
    """A scenario's services and target, ready to be driven (once, or per example)."""

    scenario: Scenario
    services: dict[str, ServiceHandle]
    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    factory: Callable[[], Any] | None


def _prepare(scenario: Scenario, request: pytest.FixtureRequest,
             params: dict[str, Any]) -> _Prepared:
    __tracebackhide__ = True
    services = _start_services(scenario, request)
    setup = scenario.target.setup
    if scenario.target.call is not None:
        fn = _import(scenario.target.call, "target.call")
        kwargs = _bind(fn, services, {**scenario.target.args, **params},
                       context=setup is not None)
        if setup is not None and "context" not in inspect.signature(fn).parameters:
            raise ScenarioUsageError("target.setup is given but target.call has no "
                                     "'context' parameter to receive what it yields")
    else:
        fn = _http_target(scenario, services, request)
        kwargs = {}
    if scenario.expect.breaker is not None and (
            scenario.target.call is None or "breaker" not in inspect.signature(fn).parameters):
        raise ScenarioUsageError(
            "expect.breaker judges the transitions the target reports: give target.call "
            "a 'breaker' parameter (a BreakerObserver: call breaker.report(old, new) on "
            "each state change and route calls through breaker.call/acall)")
    factory: Callable[[], Any] | None = None
    if setup is not None:
        setup_fn = _import(setup, "target.setup")
        setup_kwargs = _bind(setup_fn, services, params)
        factory = _context_factory(setup_fn, setup_kwargs)
    return _Prepared(scenario, services, fn, kwargs, factory)


def _run(scenario: Scenario, request: pytest.FixtureRequest, params: dict[str, Any]) -> None:
    __tracebackhide__ = True
    prepared = _prepare(scenario, request, params)
    if scenario.explore is not None:
        _explore(prepared, request)
        return
    if scenario.drive.load:
        timeline = Timeline()
        faults = _Faults(list(scenario.faults), prepared.services, timeline)
        _run_load(scenario, request, prepared.fn, prepared.kwargs, prepared.factory, faults,
                  prepared.services, timeline)
        return
    verdicts, timeline = _once(prepared, list(scenario.faults))
    _conclude(scenario, request, verdicts, timeline,
              empty=None if scenario.expect.no_leaks else "expects nothing: add an 'expect' "
              "section (a scenario that checks nothing cannot fail)")


def _conclude(scenario: Scenario, request: pytest.FixtureRequest, verdicts: list[Verdict],
              timeline: Timeline, *, empty: str | None) -> None:
    """Record the verdicts and the timeline as it ran; fail with the failed verdicts'
    tables, or with ``empty`` when nothing was judged."""
    __tracebackhide__ = True
    for verdict in verdicts:
        if verdict.kind != "breaker":  # its expect_* collected it
            collect(verdict)
    request.node.add_report_section("call", "fault timeline", timeline.text())
    attach(request.node, "fault-timeline",
           events=[[round(at, 6), what] for at, what in timeline.events])
    failed = [v for v in verdicts if not v.passed]
    if failed:
        text = "\n\n".join(v.text() for v in failed)
        pytest.fail(f"scenario {scenario.name!r}: {len(failed)} of {len(verdicts)} "
                    f"expectations failed\n\n{text}\n\n{timeline.text()}", pytrace=False)
    if not verdicts and empty is not None:
        pytest.fail(f"scenario {scenario.name!r} {empty}", pytrace=False)


def _once(prepared: _Prepared, steps: list[FaultStep]) -> tuple[list[Verdict], Timeline]:
    """Drive the target once under ``steps`` (calls one after another) and judge it."""
    __tracebackhide__ = True
    scenario, services = prepared.scenario, prepared.services
    fn, factory = prepared.fn, prepared.factory
    kwargs = dict(prepared.kwargs)
    observer = None
    if scenario.expect.breaker is not None:
        from pytest_resilience.observe.breaker import BreakerObserver

        observer = BreakerObserver(name="the target's breaker")
        kwargs["breaker"] = observer
    timeline = Timeline()
    faults = _Faults(steps, services, timeline, breaker=observer)
    lag: list[float] = []
    sites: list[str | None] = []
    cancel = _cancel_checker(scenario, services)
    if cancel is not None:
        cancel.start()
    if inspect.iscoroutinefunction(fn):
        async def drive() -> list[Call]:
            try:
                if factory is None:
                    return await _drive_async(fn, kwargs, scenario, faults, lag, sites)
                async with factory() as context:
                    kwargs["context"] = context
                    return await _drive_async(fn, kwargs, scenario, faults, lag, sites)
            finally:
                await _aclose(fn)

        calls = asyncio.run(drive())
    else:
        if scenario.expect.loop_lag is not None:
            raise ScenarioUsageError("expect.loop_lag needs an async target (an event loop "
                                     "to watch); this target is a plain function")
        if factory is not None:
            raise ScenarioUsageError("target.setup is async; a plain-function target cannot "
                                     "enter it (make the call async)")
        calls = _drive_sync(fn, kwargs, scenario, faults)

    expect = scenario.expect
    verdicts: list[Verdict] = []
    if cancel is not None:
        verdicts.append(cancel.finish())
    if "returns" in expect.model_fields_set:
        verdicts.append(_verdict_returns(expect.returns, calls))
    if expect.raises is not None:
        verdicts.append(_verdict_raises(expect.raises, calls))
    if expect.error_rate is not None:
        verdicts.append(_verdict_error_rate(expect.error_rate, calls))
    attempts = expect.attempts if isinstance(expect.attempts, list) else \
        [expect.attempts] if expect.attempts is not None else []
    for spec in attempts:
        verdicts.append(_verdict_attempts(spec, services))
    if expect.backoff is not None:
        verdicts.extend(_verdict_backoff(expect.backoff, services, scenario.clock, calls))
    if expect.timeout is not None:
        verdicts.append(_verdict_timeout(expect.timeout, calls, scenario.clock))
    if expect.latency is not None:
        verdicts.append(_verdict_latency(expect.latency, calls))
    if expect.breaker is not None:
        assert observer is not None
        verdicts.append(_verdict_breaker(expect.breaker, observer))
    if expect.loop_lag is not None:
        worst = lag[0] if lag else float("nan")
        site = sites[0] if sites else None
        blocked = not (worst <= expect.loop_lag)
        verdicts.append(Verdict(
            kind="loop-lag", claim=f"the event loop is never blocked longer than "
            f"{fmt_s(expect.loop_lag)}", passed=not blocked,
            expected={"max_lag": expect.loop_lag}, observed={"max_lag": worst},
            headers=["check", "expected", "observed", ""],
            rows=[["worst loop lag", f"<= {fmt_s(expect.loop_lag)}", fmt_s(worst),
                   "<-- blocked: a blocking call in async code?" if blocked else ""],
                  *([["blocked at", "", site, ""]] if blocked and site else [])],
            blame=[0] if blocked else [],
            outcome=f"worst lag {fmt_s(worst)}" + (f" at {site}" if blocked and site else ""),
        ))
    return verdicts, timeline


def _cancel_checker(scenario: Scenario, services: dict[str, ServiceHandle]) -> Any:
    """``expect.cancelled``: an ``expect_hung_query_cancelled`` on the Postgres stage,
    armed before the drive."""
    spec = scenario.expect.cancelled
    if spec is None:
        return None
    from pytest_resilience.verdicts.cancel import expect_hung_query_cancelled

    return expect_hung_query_cancelled(
        services["postgres"].stage, spec.timeout, match=spec.match, nth=spec.nth,
        server=spec.server, tolerance=spec.tolerance,
        server_idle_within=spec.server_idle_within, give_up_after=spec.give_up_after,
        what="the target")


def _explore(prepared: _Prepared, request: pytest.FixtureRequest) -> None:
    """Search generated fault timelines for one that breaks ``expect``; fail with the
    smallest, as a ``faults:`` section and a replay file."""
    __tracebackhide__ = True
    from pytest_resilience.config import settings_key
    from pytest_resilience.explore import Schedule, explore, fault_schedules, replay
    from pytest_resilience.verdicts.core import pop_sink, push_sink

    scenario = prepared.scenario
    spec = scenario.explore
    assert spec is not None
    services = prepared.services
    chosen = spec.on or list(services)
    proxies = [n for n in chosen if services[n].kind in ("postgres", "tcp")]
    backends = [n for n in chosen if services[n].backend is not None]
    names = spec.faults
    if names is not None:
        from pytest_resilience.explore import HTTP, NETWORK

        unknown = [f for f in names if f not in NETWORK and f not in HTTP]
        if unknown:
            raise ScenarioUsageError(f"explore.faults: cannot generate {unknown}; known: "
                                     f"{', '.join([*NETWORK, *HTTP])}")
    max_calls = spec.max_calls if spec.max_calls is not None else (scenario.drive.calls or 1)
    try:
        strategy = fault_schedules(proxies=proxies, backends=backends, faults=names,
                                   max_faults=spec.max_faults, horizon=spec.horizon,
                                   max_calls=max_calls, clock=spec.clock)
    except Exception as exc:
        raise ScenarioUsageError(f"explore: {exc}") from None

    def run_once(schedule: Schedule) -> None:
        for handle in services.values():
            if handle.backend is not None:
                handle.backend.reset()
        steps = [FaultStep.model_validate(step) for step in schedule.as_faults()]
        sink: list[Verdict] = []
        push_sink(sink)  # the examples' verdicts are not the test's
        try:
            verdicts, timeline = _once(prepared, steps)
        finally:
            pop_sink(sink)
        failed = [v for v in verdicts if not v.passed]
        if failed:
            raise AssertionError("\n\n".join(v.text() for v in failed)
                                 + "\n\n" + timeline.text())

    seed = scenario.seed if scenario.seed is not None else \
        request.config.stash[settings_key].seed
    chosen_replay = request.config.stash[settings_key].replay
    if chosen_replay is not None:  # --resilience-replay=FILE: run that schedule, no search
        again = replay(run_once, chosen_replay, seed=seed)
        for handle in services.values():
            if handle.backend is not None:
                handle.backend.reset()
        if again.reproduced:
            pytest.fail(f"scenario {scenario.name!r}: {again.report()}", pytrace=False)
        return
    m, k = spec.replays
    result = explore(run_once, strategy, max_examples=spec.examples, max_time=spec.max_time,
                     seed=seed, replays=(m, k), rate_runs=spec.rate_runs)
    for handle in services.values():
        if handle.backend is not None:
            handle.backend.reset()
    summary = Verdict(
        kind="explore", claim=f"no fault schedule (up to {spec.max_faults} faults) breaks "
        "the scenario's expectations", passed=not result.found,
        expected={"examples": spec.examples}, observed={
            "examples": result.examples, "elapsed_s": round(result.elapsed, 3),
            "schedule": result.schedule.as_faults() if result.schedule else None,
            "reproduced": result.reproduced, "replayed": result.replayed, "seed": seed,
            "searched": result.searched.as_faults() if result.searched else None,
            "injections": result.injections.entries if result.injections else None},
        outcome=(f"{result.examples} schedules explored" if not result.found else
                 f"{len(result.schedule or ())} fault(s) break it, "
                 f"{result.reproduced} of {result.replayed} replays"))
    collect(summary)
    if result.schedule is None:
        return
    written = _write_replay(request, scenario, result.schedule, seed)
    if written.endswith(".resilience.yaml"):
        result.save(written.removesuffix(".resilience.yaml") + ".explore.json")
    pytest.fail(f"scenario {scenario.name!r}: {result.report()}\n\nreplay it: pytest "
                f"{written}  (or --resilience-replay={written} on this scenario)",
                pytrace=False)


def _write_replay(request: pytest.FixtureRequest, scenario: Scenario, schedule: Any,
                  seed: int) -> str:
    """The scenario with the minimal schedule as its ``faults`` (``*.resilience.yaml``:
    pytest collects it from anywhere)."""
    import re

    import yaml

    from pytest_resilience.config import settings_key

    data = scenario.model_dump(by_alias=True, exclude_unset=True, exclude={"explore"},
                               mode="json")
    data["name"] = f"{scenario.name} (replay)"
    data["faults"] = schedule.as_faults()
    data["seed"] = seed  # the replay seeds its random draws as the search did
    directory = request.config.stash[settings_key].report
    folder: Any
    if directory is not None:
        folder = directory / "replay"
    else:
        cache = getattr(request.config, "cache", None)
        folder = cache.mkdir("resilience-replay") if cache is not None else None
    if folder is None:
        return "(no cache directory: paste the faults above into the scenario)"
    folder.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", scenario.name).strip("_")[:80] or "scenario"
    path = folder / f"{slug}.resilience.yaml"
    path.write_text("# written by pytest-resilience explore: the smallest failing schedule\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return str(path)
