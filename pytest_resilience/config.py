"""Settings from the command line, the ini file and the environment, validated once.

Every ``--resilience-*`` flag has an ini twin (``resilience_*``). Flags default
to ``None`` and fall back to the ini value with an ``is None`` check, so an
explicit falsy value on the command line always wins.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "LEAK_MODES",
    "POSTGRES_MODES",
    "TOXIPROXY_ENGINE_MODES",
    "TOXIPROXY_MODES",
    "Settings",
    "add_options",
    "settings_key",
]

POSTGRES_MODES = ("local", "docker", "external")
TOXIPROXY_MODES = ("builtin", "binary", "docker", "external")
TOXIPROXY_ENGINE_MODES = ("process", "thread")
LEAK_MODES = ("off", "warn", "fail")

README_OPTIONS = "see the 'Options' section of the pytest-resilience README"


@dataclass(frozen=True)
class Settings:
    """The effective, validated configuration of one pytest run."""

    postgres: str = "local"
    pg_bin: Path | None = None
    postgres_dsn: str | None = None
    toxiproxy: str = "builtin"
    toxiproxy_engine: str = "process"
    toxiproxy_bin: Path | None = None
    toxiproxy_url: str | None = None
    seed: int = 0
    leaks: str = "off"
    cache_dir: Path | None = None
    report: Path | None = None
    soak: dict[str, Any] | None = None  # {"duration": s} | {"iterations": n}
    replay: Path | None = None  # an explore record or replay scenario to run instead

    def header_lines(self) -> list[str]:
        """Lines for the pytest report header: the effective configuration."""
        pg = self.postgres
        if self.postgres == "external":
            pg += f" ({redact_dsn(self.postgres_dsn or '')})"
        elif self.pg_bin is not None:
            pg += f" (bin: {self.pg_bin})"
        tp = self.toxiproxy
        if self.toxiproxy == "builtin":
            tp += f" ({self.toxiproxy_engine})"
        elif self.toxiproxy == "external":
            tp += f" ({self.toxiproxy_url})"
        elif self.toxiproxy == "binary" and self.toxiproxy_bin is not None:
            tp += f" ({self.toxiproxy_bin})"
        return [
            f"resilience: postgres={pg}, toxiproxy={tp}, leaks={self.leaks}, "
            f"seed={self.seed} (replay with --resilience-seed={self.seed})"
        ]


def redact_dsn(dsn: str) -> str:
    """Hide a password in a DSN so it can be printed."""
    import re

    dsn = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)


@dataclass(frozen=True)
class _Opt:
    name: str  # the Settings field
    help: str
    choices: tuple[str, ...] = ()
    env: str | None = None
    default: str | None = None

    @property
    def flag(self) -> str:
        return "--resilience-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "resilience_" + self.name


_OPTIONS = (
    _Opt("postgres", "how to get a Postgres server", POSTGRES_MODES, default="local"),
    _Opt("pg_bin", "directory holding initdb/postgres (default: PATH, then "
         "/usr/lib/postgresql/*/bin, newest first)"),
    _Opt("postgres_dsn", "DSN of the server for --resilience-postgres=external",
         env="RESILIENCE_POSTGRES_DSN"),
    _Opt("toxiproxy", "which Toxiproxy to use", TOXIPROXY_MODES, default="builtin"),
    _Opt("toxiproxy_engine", "run the built-in engine in a child process (accurate "
         "timing even when the test's thread is busy) or a thread (faster start)",
         TOXIPROXY_ENGINE_MODES, default="process"),
    _Opt("toxiproxy_bin", "path of toxiproxy-server for --resilience-toxiproxy=binary"),
    _Opt("toxiproxy_url", "API URL for --resilience-toxiproxy=external",
         env="TOXIPROXY_URL"),
    _Opt("seed", "seed for every random draw (toxicity, jitter); 'last' replays the "
         "previous run; default: a new random seed, printed in the header"),
    _Opt("leaks", "check every test for leaked resources", LEAK_MODES, default="off"),
    _Opt("cache_dir", "where initialised Postgres data directories are cached "
         "(default: the user cache dir)"),
    _Opt("report", "write the run's verdicts to DIR/results.json and DIR/report.html "
         "(created if missing)"),
    _Opt("soak", "bound every soak run (marked @pytest.mark.soak, or a scenario whose drive "
         "is a load run) by DURATION (60s, 15m, 24h) or ITERATIONS (a number of calls) "
         "instead of its own bound"),
    _Opt("replay", "run the fault schedule in FILE (an explore JSON record or a written "
         "replay scenario) in place of a scenario's explore: search, with its seed"),
)


def add_options(parser: pytest.Parser) -> None:
    """Register the ``resilience`` option group and its ini twins."""
    group = parser.getgroup("resilience", "pytest-resilience")
    for opt in _OPTIONS:
        extra = f" ({'|'.join(opt.choices)}, default {opt.default})" if opt.choices else ""
        env = f"; env {opt.env}" if opt.env else ""
        group.addoption(opt.flag, dest="resilience_" + opt.name, default=None,
                        help=opt.help + extra + env)
        parser.addini(opt.ini, help=opt.help + extra, default=None)


def _raw_values(config: pytest.Config) -> dict[str, tuple[str, str]]:
    """Each setting's raw string and where it came from (flag, ini or env)."""
    out: dict[str, tuple[str, str]] = {}
    for opt in _OPTIONS:
        value = config.getoption("resilience_" + opt.name)
        source = opt.flag
        if value is None:
            value = config.getini(opt.ini)
            source = f"ini {opt.ini}"
            if value in (None, ""):
                value = None
        if value is None and opt.env is not None:
            value = os.environ.get(opt.env) or None
            source = f"${opt.env}"
        if value is not None:
            out[opt.name] = (str(value), source)
    return out


def _choice(opt: _Opt) -> Callable[[str, str], str]:
    def check(value: str, source: str) -> str:
        if value not in opt.choices:
            raise pytest.UsageError(
                f"{source}={value!r} is not valid; choose one of: "
                f"{', '.join(opt.choices)} ({README_OPTIONS})"
            )
        return value

    return check


def _path(must_be_dir: bool) -> Callable[[str, str], Path]:
    def check(value: str, source: str) -> Path:
        path = Path(value).expanduser()
        if must_be_dir and not path.is_dir():
            raise pytest.UsageError(f"{source}={value!r}: no such directory")
        return path

    return check


def _cache_dir(value: str, source: str) -> Path:
    """The Postgres data-directory cache: a directory this process can write, or one it
    can create later. Nothing is created here (the run may never need Postgres): the
    nearest existing ancestor must be a writable directory."""
    path = Path(value).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path and not path.is_dir():
        raise pytest.UsageError(f"{source}={value!r}: {path} is a file, not a directory")
    if not existing.is_dir():
        raise pytest.UsageError(
            f"{source}={value!r}: cannot create {path}: {existing} is a file, not a directory"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = f"{path}" if existing == path else f"cannot create {path}: {existing}"
        raise pytest.UsageError(f"{source}={value!r}: {what} is not writable by this user; "
                                "give a directory you can write to")
    return path


def _report_dir(value: str, source: str) -> Path:
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise pytest.UsageError(
            f"{source}={value!r} is a file; give a directory (results.json is written into it)"
        )
    return path.absolute()


def _seed(config: pytest.Config) -> Callable[[str, str], int]:
    def check(value: str, source: str) -> int:
        if value == "last":
            cache = getattr(config, "cache", None)
            cached = cache.get("resilience/seed", None) if cache is not None else None
            if not isinstance(cached, int):
                raise pytest.UsageError(
                    f"{source}=last: no previous seed is cached; pass a number"
                )
            return cached
        try:
            return int(value)
        except ValueError:
            raise pytest.UsageError(
                f"{source}={value!r} is not valid; pass an integer or 'last'"
            ) from None

    return check


def _dsn(value: str, source: str) -> str:
    from urllib.parse import urlsplit

    if "://" in value:
        parts = urlsplit(value)
        if parts.scheme not in ("postgres", "postgresql"):
            raise pytest.UsageError(
                f"{source}: DSN {redact_dsn(value)!r} has scheme {parts.scheme!r}; "
                "expected postgresql://user[:password]@host[:port]/dbname"
            )
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when it is read
        except ValueError:
            port = parts.netloc.rsplit("@", 1)[-1].rpartition(":")[2]
            raise pytest.UsageError(
                f"{source}: DSN {redact_dsn(value)!r} has port {port!r}; the port must be a "
                "number 1-65535"
            ) from None
    elif "=" not in value:
        raise pytest.UsageError(
            f"{source}: {redact_dsn(value)!r} is not a DSN; expected "
            "postgresql://user[:password]@host[:port]/dbname or 'host=... dbname=...'"
        )
    return value


def _url(value: str, source: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise pytest.UsageError(
            f"{source}={redact_dsn(value)!r} is not an URL; expected e.g. "
            "http://127.0.0.1:8474"
        )
    return value.rstrip("/")


def _soak(value: str, source: str) -> dict[str, Any]:
    from pytest_resilience.errors import ConfigError
    from pytest_resilience.soak.driver import parse_soak

    try:
        return parse_soak(value, source)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


def from_config(config: pytest.Config) -> Settings:
    """Build and validate the settings once, raising ``pytest.UsageError`` on bad values."""
    by_name = {opt.name: opt for opt in _OPTIONS}
    checks: dict[str, Callable[[str, str], Any]] = {
        "postgres": _choice(by_name["postgres"]),
        "toxiproxy": _choice(by_name["toxiproxy"]),
        "toxiproxy_engine": _choice(by_name["toxiproxy_engine"]),
        "leaks": _choice(by_name["leaks"]),
        "pg_bin": _path(must_be_dir=True),
        "toxiproxy_bin": _path(must_be_dir=False),
        "cache_dir": _cache_dir,
        "report": _report_dir,
        "postgres_dsn": _dsn,
        "toxiproxy_url": _url,
        "seed": _seed(config),
        "soak": _soak,
        "replay": _path(must_be_dir=False),
    }
    values: dict[str, Any] = {}
    raw = _raw_values(config)
    for name, (value, source) in raw.items():
        values[name] = checks[name](value, source)
    workerinput = getattr(config, "workerinput", None)
    if "seed" not in values:
        if workerinput is not None and "resilience_seed" in workerinput:
            values["seed"] = int(workerinput["resilience_seed"])
        else:
            values["seed"] = random.Random().randrange(2**32)
    settings = Settings(**values)
    if settings.postgres == "external" and settings.postgres_dsn is None:
        raise pytest.UsageError(
            "--resilience-postgres=external needs a DSN: pass --resilience-postgres-dsn, "
            "set ini resilience_postgres_dsn or $RESILIENCE_POSTGRES_DSN"
        )
    if settings.toxiproxy == "external" and settings.toxiproxy_url is None:
        raise pytest.UsageError(
            "--resilience-toxiproxy=external needs an URL: pass --resilience-toxiproxy-url, "
            "set ini resilience_toxiproxy_url or $TOXIPROXY_URL"
        )
    return settings


settings_key = pytest.StashKey[Settings]()

# Keep the field list and the option list in step.
assert {f.name for f in fields(Settings)} == {o.name for o in _OPTIONS}
