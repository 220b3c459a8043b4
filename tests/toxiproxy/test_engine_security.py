"""The engine on a shared machine: loopback listeners only, other accounts refused.

Threat: any local account can reach 127.0.0.1. Without these checks it could open a
listener on every interface in front of the test Postgres through the engine's API.
"""

from __future__ import annotations

import json
import os
import socket
import textwrap
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pytest_resilience.services.peers import NOT_LOCAL, PeerPolicy, _proc_uid, peer_uid
from pytest_resilience.toxiproxy import EngineHandle, start_process, start_thread

REMOTE = ["0.0.0.0:0", ":0", "[::]:0"]
LOOPBACK = ["127.0.0.1:0", "localhost:0", "127.0.0.2:0"]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


if _has_ipv6_loopback():
    LOOPBACK.append("[::1]:0")


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineHandle]:
    with start_thread() as handle:
        yield handle


@pytest.fixture
def client(engine: EngineHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=engine.url, timeout=15) as c:
        yield c
        for name in c.get("/proxies").json():
            c.delete(f"/proxies/{name}")


def _name(request: pytest.FixtureRequest) -> str:
    return "sec-" + str(abs(hash(request.node.nodeid)) % 10**8)


def _assert_refused_listen(response: httpx.Response, listen: str) -> None:
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert f"listen address {listen}" in message
    assert "is not a loopback address" in message
    assert "--allow-remote-listen" in message


@pytest.mark.parametrize("listen", REMOTE)
def test_create_refuses_non_loopback_listen(
    client: httpx.Client, listen: str, request: pytest.FixtureRequest
) -> None:
    response = client.post(
        "/proxies", json={"name": _name(request), "upstream": "127.0.0.1:1", "listen": listen}
    )
    _assert_refused_listen(response, listen)
    assert client.get("/proxies").json() == {}


def test_create_without_listen_is_refused(
    client: httpx.Client, request: pytest.FixtureRequest
) -> None:
    """No ``listen`` means all interfaces for Toxiproxy."""
    response = client.post("/proxies", json={"name": _name(request), "upstream": "127.0.0.1:1"})
    _assert_refused_listen(response, ":0")


@pytest.mark.parametrize("listen", LOOPBACK)
def test_loopback_listen_is_accepted(
    client: httpx.Client, listen: str, request: pytest.FixtureRequest
) -> None:
    response = client.post(
        "/proxies", json={"name": _name(request), "upstream": "127.0.0.1:1", "listen": listen}
    )
    assert response.status_code == 201, response.text
    host = response.json()["listen"].rsplit(":", 1)[0].strip("[]")
    assert host in ("127.0.0.1", "127.0.0.2", "::1")


def test_populate_refuses_non_loopback_listen(client: httpx.Client) -> None:
    body = [
        {"name": "sec-pop-a", "upstream": "127.0.0.1:1", "listen": "127.0.0.1:0"},
        {"name": "sec-pop-b", "upstream": "127.0.0.1:1", "listen": "0.0.0.0:0"},
    ]
    response = client.post("/populate", json=body)
    assert response.status_code == 400, response.text
    assert "--allow-remote-listen" in response.json()["error"]
    assert "sec-pop-b" not in client.get("/proxies").json()


def test_update_keeps_the_running_listener(
    client: httpx.Client, request: pytest.FixtureRequest
) -> None:
    name = _name(request)
    created = client.post(
        "/proxies", json={"name": name, "upstream": "127.0.0.1:1", "listen": "127.0.0.1:0"}
    ).json()
    response = client.patch(f"/proxies/{name}", json={"listen": "0.0.0.0:0"})
    _assert_refused_listen(response, "0.0.0.0:0")
    after = client.get(f"/proxies/{name}").json()
    assert after["enabled"] is True
    assert after["listen"] == created["listen"]


def test_disabled_proxy_is_checked_when_enabled(
    client: httpx.Client, request: pytest.FixtureRequest
) -> None:
    name = _name(request)
    created = client.post(
        "/proxies",
        json={"name": name, "upstream": "127.0.0.1:1", "listen": "0.0.0.0:0", "enabled": False},
    )
    assert created.status_code == 201, created.text  # nothing listens yet
    _assert_refused_listen(client.patch(f"/proxies/{name}", json={"enabled": True}), "0.0.0.0:0")
    assert client.get(f"/proxies/{name}").json()["enabled"] is False


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_allow_remote_listen_option(mode: str) -> None:
    start = start_thread if mode == "thread" else start_process
    for allowed, expected in ((False, 400), (True, 201)):
        with start(allow_remote_listen=allowed) as handle:
            response = httpx.post(
                f"{handle.url}/proxies",
                json={"name": "all", "upstream": "127.0.0.1:1", "listen": "0.0.0.0:0"},
                timeout=15,
            )
            assert response.status_code == expected, response.text


def test_same_account_is_answered(engine: EngineHandle) -> None:
    assert httpx.get(f"{engine.url}/version", timeout=15).status_code == 200


def test_peer_uid_of_own_connection() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()),
    ):
        accepted, _ = listener.accept()
        with accepted:
            assert peer_uid(accepted) == os.geteuid()
            # The /proc fallback reads the same owner.
            assert _proc_uid(accepted.getpeername(), accepted.getsockname()) == os.geteuid()
            assert PeerPolicy("api").refusal(accepted) is None
            # Another account's policy refuses this connection, naming both uids
            # (root is let in by every policy: it can read any process's memory anyway).
            refusal = PeerPolicy("the API", uid=os.geteuid() + 12345).refusal(accepted)
            if os.geteuid() != 0:
                assert refusal is not None
                assert f"from uid {os.geteuid()}" in refusal


def test_unknown_peer_is_not_local() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        conn = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        conn.close()
        with accepted:
            # The peer is gone (or in TIME_WAIT, which names no owner): not verifiable.
            assert peer_uid(accepted) in (os.geteuid(), NOT_LOCAL)


ATTACK = textwrap.dedent(
    """
    import json, urllib.request, urllib.error
    out = {}
    for method, path, body in [
        ("GET", "/proxies", None),
        ("POST", "/proxies", {"name": "evil", "upstream": "127.0.0.1:1",
                               "listen": "127.0.0.1:0"}),
    ]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(URL + path, data=data, method=method,
                                     headers={"User-Agent": "toxiproxy-cli"})
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                out[method] = [r.status, r.read().decode()]
        except urllib.error.HTTPError as e:
            out[method] = [e.code, e.read().decode()]
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_other_local_account_is_refused(other_account: Any, mode: str) -> None:
    start = start_thread if mode == "thread" else start_process
    with start() as handle:
        result = other_account.run(f"URL = {handle.url!r}\n" + ATTACK)
        assert result.returncode == 0, result.stderr
        answers = json.loads(result.stdout)
        for method in ("GET", "POST"):
            status, body = answers[method]
            assert status == 403, (method, body)
            error = json.loads(body)["error"]
            assert f"comes from uid {other_account.uid}" in error
        assert httpx.get(f"{handle.url}/proxies", timeout=15).json() == {}
