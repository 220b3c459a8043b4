"""Cost of just having the plugin installed (issue 15).

``pytest --co -q -p no:randomly`` in a temporary empty directory, with the plugin
(auto-loaded through its ``pytest11`` entry point) and with ``-p no:pytest_resilience``
(the baseline, measured in the same run), each with and without
``PYTHONDONTWRITEBYTECODE=1`` (pytest then re-rewrites the asserts of every plugin
module at every start, as in most containers). Runs alternate between the two arms;
the figures are medians over rounds: the absolute delta in ms and the ratio
plugin/baseline. Goal: delta <= 30 ms in both settings.

Bytecode lives in a private ``PYTHONPYCACHEPREFIX`` (so runs of other people in the
same checkout do not interfere): it is filled once (ordinary ``.pyc`` files of every
module, as ``pip install`` leaves them), and the ``PYTHONDONTWRITEBYTECODE=1`` setting
starts with pytest's rewritten ``*-pytest-*.pyc`` files removed, as in a container
where they were never written.

It also lists the ``pytest_resilience`` modules imported at start (pytest run
in-process in the empty directory) and checks that the empty-directory run wrote no
``.pytest_cache/v/resilience`` entry.

Run: ``.venv/bin/python benchmarks/bench_import.py [--rounds N]``
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_MS = 30.0
BASE_CMD = [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:randomly"]
OFF = ["-p", "no:pytest_resilience"]

PROBE = """
import sys, pytest
pytest.main(["--co", "-q", "-p", "no:randomly"])
print("MODULES", " ".join(sorted(m for m in sys.modules if m.startswith("pytest_resilience"))))
"""


def _env(dont_write: bool, prefix: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "RESILIENCE_")) and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(prefix)
    if dont_write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          check=False, timeout=120)
    elapsed = (time.perf_counter() - t0) * 1e3
    if proc.returncode not in (0, 5):  # 5: no tests collected
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return elapsed


def fill_pycache(root: Path, prefix: Path) -> None:
    """Ordinary .pyc files for everything the runs import (rewritten ones too)."""
    env = _env(False, prefix)
    import pytest_resilience

    package = Path(pytest_resilience.__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], env=env,
                   capture_output=True, check=False, timeout=300)
    _run(BASE_CMD, root, env)
    _run(BASE_CMD + OFF, root, env)


def drop_rewritten(prefix: Path) -> int:
    found = list(prefix.rglob("*-pytest-*.pyc"))
    for pyc in found:
        pyc.unlink()
    return len(found)


def measure(
    root: Path, prefix: Path, rounds: int, dont_write: bool
) -> tuple[list[float], list[float]]:
    env = _env(dont_write, prefix)
    plugin: list[float] = []
    base: list[float] = []
    if dont_write:
        drop_rewritten(prefix)
    # warm-up (page cache); writes nothing under PYTHONDONTWRITEBYTECODE=1
    _run(BASE_CMD, root, env)
    _run(BASE_CMD + OFF, root, env)
    for i in range(rounds):
        arms = [(BASE_CMD, plugin), (BASE_CMD + OFF, base)]
        if i % 2:
            arms.reverse()
        for cmd, bucket in arms:
            bucket.append(_run(cmd, root, env))
    return plugin, base


def imported_modules(root: Path, prefix: Path) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=root, env=_env(False, prefix),
                          capture_output=True, text=True, check=False, timeout=120)
    for line in proc.stdout.splitlines():
        if line.startswith("MODULES"):
            return line.split()[1:]
    raise SystemExit(f"probe failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    ns = parser.parse_args()

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {ns.rounds} rounds, "
          "median of rounds, arms alternate")
    print(f"command (in an empty temporary directory): {shlex.join(BASE_CMD)}")
    print(f"baseline: the same with {shlex.join(OFF)}\n")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "empty"
        prefix = Path(tmp) / "pycache"
        root.mkdir()
        fill_pycache(root, prefix)
        shutil.rmtree(root / ".pytest_cache", ignore_errors=True)
        print(f"{'setting':34} {'plugin':>9} {'baseline':>9} {'delta':>9} {'ratio':>6}")
        for dont_write in (False, True):
            label = "PYTHONDONTWRITEBYTECODE=1" if dont_write else "bytecode written"
            plugin, base = measure(root, prefix, ns.rounds, dont_write)
            p, b = statistics.median(plugin), statistics.median(base)
            worst = max(worst, p - b)
            print(f"{label:34} {p:6.0f} ms {b:6.0f} ms {p - b:+6.0f} ms {p / b:6.2f}")
        cache_entry = root / ".pytest_cache" / "v" / "resilience"
        wrote = cache_entry.exists()
        shutil.rmtree(root / ".pytest_cache", ignore_errors=True)
        modules = imported_modules(root, prefix)
    print(f"\ngoal: delta <= {GOAL_MS:.0f} ms in both settings: "
          f"{'met' if worst <= GOAL_MS else 'NOT met'} (worst {worst:+.0f} ms)")
    print(f".pytest_cache/v/resilience written by the empty-directory runs: "
          f"{'YES' if wrote else 'no'}")
    print(f"pytest_resilience modules imported at start ({len(modules)}):")
    for name in modules:
        print(f"  {name}")


if __name__ == "__main__":
    main()
