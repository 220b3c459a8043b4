"""Every child process the plugin starts: out of the terminal's reach, reaped however pytest ends.

One module owns the rules, so every service gets them the same way:

* A child runs in **its own session** (``start_new_session``): the terminal's Ctrl-C
  (SIGINT to the foreground process group) and a CI runner's kill of pytest's group
  reach pytest only, so pytest's teardown can still stop what its tests used.
* A small **reaper** process per pytest process (started with the first child, stdlib
  only, in its own session, SIGINT ignored) holds the list of live children. It watches
  the pytest process with a ``pidfd`` (Linux; elsewhere it polls every 50 ms) - not only
  a pipe, which a test that forks would keep open - and under pytest-xdist it also
  watches the controller. When an owner dies (SIGKILL, SIGTERM, a crash) it sends each
  child its stop signal, SIGKILLs what is left after the grace period, and removes the
  child's directory. A normal :meth:`Child.stop` takes the child off its list.
* A child is stopped only by the process that started it: in a forked copy of pytest
  :meth:`Child.stop` does nothing, so a test that forks cannot stop the session's server.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from pytest_resilience.services import registry

__all__ = ["Child", "PathGuard", "log_tail", "propose_port", "reaper_pid", "spawn"]

# The reaper: stdlib only, started with ``python -I -S`` so it is up in milliseconds.
# argv: worker flag ("1" under xdist), then the owner pids (first: the pytest process).
_REAPER = r"""
import json, os, select, shutil, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
worker = sys.argv[1] == "1"
owners = [int(p) for p in sys.argv[2:]]
entries = {}

def alive(pid):
    if pid is None:
        return False
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

def signal_all(entries, sig_of):
    for e in entries:
        if e["pid"] is None:
            continue
        for kill, target in ((os.kill, e["pid"]), (os.killpg, e["pid"])):
            try:
                kill(target, sig_of(e))
            except OSError:
                pass
            if not e.get("group"):
                break

def reap():
    live = list(entries.values())
    signal_all(live, lambda e: e["signal"])
    deadline = time.monotonic() + max([e["grace"] for e in live] + [0])
    while time.monotonic() < deadline and any(alive(e["pid"]) for e in live):
        time.sleep(0.005)
    signal_all([e for e in live if alive(e["pid"])], lambda e: signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(e["pid"]) for e in live):
        time.sleep(0.005)
    for e in live:
        if e.get("path"):
            shutil.rmtree(e["path"], ignore_errors=True)
    entries.clear()

pidfds = []
try:
    for pid in owners:
        pidfds.append(os.pidfd_open(pid))
except ProcessLookupError:
    owners_gone = True
except (AttributeError, OSError):
    pidfds = None
    owners_gone = False
else:
    owners_gone = False
buf = b""
while not owners_gone:
    watch = [0] + (pidfds or [])
    ready = select.select(watch, [], [], None if pidfds is not None else 0.05)[0]
    if 0 in ready:
        data = os.read(0, 65536)
        if not data:
            break
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            msg = json.loads(line)
            if msg["op"] == "+":
                entries[msg["id"]] = msg
            else:
                entries.pop(msg["id"], None)
    if any(fd in ready for fd in (pidfds or [])) or (
        pidfds is None and not all(alive(p) for p in owners)
    ):
        owners_gone = True
reap()
if worker and owners_gone and alive(owners[0]) and not all(alive(p) for p in owners[1:]):
    # The xdist controller is gone: its worker has nobody left to report to.
    try:
        os.kill(owners[0], signal.SIGTERM)
    except OSError:
        pass
"""


class _Reaper:
    """The reaper of one pytest process (a forked copy gets its own)."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.lock = threading.Lock()
        self.entries: dict[int, dict[str, Any]] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.next_id = 0

    def _start(self) -> subprocess.Popen[bytes]:
        worker = bool(os.environ.get("PYTEST_XDIST_WORKER"))
        owners = [os.getpid()]
        if worker and os.getppid() > 1:
            owners.append(os.getppid())  # the xdist controller
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _REAPER, "1" if worker else "0",
             *map(str, owners)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True, cwd="/",
        )
        assert proc.stdin is not None
        registry.declare(pids=[proc.pid], fds=[proc.stdin.fileno()])
        for entry in self.entries.values():  # a restarted reaper takes over the list
            self._send(proc, entry)
        return proc

    @staticmethod
    def _send(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
        stdin: IO[bytes] | None = proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(message).encode() + b"\n")
        stdin.flush()

    def _post(self, message: dict[str, Any]) -> None:
        for _ in range(2):
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self._start()
                if message["op"] == "+":
                    return  # _start sent the whole list, this entry included
            try:
                self._send(self.proc, message)
                return
            except (BrokenPipeError, ValueError):
                self.proc = None

    def watch(self, pid: int | None, stop_signal: int, grace: float, path: Path | None,
              group: bool) -> int:
        with self.lock:
            self.next_id += 1
            entry = {"op": "+", "id": self.next_id, "pid": pid, "signal": int(stop_signal),
                     "grace": grace, "path": str(path) if path else None, "group": group}
            self.entries[self.next_id] = entry
            self._post(entry)
            return self.next_id

    def forget(self, token: int) -> None:
        with self.lock:
            if self.entries.pop(token, None) is not None and self.proc is not None:
                with contextlib.suppress(BrokenPipeError, ValueError):
                    self._send(self.proc, {"op": "-", "id": token})


    def close(self) -> None:
        """At interpreter exit: end the reaper (it stops whatever is still on its list,
        normally nothing) and wait for it, so it does not outlive the run."""
        if self.owner != os.getpid() or self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(max([e["grace"] for e in self.entries.values()] + [0]) + 6)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_reaper: _Reaper | None = None
_reaper_lock = threading.Lock()


@atexit.register
def _close_reaper() -> None:
    if _reaper is not None:
        _reaper.close()


def _the_reaper() -> _Reaper:
    global _reaper
    with _reaper_lock:
        if _reaper is None or _reaper.owner != os.getpid():
            _reaper = _Reaper()
        return _reaper


class PathGuard:
    """A directory the reaper removes if pytest dies before :meth:`release` (for the
    time between creating a service's directory and starting its process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._token: int | None = _the_reaper().watch(None, 0, 0.0, path, group=False)

    def release(self) -> None:
        """Take the directory off the reaper's list (it is not removed)."""
        token, self._token = self._token, None
        if token is not None:
            _the_reaper().forget(token)


def reaper_pid() -> int | None:
    """The pid of this process's reaper (None before the first child)."""
    reaper = _reaper
    if reaper is None or reaper.owner != os.getpid() or reaper.proc is None:
        return None
    return reaper.proc.pid


def _alive(pid: int) -> bool:
    # The reaper's ``alive`` (in _REAPER) is the same rule: it runs with ``python -I -S``
    # and cannot import this package.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class Child:
    """A supervised child process (see the module docstring)."""

    def __init__(
        self, proc: subprocess.Popen[Any], name: str, stop_signal: int, grace: float,
        path: Path | None, token: int,
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.name = name
        self.stop_signal = stop_signal
        self.grace = grace
        self.path = path
        self.owner = os.getpid()
        self._token: int | None = token
        self._lock = threading.Lock()

    def alive(self) -> bool:
        """Running (not exited, not a zombie)."""
        return self.proc.poll() is None and _alive(self.pid)

    def stop(self) -> int | None:
        """Send the stop signal, wait up to the grace period, then SIGKILL; remove the
        child's directory. Idempotent; does nothing in a forked copy of the owner.
        Returns the exit code (None when not stopped here)."""
        if os.getpid() != self.owner:
            return None
        with self._lock:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(self.stop_signal)
                try:
                    self.proc.wait(self.grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(OSError):
                        os.killpg(self.pid, signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError):
                        self.proc.kill()
                    self.proc.wait()
            if self.path is not None:
                shutil.rmtree(self.path, ignore_errors=True)
            token, self._token = self._token, None
            registry.release(pids=[self.pid])
        if token is not None:
            _the_reaper().forget(token)
        return self.proc.returncode

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Child {self.name} pid={self.pid} {'running' if self.alive() else 'exited'}>"


def spawn(
    cmd: list[str], *, name: str, stop_signal: int = signal.SIGTERM, grace: float = 5.0,
    remove: Path | None = None, **popen: Any,
) -> Child:
    """Start ``cmd`` as a supervised child in its own session.

    ``stop_signal`` and ``grace``: how :meth:`Child.stop` and the reaper ask it to end
    before SIGKILL. ``remove``: a directory deleted once it has ended. Other keyword
    arguments go to :class:`subprocess.Popen` (``stdin`` defaults to ``/dev/null``)."""
    popen.setdefault("stdin", subprocess.DEVNULL)
    popen["start_new_session"] = True
    proc = subprocess.Popen(cmd, **popen)
    registry.declare(pids=[proc.pid])
    try:
        token = _the_reaper().watch(proc.pid, stop_signal, grace, remove, group=True)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Child(proc, name, stop_signal, grace, remove, token)


def propose_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for a child that binds it itself (Postgres,
    toxiproxy-server without /proc). Not a reservation: callers detect a clash from the
    child's failure and retry with another port."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def log_tail(log: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a child's output, for an error message."""
    try:
        text = log.read_text(errors="replace").strip()
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
