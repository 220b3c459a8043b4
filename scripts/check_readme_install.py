#!/usr/bin/env python3
"""Run the README's examples the way a reader would: in a fresh venv holding only what the
README's Quick start says to install, in an empty project directory.

1. a new venv in a temporary directory (nothing from this checkout's .venv);
2. ``pip install '<checkout>[all]'`` (the Quick start's line: a real, non-editable install);
3. every ``# file: test_*.py`` README block copied into an empty project directory with the
   Quick start's ``ini`` block as its ``pytest.ini``, then ``python -m pytest`` there: no test
   may fail or error, every example must pass, and no warning may be printed (pytest-asyncio's
   "asyncio_default_fixture_loop_scope is unset" among them);
4. every ``# script: name.py`` README block run with ``python -W error`` there: exit 0.

Prints a summary, exits 1 when anything failed. Bounded: the install by --install-timeout,
pytest by --pytest-timeout, each script by 120 s. Usage:
    python scripts/check_readme_install.py [--keep] [--extras all]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# as tests/test_readme.py
TESTS = re.compile(r"```python\n# file: (test_\w+\.py)\n(.*?)```", re.S)
SCRIPTS = re.compile(r"```python\n# script: (\w+\.py)\n(.*?)```", re.S)
INI = re.compile(r"```ini\n(.*?)```", re.S)
OUTCOME = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|warnings?)")


def quick_start() -> str:
    text = README.read_text()
    return text.split("## Quick start", 1)[1].split("\n## ", 1)[0]


def run(cmd: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return subprocess.CompletedProcess(cmd, 124, out, err + f"\ntimed out after {timeout} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extras", default="all", help="the extras to install (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--install-timeout", type=float, default=600)
    ap.add_argument("--pytest-timeout", type=float, default=400)
    args = ap.parse_args()

    quick = quick_start()
    spec = f"pytest-resilience[{args.extras}]" if args.extras else "pytest-resilience"
    if spec not in quick:
        print(f"check_readme_install: the README's Quick start does not mention {spec!r}")
        return 1
    ini = INI.search(quick)
    if not ini:
        print("check_readme_install: no ```ini block in the README's Quick start")
        return 1
    tests = dict(TESTS.findall(README.read_text()))
    scripts = dict(SCRIPTS.findall(README.read_text()))

    start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="readme-install-"))
    failures: list[str] = []
    try:
        venv, project = tmp / "venv", tmp / "project"
        project.mkdir()
        # The base interpreter, not this venv's: nothing installed here leaks into the new one.
        base = getattr(sys, "_base_executable", sys.executable)
        env = {k: v for k, v in os.environ.items()
               if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        print(f"check_readme_install: new venv in {venv} ({base})", flush=True)
        r = run([base, "-m", "venv", str(venv)], cwd=tmp, timeout=120, env=env)
        if r.returncode:
            print(r.stdout + r.stderr)
            return 1
        py = str(venv / "bin" / "python")
        target = f"{ROOT}[{args.extras}]" if args.extras else str(ROOT)
        print(f"check_readme_install: pip install '{target}' (the Quick start's "
              f"`pip install './{spec}'`)", flush=True)
        t0 = time.monotonic()
        r = run([py, "-m", "pip", "install", "-q", target], cwd=tmp,
                timeout=args.install_timeout, env=env)
        install_s = time.monotonic() - t0
        if r.returncode:
            print(r.stdout[-4000:] + r.stderr[-4000:])
            print(f"check_readme_install: FAILED: pip install exited {r.returncode}")
            return 1
        print(f"check_readme_install: installed in {install_s:.0f} s", flush=True)

        (project / "pytest.ini").write_text(ini.group(1))
        for name, body in tests.items():
            (project / name).write_text(body)
        print(f"check_readme_install: pytest on {len(tests)} README example files in "
              f"{project}", flush=True)
        t0 = time.monotonic()
        r = run([py, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEw"], cwd=project,
                timeout=args.pytest_timeout, env=env)
        pytest_s = time.monotonic() - t0
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        summary = lines[-1] if lines else "(no output)"
        counts = {k.rstrip("s") if k != "passed" else k: int(n)
                  for n, k in OUTCOME.findall(summary)}
        problems = []
        if r.returncode:
            problems.append(f"pytest exited {r.returncode}")
        if counts.get("passed", 0) < len(tests):
            problems.append(f"{counts.get('passed', 0)} passed, fewer than the "
                            f"{len(tests)} example files")
        if counts.get("warning"):
            problems.append(f"{counts['warning']} warning(s)")
        # start-up warnings (pytest-asyncio's unset loop scope) are not in the count
        early = re.findall(r"\w*Warning: [^\n]*", r.stdout + r.stderr)
        if early:
            problems.append("warned: " + "; ".join(sorted(set(early))[:3]))
        if problems:
            print(r.stdout[-12000:] + r.stderr[-4000:])
            failures.append("pytest: " + "; ".join(problems))
        print(f"check_readme_install: pytest: {summary.strip('= ')} ({pytest_s:.0f} s)",
              flush=True)

        for name, body in scripts.items():
            (project / name).write_text(body)
            r = run([py, "-W", "error", name], cwd=project, timeout=120, env=env)
            ok = r.returncode == 0
            print(f"check_readme_install: script {name}: "
                  f"{'ok' if ok else f'FAILED (exit {r.returncode})'}", flush=True)
            if not ok:
                print(r.stdout[-4000:] + r.stderr[-4000:])
                failures.append(f"script {name}")
    finally:
        if args.keep:
            print(f"check_readme_install: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    took = time.monotonic() - start
    if failures:
        print(f"check_readme_install: FAILED after {took:.0f} s: " + ", ".join(failures))
        return 1
    print(f"check_readme_install: every README example ran in a fresh venv holding only "
          f"{spec}: {len(tests)} test files, {len(scripts)} scripts, in {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
