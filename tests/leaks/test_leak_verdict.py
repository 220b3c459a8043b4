"""The verdict as data: options validation, diff rules, the readable message."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from pytest_resilience.errors import ConfigError
from pytest_resilience.observe import resources as r
from pytest_resilience.verdicts import leaks as v


def test_options_defaults_and_validation() -> None:
    assert v.LeakOptions.build().kinds == frozenset(v.KINDS)
    assert v.LeakOptions.build("thread").kinds == frozenset({"thread"})
    with pytest.raises(ConfigError, match=r"unknown leak kind 'sockets' in kinds=; valid kinds: "
                                          r"session, db, pool-checkout, task, thread, "
                                          r"process, socket"):
        v.LeakOptions.build(["sockets"])
    with pytest.raises(ConfigError, match=r"allow= must be a mapping"):
        v.LeakOptions.build(allow=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"takes keyword arguments only"):
        v.LeakOptions.from_markers([(("file",), {})], where="no_leaks")


def test_markers_merge_closest_first() -> None:
    options = v.LeakOptions.from_markers(
        [((), {"kinds": ["file"]}), ((), {"kinds": ["thread"], "allow": {"file": 1}})],
        where="no_leaks",
    )
    assert options.kinds == frozenset({"file"})
    assert dict(options.allow) == {"file": 1}


@pytest.fixture
def parked_thread() -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="parked")
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(10)


def test_new_thread_is_a_leak_unless_it_is_a_service(parked_thread: threading.Thread) -> None:
    after = r.take_snapshot()
    before = r.take_snapshot()
    del before.threads[parked_thread.ident]  # type: ignore[arg-type]
    verdict = v.diff(before, after, v.LeakOptions.build(["thread"]))
    assert not verdict.passed
    assert verdict.leaks[0].what.startswith("thread 'parked' still running")
    assert verdict.by_kind() == {"thread": 1}
    parked_thread.name = "pytest-resilience-engine"
    assert v.diff(before, after, v.LeakOptions.build(["thread"])).passed


def test_sockets_of_registered_services_are_not_leaks() -> None:
    before = r.take_snapshot()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        after = r.take_snapshot()
        verdict = v.diff(before, after, v.LeakOptions.build(["socket"]))
        assert [leak.kind for leak in verdict.leaks] == ["socket"]
        assert "socket tcp 127.0.0.1:" in verdict.leaks[0].what
        port = sock.getsockname()[1]
        r.register_service(ports=[port])
        try:
            assert v.diff(before, after, v.LeakOptions.build(["socket"])).passed
        finally:
            r.service_registry.ports.discard(port)


def test_allow_and_ignore_move_leaks_to_tolerated(parked_thread: threading.Thread) -> None:
    after = r.take_snapshot()
    before = r.take_snapshot()
    del before.threads[parked_thread.ident]  # type: ignore[arg-type]
    allowed = v.diff(before, after, v.LeakOptions.build(["thread"], allow={"thread": 1}))
    assert allowed.passed
    assert allowed.tolerated[0].tolerated is not None
    assert "allowed by no_leaks(allow={'thread': 1})" in allowed.tolerated[0].tolerated
    ignored = v.diff(before, after, v.LeakOptions.build(["thread"], ignore=["*'parked'*"]))
    assert ignored.passed


def test_message_names_each_leak_and_how_to_opt_out() -> None:
    origin = r.Origin((("/somewhere/test_x.py", 12, "test_x"),
                       (r.__file__, 1, "inner")))
    verdict = v.LeakVerdict(
        (v.Leak("session", "aiohttp.ClientSession never closed", origin),),
        (),
        frozenset(v.KINDS),
    )
    text = verdict.message(title="test_x.py::test_x")
    lines = text.splitlines()
    assert lines[0] == "test_x.py::test_x: 1 leaked (1 session)"
    assert "  [session] aiohttp.ClientSession never closed" in lines
    assert any("created at /somewhere/test_x.py:12 in test_x  (via stack)" in x for x in lines)
    assert "opt out with @pytest.mark.no_leaks" in lines[-1]
    assert verdict.as_dict()["leaks"][0]["created_at"] == "/somewhere/test_x.py:12 in test_x"


def test_library_files_warm_up_once() -> None:
    # a file under the interpreter's directories: the first growth is a warm-up
    before = r.take_snapshot()
    with open(r.__file__, encoding="utf-8") as handle:
        after = r.take_snapshot()
        first = v.diff(before, after, v.LeakOptions.build(["file"]))
        assert first.passed
        assert "warm-up: the first growth of" in (first.tolerated[0].tolerated or "")
        v.commit_warmups(first)
        try:
            second = v.diff(before, after, v.LeakOptions.build(["file"]))
            assert not second.passed
        finally:
            v._warmed_up.difference_update(first.warmed)
        assert handle.readable()


def test_snapshot_counts_and_fd_description() -> None:
    snap = r.take_snapshot()
    counts = snap.counts()
    assert set(counts) == set(v.KINDS)
    a, b = socket.socketpair()
    try:
        info = r.describe_fd(a.fileno(), r.fd_targets()[a.fileno()])
        assert info.kind == "socket"
        assert info.detail.startswith("unix ")
    finally:
        a.close()
        b.close()
