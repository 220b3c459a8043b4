"""Toxiproxy v2 control-plane conformance: endpoints, status codes, error bodies.

Runs against the built-in engine, and against a real toxiproxy-server when
``TOXIPROXY_URL`` is set (see ``reference/toxiproxy-v2.md`` section 1).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from typing import Any
from urllib.parse import urlsplit

import pytest

TEXT = "text/plain; charset=utf-8"

# Go types as toxiproxy-server 2.12.0's decode errors print them (reflect's Type.String()).
GO_POPULATE_ITEM = 'struct { toxiproxy.Proxy; Enabled *bool "json:\\"enabled\\"" }'
GO_TOXIC_UPDATE = (
    'struct { Attributes interface {} "json:\\"attributes\\""; '
    'Toxicity float32 "json:\\"toxicity\\"" }'
)


def assert_error(response: object, status: int, message: str) -> None:
    import httpx

    assert isinstance(response, httpx.Response)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == TEXT
    assert response.content == json.dumps(  # Go's encoding/json leaves UTF-8 as it is
        {"error": message, "status": status}, separators=(",", ":"), ensure_ascii=False
    ).encode() + b"\n"


def unmarshal(what: str) -> str:
    return f"bad request body: json: cannot unmarshal {what}"


def raw_request(
    url: str, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """A request with ``path`` sent as it is (httpx would normalise ``/./``)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def test_version(api: Any) -> None:
    response = api.get("/version")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert "version" in response.json()
    assert response.content.endswith(b"\n")
    assert response.headers["x-toxiproxy-request-id"]


def test_create_proxy_resolves_listen(api: Any, echo_server: Any) -> None:
    name = api.name()
    response = api.post(
        "/proxies", json={"name": name, "upstream": echo_server.address, "listen": "localhost:0"}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == name
    assert body["upstream"] == echo_server.address
    assert body["enabled"] is True
    assert body["toxics"] == []
    host, port = body["listen"].rsplit(":", 1)
    assert host == "127.0.0.1"
    assert int(port) > 0
    assert list(body)[:4] == ["name", "listen", "upstream", "enabled"]


def test_empty_listen_binds_all_interfaces(
    api: Any, echo_server: Any, is_builtin: bool, request: pytest.FixtureRequest
) -> None:
    if is_builtin:
        # Deliberate difference: by default the built-in engine refuses non-loopback
        # listeners (tests/toxiproxy/test_engine_security.py); with the option it binds
        # all interfaces as toxiproxy-server does.
        api = request.getfixturevalue("remote_listen_api")
    name = api.name()
    response = api.post("/proxies", json={"name": name, "upstream": echo_server.address})
    assert response.status_code == 201
    listen = response.json()["listen"]
    assert listen.startswith("[::]:")
    assert port_of(listen) > 0


def test_disabled_proxy_echoes_listen(api: Any) -> None:
    name = api.name()
    response = api.post(
        "/proxies",
        json={"name": name, "upstream": "127.0.0.1:1", "listen": "localhost:0", "enabled": False},
    )
    assert response.status_code == 201
    assert response.json()["listen"] == "localhost:0"
    assert response.json()["enabled"] is False


def test_create_proxy_errors(api: Any, echo_server: Any) -> None:
    assert_error(api.post("/proxies", json={}), 400, "missing required field: name")
    assert_error(
        api.post("/proxies", json={"upstream": "x:1"}), 400, "missing required field: name"
    )
    assert_error(
        api.post("/proxies", json={"name": api.name()}), 400, "missing required field: upstream"
    )
    assert_error(api.post("/proxies", content=b""), 400, "bad request body: EOF")
    assert_error(
        api.post("/proxies", json={"name": 5, "upstream": "x:1"}),
        400,
        unmarshal("number into Go struct field Proxy.name of type string"),
    )
    proxy = api.proxy(echo_server.address)
    assert_error(
        api.post("/proxies", json={"name": proxy["name"], "upstream": "x:1"}),
        409,
        "proxy already exists",
    )


def test_bind_conflict_is_500(api: Any, echo_server: Any) -> None:
    proxy = api.proxy(echo_server.address)
    response = api.post(
        "/proxies", json={"name": api.name(), "upstream": "x:1", "listen": proxy["listen"]}
    )
    assert response.status_code == 500
    assert "address already in use" in response.json()["error"]


def test_upstream_not_validated(api: Any) -> None:
    proxy = api.proxy("no-such-host.invalid:5432")
    assert proxy["upstream"] == "no-such-host.invalid:5432"


def test_get_proxies_sorted_and_show(api: Any, echo_server: Any) -> None:
    b = api.proxy(echo_server.address)
    a = api.proxy(echo_server.address)
    listing = api.get("/proxies").json()
    keys = list(listing)
    assert keys == sorted(keys)
    assert {a["name"], b["name"]} <= set(keys)
    shown = api.get(f"/proxies/{a['name']}")
    assert shown.status_code == 200
    assert shown.json()["listen"] == a["listen"]
    assert_error(api.get("/proxies/nope-missing"), 404, "proxy not found")


def test_patch_disable_enable_keeps_port(api: Any, echo_server: Any, sockets: Any) -> None:
    proxy = api.proxy(echo_server.address)
    name, port = proxy["name"], port_of(proxy["listen"])
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        client.sendall(b"hi")
        assert client.recv(10) == b"hi"
        response = api.patch(f"/proxies/{name}", json={"enabled": False, "name": "ignored"})
        assert response.status_code == 200
        assert response.json()["enabled"] is False
        assert response.json()["name"] == name
        assert client.recv(10) == b""  # live connections see EOF
    finally:
        client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    response = api.patch(f"/proxies/{name}", json={"enabled": True})
    assert response.status_code == 200
    assert port_of(response.json()["listen"]) == port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as again:
        again.sendall(b"yo")
        assert again.recv(10) == b"yo"


def test_deprecated_post_update(api: Any, echo_server: Any) -> None:
    proxy = api.proxy(echo_server.address)
    response = api.post(f"/proxies/{proxy['name']}", json={"enabled": False})
    assert response.status_code == 200
    assert response.json()["enabled"] is False


def test_patch_errors(api: Any, echo_server: Any) -> None:
    assert_error(api.patch("/proxies/nope-missing", json={}), 404, "proxy not found")
    proxy = api.proxy(echo_server.address)
    response = api.patch(f"/proxies/{proxy['name']}", content=b"{nope")
    assert response.status_code == 400
    assert response.json()["error"].startswith("bad request body")


def test_patch_upstream_restarts_and_keeps_toxics(
    api: Any, echo_server: Any, tcp_server: Any
) -> None:
    proxy = api.proxy(echo_server.address)
    api.toxic(proxy["name"], type="latency", attributes={"latency": 1})
    response = api.patch(f"/proxies/{proxy['name']}", json={"upstream": "127.0.0.1:1"})
    assert response.status_code == 200
    assert response.json()["upstream"] == "127.0.0.1:1"
    assert len(response.json()["toxics"]) == 1


def test_delete_proxy(api: Any, echo_server: Any) -> None:
    proxy = api.proxy(echo_server.address)
    port = port_of(proxy["listen"])
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        client.sendall(b"x")
        assert client.recv(1) == b"x"
        response = api.delete(f"/proxies/{proxy['name']}")
        assert response.status_code == 204
        assert response.content == b""
        assert client.recv(1) == b""
    finally:
        client.close()
    assert_error(api.delete(f"/proxies/{proxy['name']}"), 404, "proxy not found")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_toxic_defaults_and_order(api: Any, echo_server: Any) -> None:
    name = api.proxy(echo_server.address)["name"]
    toxic = api.toxic(name, type="latency")
    assert toxic == {
        "attributes": {"latency": 0, "jitter": 0},
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1,
    }
    up = api.toxic(name, type="slicer", stream="UPSTREAM", attributes={"average_size": 10})
    assert up["name"] == "slicer_UPSTREAM"
    assert up["stream"] == "UPSTREAM"
    assert up["attributes"] == {"average_size": 10, "size_variation": 0, "delay": 0}
    api.toxic(name, type="bandwidth", name="bw", toxicity=0.5, attributes={"rate": 5})
    api.toxic(name, type="noop", stream="upstream")
    listing = api.get(f"/proxies/{name}/toxics").json()
    assert [t["name"] for t in listing] == [
        "slicer_UPSTREAM", "noop_upstream", "latency_downstream", "bw",
    ]
    assert listing[3]["toxicity"] == 0.5
    assert api.get(f"/proxies/{name}").json()["toxics"] == listing


def test_toxic_create_errors(api: Any, echo_server: Any) -> None:
    name = api.proxy(echo_server.address)["name"]
    url = f"/proxies/{name}/toxics"
    stream_msg = "stream was invalid, can be either upstream or downstream"
    assert_error(api.post(url, json={"type": "latency", "stream": "sideways"}), 400, stream_msg)
    assert_error(api.post(url, json={"type": "latency", "stream": ""}), 400, stream_msg)
    assert_error(api.post(url, json={"type": "bogus", "stream": "bogus"}), 400, stream_msg)
    assert_error(api.post(url, json={"type": "bogus"}), 400, "invalid toxic type")
    assert_error(api.post(url, json={}), 400, "invalid toxic type")
    assert_error(api.post(url, content=b""), 400, "bad request body: EOF")
    api.toxic(name, type="latency", name="shared")
    assert_error(
        api.post(url, json={"type": "noop", "name": "shared", "stream": "upstream"}),
        409,
        "toxic already exists",
    )
    assert_error(
        api.post(url, json={"type": "bandwidth", "attributes": {"rate": "fast"}}),
        400,
        unmarshal("string into Go struct field BandwidthToxic.attributes.rate of type int64"),
    )
    assert_error(api.post("/proxies/nope-missing/toxics", json={"type": "noop"}), 404,
                 "proxy not found")


def test_toxicity_not_range_checked(api: Any, echo_server: Any) -> None:
    name = api.proxy(echo_server.address)["name"]
    assert api.toxic(name, type="noop", name="a", toxicity=7)["toxicity"] == 7
    assert api.toxic(name, type="noop", name="b", toxicity=-1)["toxicity"] == -1


def test_toxic_get_patch_delete(api: Any, echo_server: Any) -> None:
    name = api.proxy(echo_server.address)["name"]
    api.toxic(name, type="latency", toxicity=0.25, attributes={"latency": 100, "jitter": 5})
    url = f"/proxies/{name}/toxics/latency_downstream"
    assert api.get(url).json()["attributes"] == {"latency": 100, "jitter": 5}
    response = api.patch(url, json={"attributes": {"jitter": 7}, "type": "noop", "name": "x"})
    assert response.status_code == 200
    body = response.json()
    assert body["attributes"] == {"latency": 100, "jitter": 7}
    assert body["toxicity"] == 0.25
    assert body["type"] == "latency"
    assert body["name"] == "latency_downstream"
    response = api.post(url, json={"toxicity": 0.5})  # deprecated POST update
    assert response.status_code == 200
    assert response.json()["toxicity"] == 0.5
    assert_error(api.get(f"/proxies/{name}/toxics/nope"), 404, "toxic not found")
    assert_error(api.patch(f"/proxies/{name}/toxics/nope", json={}), 404, "toxic not found")
    assert_error(api.get("/proxies/nope-missing/toxics/x"), 404, "proxy not found")
    assert api.delete(url).status_code == 204
    assert_error(api.delete(url), 404, "toxic not found")


def test_toxics_on_disabled_proxy(api: Any) -> None:
    name = api.name()
    api.post("/proxies", json={"name": name, "upstream": "127.0.0.1:1", "enabled": False})
    api.created.add(name)
    assert api.toxic(name, type="timeout")["name"] == "timeout_downstream"


def test_populate(api: Any, echo_server: Any) -> None:
    a, b = api.name("a"), api.name("b")
    body = [
        {"name": a, "upstream": echo_server.address, "listen": "127.0.0.1:0"},
        {"name": b, "upstream": echo_server.address, "listen": "127.0.0.1:0", "enabled": False},
    ]
    response = api.post("/populate", json=body)
    assert response.status_code == 201
    proxies = response.json()["proxies"]
    assert [p["name"] for p in proxies] == [a, b]
    assert [p["enabled"] for p in proxies] == [True, False]
    first = proxies[0]
    api.toxic(a, type="latency")
    # Same resolved listen and upstream: kept, toxics and all.
    same = [{"name": a, "upstream": echo_server.address, "listen": first["listen"]}]
    kept = api.post("/populate", json=same).json()["proxies"][0]
    assert kept["listen"] == first["listen"]
    assert len(api.get(f"/proxies/{a}/toxics").json()) == 1
    # :0 never counts as unchanged: rebinds on a new port.
    rebound = api.post("/populate", json=[{**same[0], "listen": "127.0.0.1:0"}]).json()
    assert rebound["proxies"][0]["listen"] != first["listen"]
    assert api.get(f"/proxies/{a}/toxics").json() == []
    # A changed upstream replaces the proxy, losing its toxics.
    api.toxic(a, type="latency")
    listen = api.get(f"/proxies/{a}").json()["listen"]
    changed = [{"name": a, "upstream": "127.0.0.1:1", "listen": listen}]
    replaced = api.post("/populate", json=changed).json()["proxies"][0]
    assert replaced["upstream"] == "127.0.0.1:1"
    assert replaced["toxics"] == []


def test_populate_errors(api: Any, echo_server: Any) -> None:
    response = api.post("/populate", json={"name": "x"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"].startswith("bad request body")
    assert not response.content.endswith(b"\n")
    good = api.name("good")
    response = api.post(
        "/populate", json=[{"name": good, "upstream": echo_server.address}, {"upstream": "x:1"}]
    )
    assert response.status_code == 400
    assert response.json()["error"] == "missing required field: name at proxy 2"
    assert "proxies" in response.json()
    assert api.get(f"/proxies/{good}").status_code == 404
    for body in (b"[]", b"null", b" null trailing"):  # null leaves Go's slice nil
        empty = api.post("/populate", content=body)
        assert empty.status_code == 201
        assert empty.headers["content-type"] == "application/json"
        assert empty.content == b'{"proxies":null}'


def test_reset(api: Any, echo_server: Any) -> None:
    proxy = api.proxy(echo_server.address)
    name = proxy["name"]
    api.toxic(name, type="latency")
    api.toxic(name, type="noop", stream="upstream")
    api.patch(f"/proxies/{name}", json={"enabled": False})
    response = api.post("/reset")
    assert response.status_code == 204
    after = api.get(f"/proxies/{name}").json()
    assert after["enabled"] is True
    assert after["toxics"] == []
    assert after["listen"] == proxy["listen"]


def test_routing_errors(api: Any) -> None:
    # gorilla/mux answers these itself, before any middleware runs: no request id, and
    # a browser's User-Agent makes no difference.
    browser = {"User-Agent": "Mozilla/5.0 (X11)"}
    for headers in ({}, browser):
        response = api.get("/nope", headers=headers)
        assert response.status_code == 404
        assert response.content == b"404 page not found\n"
        assert "x-toxiproxy-request-id" not in response.headers
        response = api.request("PUT", "/proxies", headers=headers)
        assert response.status_code == 405
        assert response.content == b""
        assert "x-toxiproxy-request-id" not in response.headers
        status, raw_headers, _ = raw_request(api.url, "GET", "/proxies/./nope?x=1", headers)
        assert status == 301
        assert raw_headers["Location"] == "/proxies/nope?x=1"
        assert "X-Toxiproxy-Request-Id" not in raw_headers
    assert api.request("DELETE", "/version").status_code == 405
    # A routed request passes the middleware: it gets a request id, and browsers are refused.
    response = api.get("/version", headers=browser)
    assert response.status_code == 403
    assert response.content == b"User agent not allowed\n"
    assert response.headers["x-toxiproxy-request-id"]
    response = api.get("/proxies/nope-missing")
    assert response.status_code == 404
    assert response.headers["x-toxiproxy-request-id"]


def test_keep_alive(toxiproxy_api_url: str) -> None:
    parts = urlsplit(toxiproxy_api_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        for _ in range(5):
            conn.request("GET", "/version")
            response = conn.getresponse()
            assert response.status == 200
            response.read()
        sock = conn.sock
        conn.request("GET", "/proxies")
        response = conn.getresponse()
        response.read()
        assert conn.sock is sock  # the same TCP connection was reused
    finally:
        conn.close()


def test_metrics_counts_closed_connections(api: Any, echo_server: Any) -> None:
    probe = api.get("/metrics")
    if probe.status_code == 404:
        pytest.skip("this server runs without -proxy-metrics")
    proxy = api.proxy(echo_server.address)
    with socket.create_connection(("127.0.0.1", port_of(proxy["listen"])), timeout=10) as c:
        c.sendall(b"12345")
        assert c.recv(5) == b"12345"
    api.delete(f"/proxies/{proxy['name']}")
    api.created.discard(proxy["name"])
    text = api.get("/metrics").text
    assert "toxiproxy_proxy_received_bytes_total" in text
    assert f'proxy="{proxy["name"]}"' in text


def test_invalid_listen_port_is_500(api: Any) -> None:
    response = api.post(
        "/proxies", json={"name": api.name(), "upstream": "x:1", "listen": "127.0.0.1:99999"}
    )
    assert response.status_code == 500
    assert response.json()["error"] == "listen tcp: address 99999: invalid port"


# Go's encoding/json names the JSON kind, the innermost Go struct and the JSON path to
# the field, and the Go type; a number that does not fit a numeric type is quoted.
def test_proxy_decode_errors_read_as_go(api: Any, echo_server: Any) -> None:
    for body, what in [
        ({"name": "a", "upstream": 5}, "number into Go struct field Proxy.upstream of type string"),
        ({"name": "a", "upstream": "x:1", "enabled": "yes"},
         "string into Go struct field Proxy.enabled of type bool"),
        # Proxy.Logger is exported without a JSON tag: only an object (or null) fits it.
        ({"name": "a", "upstream": "x:1", "Logger": 5},
         "number into Go struct field Proxy.Logger of type zerolog.Logger"),
        ([], "array into Go value of type toxiproxy.Proxy"),
        ("a", "string into Go value of type toxiproxy.Proxy"),
        (5, "number into Go value of type toxiproxy.Proxy"),
    ]:
        assert_error(api.post("/proxies", json=body), 400, unmarshal(what))
    name = api.proxy(echo_server.address)["name"]
    assert_error(
        api.patch(f"/proxies/{name}", json={"listen": 5}),
        400,
        unmarshal("number into Go struct field Proxy.listen of type string"),
    )
    assert_error(
        api.patch(f"/proxies/{name}", json=True),
        400,
        unmarshal("bool into Go value of type toxiproxy.Proxy"),
    )


def test_populate_decode_errors_read_as_go(api: Any) -> None:
    for body, what in [
        ({"name": "a"}, f"object into Go value of type []{GO_POPULATE_ITEM}"),
        ("a", f"string into Go value of type []{GO_POPULATE_ITEM}"),
        ([5], f"number into Go value of type {GO_POPULATE_ITEM}"),
        # The item is an anonymous struct: no struct name before the field.
        ([{"name": "a", "upstream": "x:1", "enabled": "yes"}],
         "string into Go struct field .enabled of type bool"),
    ]:
        response = api.post("/populate", json=body)
        assert response.status_code == 400
        assert response.json() == {"error": unmarshal(what), "status": 400, "proxies": None}
    # A field promoted from the embedded toxiproxy.Proxy: Go 1.23 (the 2.12.0 release
    # build) prints ".name", Go 1.24 and later ".Proxy.name".
    response = api.post("/populate", json=[{"name": 5, "upstream": "x:1"}])
    assert response.status_code == 400
    assert re.fullmatch(
        re.escape(unmarshal("number into Go struct field ."))
        + r"(Proxy\.)?name of type string",
        response.json()["error"],
    )


def test_toxic_decode_errors_read_as_go(api: Any, echo_server: Any) -> None:
    name = api.proxy(echo_server.address)["name"]
    url = f"/proxies/{name}/toxics"
    for body, what in [
        (b'{"type": "bandwidth", "attributes": {"rate": 1.5}}',
         "number 1.5 into Go struct field BandwidthToxic.attributes.rate of type int64"),
        (b'{"type": "latency", "attributes": {"jitter": 99999999999999999999}}',
         "number 99999999999999999999 into Go struct field LatencyToxic.attributes.jitter "
         "of type int64"),
        (b'{"type": "slicer", "attributes": {"average_size": "x"}}',
         "string into Go struct field SlicerToxic.attributes.average_size of type int"),
        (b'{"type": "latency", "attributes": 5}',
         "number into Go struct field ToxicWrapper.attributes of type toxics.NoopToxic"),
        (b'{"type": "latency", "toxicity": "x"}',
         "string into Go struct field ToxicWrapper.toxicity of type float32"),
        (b'{"type": "latency", "toxicity": 1e39}',
         "number 1e39 into Go struct field ToxicWrapper.toxicity of type float32"),
        (b"[]", "array into Go value of type toxics.ToxicWrapper"),
    ]:
        assert_error(api.post(url, content=body), 400, unmarshal(what))
    api.toxic(name, type="latency")
    toxic_url = f"{url}/latency_downstream"
    # The update decodes into an anonymous struct holding the toxic as "attributes".
    for body, what in [
        (b'{"toxicity": "x"}', "string into Go struct field .toxicity of type float32"),
        (b'{"attributes": "x"}',
         "string into Go struct field .attributes of type toxics.LatencyToxic"),
        (b'{"attributes": {"jitter": true}}',
         "bool into Go struct field LatencyToxic.attributes.jitter of type int64"),
        (b"[]", f"array into Go value of type {GO_TOXIC_UPDATE}"),
    ]:
        assert_error(api.patch(toxic_url, content=body), 400, unmarshal(what))


def test_syntax_errors_read_as_go(api: Any) -> None:
    # Go's quoteChar reads the byte it stopped at as the rune U+00XX.
    for body, message in [
        (b"\xff", "invalid character 'ÿ' looking for beginning of value"),
        (b"\xef\xbb\xbf{}", "invalid character 'ï' looking for beginning of value"),  # a BOM
        (b"\x01", "invalid character '\\x01' looking for beginning of value"),
        (b"\x80", "invalid character '\\u0080' looking for beginning of value"),
        (b"'a'", "invalid character '\\'' looking for beginning of value"),
        (b'{"name": "a",}', "invalid character '}' looking for beginning of object key string"),
        (b'{"name" "a"}', "invalid character '\"' after object key"),
        (b'{"name": "a" "b"}', "invalid character '\"' after object key:value pair"),
        (b'{"name": [1 2]}', "invalid character '2' after array element"),
        (b'{"name": 1.x}', "invalid character 'x' after decimal point in numeric literal"),
        (b'{"name": 1e}', "invalid character '}' in exponent of numeric literal"),
        (b'{"name": -}', "invalid character '}' in numeric literal"),
        (b'{"name": tru}', "invalid character '}' in literal true (expecting 'e')"),
        (b'{"name": "\\x"}', "invalid character 'x' in string escape code"),
        (b'{"name": "\\u12x4"}', "invalid character 'x' in \\u hexadecimal character escape"),
        (b'{"name": "a\nb"}', "invalid character '\\n' in string literal"),
        (b"[NaN]", "invalid character 'N' looking for beginning of value"),
        (b"[-Infinity]", "invalid character 'I' in numeric literal"),
        (b'{"name": ', "unexpected EOF"),
        (b'"abc', "unexpected EOF"),
        (b"1.", "unexpected EOF"),
    ]:
        assert_error(api.post("/proxies", content=body), 400, f"bad request body: {message}")
