"""Plugin behaviour of the virtual clock: marker, fixture, asyncio modes and loop scopes,
and that nothing stays patched after a test, even a failing one."""

from __future__ import annotations

import pytest

INI = """
[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

RESTORED = """
def assert_real_clocks():
    import asyncio, datetime, selectors, time
    import circuitbreaker
    from pytest_resilience.clock import active_clock, current_clock_kind
    assert active_clock() is None
    assert current_clock_kind() == "real"
    assert type(time.monotonic).__name__ == "builtin_function_or_method"
    assert type(time.sleep).__name__ == "builtin_function_or_method"
    assert circuitbreaker.monotonic is time.monotonic
    assert not hasattr(selectors.EpollSelector.select, "__wrapped__")
    assert not hasattr(asyncio.base_events.BaseEventLoop.run_in_executor, "__wrapped__")
    assert abs(datetime.datetime.now().timestamp() - time.time()) < 5
    assert datetime.datetime.now().year < 2100
"""


def _run(pytester: pytest.Pytester, mode: str, *args: str) -> pytest.RunResult:
    pytester.makeini(INI.format(mode=mode))
    pytester.makepyfile(helpers=RESTORED)
    return pytester.runpytest_subprocess("-p", "no:postgresql", "-p", "no:cacheprovider",
                                         "-rA", *args, timeout=120)


def test_marker_and_fixture_in_strict_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_strict="""
        import asyncio, time, datetime
        import pytest
        from helpers import assert_real_clocks
        from pytest_resilience.clock import current_clock_kind

        @pytest.mark.virtual_time(start="2030-01-01T00:00:00+00:00")
        def test_sync_marker_switches_the_clock_on():
            assert current_clock_kind() == "virtual"
            assert datetime.datetime.now(datetime.UTC).year == 2030
            begin = time.monotonic()
            time.sleep(3600)
            assert time.monotonic() - begin == 3600

        @pytest.mark.asyncio
        @pytest.mark.virtual_time
        async def test_async_marker(virtual_clock):
            loop = asyncio.get_running_loop()
            begin = loop.time()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.Event().wait(), 900)
            assert loop.time() - begin == 900 == virtual_clock.elapsed

        @pytest.mark.asyncio
        @pytest.mark.virtual_time
        async def test_fails_on_virtual_time():
            await asyncio.sleep(60)
            time.sleep(60)
            assert False, "boom"

        def test_next_test_sees_real_clocks():
            assert_real_clocks()

        def test_fixture_without_marker(virtual_clock):
            virtual_clock.advance(5)
            assert virtual_clock.elapsed == 5
            assert current_clock_kind() == "virtual"

        @pytest.mark.virtual_time(bogus=1)
        def test_bad_marker_argument():
            pass

        @pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")
        @pytest.mark.asyncio
        @pytest.mark.virtual_time
        async def test_aiobreaker_report():
            import aiobreaker
            async def fail():
                raise ConnectionError
            breaker = aiobreaker.CircuitBreaker(fail_max=1)
            with pytest.raises(aiobreaker.CircuitBreakerError):
                await breaker.call_async(fail)
            breaker.time_until_open

        def test_last_sees_real_clocks():
            assert_real_clocks()
        """
    )
    result = _run(pytester, "strict")
    result.assert_outcomes(passed=6, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "test_strict.py::test_bad_marker_argument: @pytest.mark.virtual_time "
            "got an unknown argument 'bogus'; valid: start, auto_advance*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*= resilience =*",
            "test_strict.py::test_aiobreaker_report WARNING clock-sources: * [[]mixed[]] "
            "aiobreaker: mixes datetime.utcnow() (naive UTC) with datetime.now() (naive "
            "local time)*",
        ]
    )
    result.stdout.fnmatch_lines(["FAILED test_strict.py::test_fails_on_virtual_time - *boom*"])
    assert "INTERNALERROR" not in result.stdout.str()


def test_auto_mode_and_a_session_scoped_loop(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_auto="""
        import asyncio, time
        import pytest
        from helpers import assert_real_clocks

        pytestmark = pytest.mark.asyncio(loop_scope="session")

        async def test_real_first():
            pytest.real_loop = asyncio.get_running_loop()

        @pytest.mark.virtual_time
        async def test_virtual_on_the_session_loop(virtual_clock):
            loop = asyncio.get_running_loop()
            assert loop is pytest.real_loop
            begin = time.monotonic()
            await asyncio.sleep(3600)
            assert time.monotonic() - begin == 3600

        @pytest.mark.virtual_time
        async def test_virtual_again():
            loop = asyncio.get_running_loop()
            begin = loop.time()
            await asyncio.sleep(86400)
            assert loop.time() - begin == 86400
            # a timer still pending when the clock stops
            pytest.shared = loop.create_future()
            loop.call_later(0.2, pytest.shared.set_result, "timer")

        async def test_real_after_keeps_its_remaining_delay():
            assert_real_clocks()
            # the pending timer was rebased when the clock stopped: it fires after
            # its remaining 0.2 s of real time, not 3600 virtual seconds from now
            assert await asyncio.wait_for(pytest.shared, timeout=5) == "timer"
        """
    )
    # The inner tests are one story told in order (a timer set in one is awaited in the
    # next): keep pytest-randomly from shuffling them.
    result = _run(pytester, "auto", "-p", "no:randomly")
    result.assert_outcomes(passed=4)


def test_module_scoped_loop_in_strict_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_module_loop="""
        import asyncio
        import pytest
        import pytest_asyncio
        from helpers import assert_real_clocks

        @pytest_asyncio.fixture(loop_scope="module", scope="module")
        async def server():
            from pytest_resilience.clock import current_clock_kind
            # wider-scoped fixtures are set up before the clock starts
            assert current_clock_kind() == "real"
            async def handle(reader, writer):
                writer.write(await reader.readline())
                await writer.drain()
                writer.close()
            srv = await asyncio.start_server(handle, "127.0.0.1", 0)
            yield srv.sockets[0].getsockname()[:2]
            srv.close()
            await srv.wait_closed()

        @pytest.fixture
        def function_scoped():
            from pytest_resilience.clock import current_clock_kind
            return current_clock_kind()

        @pytest.mark.asyncio(loop_scope="module")
        @pytest.mark.virtual_time
        async def test_virtual_with_a_module_scoped_server(function_scoped, server):
            from pytest_resilience.clock import active_clock
            virtual_clock = active_clock()
            assert function_scoped == "virtual"  # function-scoped fixtures: after the clock
            # the listening socket is real I/O: the loop waits in real time
            reader, writer = await asyncio.open_connection(*server)
            writer.write(b"hi\\n")
            assert await asyncio.wait_for(reader.readline(), 1) == b"hi\\n"
            writer.close()
            await writer.wait_closed()
            assert virtual_clock.real_io_wait >= 0

        @pytest.mark.asyncio(loop_scope="module")
        async def test_real_afterwards(server):
            assert_real_clocks()
            await asyncio.sleep(0.01)
        """
    )
    result = _run(pytester, "strict")
    result.assert_outcomes(passed=2)


def test_a_clock_left_running_is_stopped_and_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_leak="""
        from helpers import assert_real_clocks
        from pytest_resilience.clock import VirtualClock

        def test_starts_by_hand():
            VirtualClock().start()

        def test_after():
            assert_real_clocks()
        """
    )
    result = _run(pytester, "strict")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["*VirtualClockError: test_leak.py::test_starts_by_hand left a VirtualClock running*"]
    )
