"""Scenario targets that are server processes (``target.http.command``): started on a
free loopback port with the services' addresses filled in, waited for, requested, and
stopped with everything they started; clear errors when they cannot start."""

from __future__ import annotations

import os
import re
import select
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

SERVER = '''
import http.server
import json
import os
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/pid":
            body = json.dumps({"pid": os.getpid()}).encode()
        elif self.path == "/fail":
            self.send_response(503)
            self.end_headers()
            return
        else:
            body = json.dumps({"api": os.environ.get("API", ""), "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128


Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''


def _run(pytester: pytest.Pytester, yaml: str, *args: str) -> pytest.RunResult:
    pytester.makefile(".py", server=SERVER)
    scenarios = pytester.path / "scenarios"
    scenarios.mkdir(exist_ok=True)
    (scenarios / "cmd.yaml").write_text(textwrap.dedent(yaml))
    return pytester.runpytest_subprocess("-p", "pytest_resilience", "-p", "no:randomly",
                                         "-p", "no:cacheprovider", "scenarios", *args,
                                         timeout=120)


def test_a_command_gets_its_port_and_the_services_and_is_requested(
        pytester: pytest.Pytester) -> None:
    result = _run(pytester, """
        name: the server sees the API's address
        services:
          trends_api:
            routes:
              GET /trends: ['200 x* {"items": []}']
        target:
          http:
            command: [python, server.py, "{port}"]
            env: {API: "{trends_api_url}"}
            path: /hello
        drive: {calls: 2}
        expect:
          returns: {status: 200, body: {api: "URL", path: /hello}}
    """.replace('"URL"', '"{{trends_api_url}}"'))
    # the expected value cannot know the URL: the run fails on that value, naming it
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "'api': 'http://127.0.0.1:" in out
    assert "'path': '/hello'" in out


def test_a_load_run_against_a_command_and_no_process_is_left(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    pytester.makefile(".py", record_pid=f'''
        import json, sys, urllib.request
        def record(base):
            pid = json.load(urllib.request.urlopen(base + "/pid"))["pid"]
            open({str(pidfile)!r}, "w").write(str(pid))
    ''')
    result = _run(pytester, """
        name: a load run against the server
        target:
          http:
            command: "python server.py {port}"
            path: /x
        drive: {rate: 40, concurrency: 4, duration: 1500ms, sample_every: 250ms}
        expect:
          error_rate: 0
    """, "--resilience-leaks=fail")
    result.assert_outcomes(passed=1)
    assert "0 of 60 failed" in result.stdout.str() or "of 6" in result.stdout.str()


def test_the_server_process_is_stopped_after_the_test(pytester: pytest.Pytester) -> None:
    result = _run(pytester, """
        name: ask the server for its pid
        target:
          http:
            command: [python, server.py, "{port}"]
            path: /pid
        expect:
          returns: {status: 200, body: {pid: 0}}
    """)
    result.assert_outcomes(failed=1)  # the value names the pid
    text = result.stdout.str()
    pids = {int(m) for m in re.findall(r"'pid': (\d+)", text)} - {0}
    assert len(pids) == 1, text
    pid = pids.pop()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone (and reaped) already
    try:  # readable once the process has ended (a zombie waiting for init counts)
        assert select.select([fd], [], [], 5.0)[0], f"server process {pid} still runs"
    finally:
        os.close(fd)


def test_a_server_error_answer_fails_the_call(pytester: pytest.Pytester) -> None:
    result = _run(pytester, """
        name: the server answers 503
        target:
          http:
            command: [python, server.py, "{port}"]
            path: /fail
        expect:
          error_rate: 0
    """)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*at most 0% of calls fail -- 1 of 1 failed*"])


@pytest.mark.parametrize(("command", "words"), [
    ('"python server.py {prot}"', "unknown placeholder {prot}; known: {port}"),
    ('"python -c \'import sys; print(42); sys.exit(3)\'"', "exited before it answered"),
    ('"/nonexistent/server {port}"', "cannot start"),
])
def test_a_command_that_cannot_serve_is_one_clear_failure(
        pytester: pytest.Pytester, command: str, words: str) -> None:
    result = _run(pytester, f"""
        name: broken command
        target:
          http:
            command: {command}
        expect:
          error_rate: 0
    """)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert words in out
    assert "Traceback" not in out
    assert "pytest_resilience/" not in out


def test_app_and_command_are_exclusive(pytester: pytest.Pytester) -> None:
    result = _run(pytester, """
        name: both
        target:
          http:
            app: server:app
            command: python server.py
        expect:
          error_rate: 0
    """)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*give exactly one of 'app'*or 'command'*"])
