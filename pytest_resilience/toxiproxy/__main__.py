"""``python -m pytest_resilience.toxiproxy`` / ``pytest-resilience-toxiproxy``.

Runs the built-in Toxiproxy-compatible engine in the foreground::

    pytest-resilience-toxiproxy --host 127.0.0.1 --port 8474 [--config proxies.json] [--seed N]

Binds loopback unless told otherwise; Ctrl-C or SIGTERM stops it cleanly.
Bad arguments or an unreadable config file print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from typing import NoReturn

__all__ = ["main"]

PROG = "pytest-resilience-toxiproxy"
_LEVELS = {"debug": "DBG", "info": "INF", "warning": "WRN", "error": "ERR", "critical": "FTL"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{PROG}: error: {message} (see --help)\n")
        raise SystemExit(2)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        level = _LEVELS.get(record.levelname.lower(), record.levelname[:3])
        text = f"{stamp} {level} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {value!r}: not a number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}: must be 0..65535")
    return port


def _fd(value: str) -> int:
    try:
        fd = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid file descriptor {value!r}") from None
    if fd < 0:
        raise argparse.ArgumentTypeError(f"invalid file descriptor {value!r}")
    return fd


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Toxiproxy v2 compatible fault-injection proxy "
        "(pytest-resilience built-in engine).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="API host (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=_port, default=8474, help="API port (default: 8474; 0 = any)"
    )
    parser.add_argument(
        "--config", help="JSON file of proxies to create at start (/populate format)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for toxicity sampling")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="log level (default: info)",
    )
    parser.add_argument(
        "--proxy-metrics", action="store_true",
        help="serve the proxies' byte counters on GET /metrics (default: off, 404)",
    )
    parser.add_argument(
        "--allow-remote-listen", action="store_true",
        help="let proxies listen on non-loopback addresses (default: loopback only; "
        "anything else is refused with 400)",
    )
    parser.add_argument("--runtime-metrics", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--plain-timers", action="store_true",
        help="arm the toxics' timers plainly, with no early wake-up (less CPU, later timers)",
    )
    parser.add_argument(
        "--no-busy-poll", action="store_true",
        help="sleep as soon as the loop is idle, with no polling window after each packet "
        "(less CPU, slower round trips)",
    )
    parser.add_argument("--ready-fd", type=_fd, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--parent-fd", type=_fd, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def _report(fd: int | None, payload: dict[str, object]) -> None:
    if fd is None:
        return
    try:
        os.write(fd, (json.dumps(payload) + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    logger = logging.getLogger("pytest_resilience.toxiproxy")
    logger.addHandler(handler)
    logger.setLevel(args.log_level.upper())
    logger.propagate = False

    from pytest_resilience.errors import ConfigError, ServiceError
    from pytest_resilience.toxiproxy.link import POLL
    from pytest_resilience.toxiproxy.server import Engine, close_loop, new_event_loop, read_config
    from pytest_resilience.toxiproxy.toxics import PRECISION

    # This process runs nothing but the engine's loop: its toxics' timers may wake early
    # and spin the last stretch, and it keeps turning briefly after each packet, so a
    # halted CPU's late wake-up delays neither.
    PRECISION.enabled = not args.plain_timers
    if not args.no_busy_poll:
        POLL.switch_on()  # only where the kernel's CPU pressure can be read

    try:
        config = read_config(args.config)
    except ConfigError as exc:
        _report(args.ready_fd, {"ok": False, "kind": "config", "error": str(exc)})
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2

    loop = new_event_loop()
    engine = Engine(
        loop, args.seed,
        allow_remote_listen=args.allow_remote_listen, proxy_metrics=args.proxy_metrics,
    )
    try:
        port = loop.run_until_complete(engine.start(args.host, args.port, config))
    except (ConfigError, ServiceError, OSError) as exc:
        kind = "config" if isinstance(exc, ConfigError) else "service"
        _report(args.ready_fd, {"ok": False, "kind": kind, "error": str(exc)})
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        close_loop(loop, engine)
        return 2 if isinstance(exc, ConfigError) else 1

    stopping: list[str] = []

    def request_stop(reason: str) -> None:
        if not stopping and loop.is_running():
            stopping.append(reason)
            logger.info("Shutting down reason=%s", reason)
            loop.stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, request_stop, signal.Signals(signum).name)

    if args.parent_fd is not None:
        parent_fd = args.parent_fd

        def parent_readable() -> None:
            try:
                data = os.read(parent_fd, 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(parent_fd)
                request_stop("parent pipe closed")

        loop.add_reader(parent_fd, parent_readable)

    if args.parent_pid is not None:
        parent_pid = args.parent_pid

        def check_parent() -> None:
            if os.getppid() != parent_pid:
                request_stop("parent process exited")
            else:
                loop.call_later(1.0, check_parent)

        loop.call_later(1.0, check_parent)

    _report(
        args.ready_fd,
        {"ok": True, "host": args.host, "port": port, "pid": os.getpid(), "seed": engine.seed},
    )
    logger.info("API HTTP server listening url=http://%s:%d pid=%d", args.host, port, os.getpid())
    # Everything imported and built so far lives as long as the process: move it out of
    # the collector's way, so a full collection cannot stall a latency toxic's timer.
    gc.freeze()
    try:
        loop.run_forever()
    finally:
        stopping.append("stopped")
        if args.parent_fd is not None:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(args.parent_fd)
            with contextlib.suppress(OSError):
                os.close(args.parent_fd)
        close_loop(loop, engine)
        logger.info("Stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
