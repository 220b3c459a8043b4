"""The marker, the option, the leak_check fixture and how verdicts reach the report."""

from __future__ import annotations

from pathlib import Path

import pytest
from leak_helpers import run_inner

LEAKY_FILE = '''
import pytest

KEEP = []

def test_leaks_a_file(tmp_path):
    KEEP.append(open(tmp_path / "f.txt", "w"))

def test_clean(tmp_path):
    with open(tmp_path / "g.txt", "w"):
        pass
'''


def test_unknown_kind_is_a_config_error_naming_it(tmp_path: Path) -> None:
    result = run_inner(tmp_path, {"test_bad.py": '''
import pytest

@pytest.mark.no_leaks(kinds=["sockets"])
def test_bad():
    pass
'''})
    assert result.ret == 1
    result.fnmatch_lines([
        "*ERROR at setup of test_bad*",
        "E*pytest_resilience.errors.ConfigError: test_bad.py::test_bad: no_leaks: unknown "
        "leak kind 'sockets' in kinds=; valid kinds: session, db, pool-checkout, task, thread, "
        "process, socket, file, pipe, fd (see the 'Leak checks' section of the "
        "pytest-resilience README)",
    ])
    assert "INTERNALERROR" not in result.text


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('allow={"threads": 1}', "unknown leak kind 'threads' in allow=*"),
        ('allow={"thread": -1}', "allow[[]'thread'] must be a non-negative integer, got -1"),
        ("kind=['file']", "no_leaks got an unknown argument 'kind'*"),
        ("ignore=[3]", "ignore= takes glob patterns*got 3"),
    ],
)
def test_bad_marker_arguments(tmp_path: Path, marker: str, message: str) -> None:
    result = run_inner(tmp_path, {"test_bad.py": f'''
import pytest

@pytest.mark.no_leaks({marker})
def test_bad():
    pass
'''})
    assert result.ret == 1
    result.fnmatch_lines([f"E*pytest_resilience.errors.ConfigError: *{message}"])


def test_option_fail_checks_every_test(tmp_path: Path) -> None:
    result = run_inner(tmp_path, {"test_leaky.py": LEAKY_FILE}, "--resilience-leaks=fail")
    assert result.ret == 1
    result.fnmatch_lines([
        "*ERROR at teardown of test_leaks_a_file*",
        "*[[]file] file left open: fd *: file */f.txt",
        "*created at test_leaky.py:7 in test_leaks_a_file*",
        "*= resilience =*",
        "test_leaky.py::test_leaks_a_file FAILED leaks: no leaked resources -- "
        "1 leaked (1 file)",
        "*2 passed, 1 error*",
    ])


def test_option_off_checks_nothing(tmp_path: Path) -> None:
    result = run_inner(tmp_path, {"test_leaky.py": LEAKY_FILE}, "--resilience-leaks=off")
    assert result.ret == 0, result.text
    assert "resilience: leaks" not in result.text


def test_ini_twin_and_warn_mode(tmp_path: Path) -> None:
    result = run_inner(
        tmp_path, {"test_leaky.py": LEAKY_FILE}, ini_extra="resilience_leaks = warn\n"
    )
    assert result.ret == 0, result.text
    result.fnmatch_lines([
        "*ResourceLeakWarning: test_leaky.py::test_leaks_a_file: 1 leaked (1 file)*",
        "*= resilience =*",
        "test_leaky.py::test_leaks_a_file WARNING leaks: no leaked resources -- "
        "1 leaked (1 file)",
        "*2 passed, 1 warning*",
    ])


def test_allow_and_ignore(tmp_path: Path) -> None:
    result = run_inner(tmp_path, {"test_opts.py": '''
import threading
import pytest

KEEP = []
STOP = threading.Event()

def start(name):
    thread = threading.Thread(target=STOP.wait, name=name, daemon=True)
    thread.start()

@pytest.mark.no_leaks(allow={"thread": 1})
def test_one_thread_allowed():
    start("allowed-1")

@pytest.mark.no_leaks(allow={"thread": 1})
def test_two_threads_one_allowed():
    start("allowed-2")
    start("allowed-3")

@pytest.mark.no_leaks(ignore=["*'cache-*"])
def test_ignored_by_glob():
    start("cache-warmer")

@pytest.mark.no_leaks(ignore=[lambda leak: leak.kind == "thread"])
def test_ignored_by_callable():
    start("whatever")
'''}, "-rA")
    assert result.ret == 1
    result.fnmatch_lines(["*4 passed, 1 error*"])
    result.fnmatch_lines(["*ERROR at teardown of test_two_threads_one_allowed*"])
    assert "ERROR at teardown of test_one_thread_allowed" not in result.text


def test_markers_merge_closest_first(tmp_path: Path) -> None:
    result = run_inner(tmp_path, {"test_merge.py": '''
import pytest

pytestmark = pytest.mark.no_leaks(kinds=["thread"])
KEEP = []

@pytest.mark.no_leaks(kinds=["file"])
def test_file_checked_here(tmp_path):
    KEEP.append(open(tmp_path / "x", "w"))

def test_module_marker_only_threads(tmp_path):
    KEEP.append(open(tmp_path / "y", "w"))
'''})
    assert result.ret == 1
    result.fnmatch_lines(["*ERROR at teardown of test_file_checked_here*", "*2 passed, 1 error*"])


def test_failed_test_is_not_blamed_twice(tmp_path: Path) -> None:
    result = run_inner(tmp_path, {"test_fail.py": '''
import pytest

KEEP = []

@pytest.mark.no_leaks
def test_fails(tmp_path):
    KEEP.append(open(tmp_path / "x", "w"))
    assert False
'''})
    assert result.ret == 1
    result.fnmatch_lines(["*1 failed in*"])
    assert "ERROR at teardown" not in result.text


def test_leak_check_fixture(tmp_path: Path) -> None:
    result = run_inner(tmp_path, {"test_fixture.py": '''
import asyncio
import pytest

KEEP = []

def test_region_clean(leak_check, tmp_path):
    with leak_check.region():
        with open(tmp_path / "a", "w"):
            pass

def test_region_leaks(leak_check, tmp_path):
    with leak_check.region(label="opening files"):
        KEEP.append(open(tmp_path / "b", "w"))

@pytest.mark.asyncio
async def test_aregion_task(leak_check):
    async with leak_check.aregion(kinds=["task"]):
        KEEP.append(asyncio.create_task(asyncio.Event().wait(), name="bg"))
    KEEP[-1].cancel()

def test_repeat_tolerates_a_cache(leak_check, tmp_path):
    cache = []
    def call():
        if not cache:
            cache.append(open(tmp_path / "cache", "w"))
    leak_check.repeat(call, runs=3, warmup=0)
    cache[0].close()

def test_repeat_catches_growth(leak_check, tmp_path):
    opened = []
    def call():
        opened.append(open(tmp_path / f"f{len(opened)}", "w"))
    try:
        leak_check.repeat(call, runs=3)
    finally:
        for handle in opened:
            handle.close()
'''}, "-W", "error")
    assert result.ret == 1
    result.fnmatch_lines(["*3 failed, 2 passed*"])
    result.fnmatch_lines([
        "*leak_check opening files: 1 leaked (1 file)*",
        "*created at test_fixture.py:14 in test_region_leaks*",
    ])
    result.fnmatch_lines([
        "*leak_check region: 1 leaked (1 task)*",
        "*task 'bg' (Event.wait) still pending*",
        "*created at test_fixture.py:19 in test_aregion_task*",
    ])
    result.fnmatch_lines([
        "*leak_check.repeat: growth in every one of 3 runs after warm-up:*",
        "*file: [[]1, 1, 1] (per run)*",
    ])


def test_repeat_counts_sessions(tmp_path: Path) -> None:
    result = run_inner(tmp_path, {"test_repeat.py": '''
import httpx

KEEP = []

def test_client_per_call_grows(leak_check):
    try:
        leak_check.repeat(lambda: KEEP.append(httpx.Client()), runs=3, kinds=["session"])
    finally:
        for client in KEEP:
            client.close()

def test_one_cached_client_does_not(leak_check):
    cache = []
    def call():
        if not cache:
            cache.append(httpx.Client())
    leak_check.repeat(call, runs=3, warmup=0, kinds=["session"])
    cache[0].close()
'''}, "-W", "error")
    assert result.ret == 1
    result.fnmatch_lines(["*session: [[]1, 1, 1] (per run)*", "*1 failed, 1 passed*"])
