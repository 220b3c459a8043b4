"""The Toxiproxy v2 HTTP API (control plane) plus the ``/x-resilience/*`` extension.

Toxiproxy endpoints, status codes and error bodies follow toxiproxy-server
2.12.0 (``reference/toxiproxy-v2.md``). Deliberate differences:

* attribute values that crash the real server (negative ``bandwidth.rate``,
  ``slicer.average_size`` < 1, ``slicer.size_variation`` outside
  ``0..average_size``) are answered with 400 and a message saying why (the
  toxic types, their attributes and these rules come from
  :mod:`pytest_resilience.faults`);
* a PATCH of a toxic is atomic (Go may half-apply a body with a type error).

``/metrics`` is routed only when the engine runs with ``proxy_metrics``
(``--proxy-metrics``), as on the real server. Routing answers (301 to the
cleaned path, 404 ``404 page not found``, 405) come from gorilla/mux before any
middleware, so they carry no ``X-Toxiproxy-Request-Id`` and are never 403 for a
browser; every routed request gets the header, the 403 included.

Extension (namespaced so it cannot clash with Toxiproxy paths):

``GET /x-resilience/events?proxy=NAME&since=SEQ&kind=KIND&limit=N&wait=SECONDS``
    ``{"events": [...], "next": SEQ, "dropped": N, "now": MONOTONIC}``; see
    :mod:`pytest_resilience.toxiproxy.events` for the event fields.
``GET /x-resilience/connections[?proxy=NAME]``
    ``{"proxies": {name: [{"conn", "index", "client", "client_port",
    "upstream_local", "opened_at", "bytes_up", "bytes_down", "buffered",
    "connected"}, ...]}}`` — connections currently open through each proxy.
``GET /x-resilience/info``
    engine name and version, the toxicity ``seed``, ``pid``, ``now``.
``POST /x-resilience/proxies/{name}/fail_first`` with ``{"count": N, "mode": "reset"}``
    arms the ``fail_first`` fault (toxiproxy#404): the next ``N`` new connections to the
    proxy fail at once (``reset``: RST; ``close``: closed without a byte; the upstream is
    never dialled), later ones pass. Arming again starts a new count. Answers the state.
``GET /x-resilience/proxies/{name}/fail_first``
    ``{"armed", "count", "mode", "failed", "remaining"}``: ``failed`` is how many
    connections this arming has failed so far.
``DELETE /x-resilience/proxies/{name}/fail_first``
    disarms (idempotent) and answers the state it had, ``"armed": false``. ``POST /reset``
    and deleting or replacing the proxy disarm it too.

Each failed connection is logged as ``accepted``, ``fail_first`` (``mode``, ``nth``,
``count``) and ``closed``. Toxiproxy's own endpoints never mention it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import posixpath
import time
from typing import Any

from pytest_resilience import faults
from pytest_resilience.errors import ConfigError
from pytest_resilience.faults import STREAM
from pytest_resilience.toxiproxy.events import EventLog
from pytest_resilience.toxiproxy.gojson import (
    ApiError,
    decode_body,
    decode_fields,
    dumps,
    json_kind,
)
from pytest_resilience.toxiproxy.http import Request, Response
from pytest_resilience.toxiproxy.proxy import (
    FAIL_FIRST_DISARMED,
    FailFirst,
    ListenError,
    Proxy,
    ProxyCollection,
    check_listen,
    resolve_listen,
    resolved_string,
)
from pytest_resilience.toxiproxy.toxics import (
    ToxicConfig,
    attribute_default,
    toxic_layout,
    validate_attributes,
)

__all__ = ["TOXIPROXY_VERSION", "Api"]

log = logging.getLogger("pytest_resilience.toxiproxy")

TOXIPROXY_VERSION = "2.12.0"
ENGINE_VERSION = "0.1.0.dev0"
HANDLER_TIMEOUT = 25.0

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"

# Go types as toxiproxy-server 2.12.0's decode errors print them (reflect's Type.String();
# an anonymous struct prints its fields and tags). ``Logger`` is an exported field of
# toxiproxy.Proxy without a JSON tag: any object is accepted (and ignored), anything else
# is a type error.
GO_PROXY = "toxiproxy.Proxy"
GO_POPULATE_ITEM = 'struct { toxiproxy.Proxy; Enabled *bool "json:\\"enabled\\"" }'
GO_TOXIC_UPDATE = (
    'struct { Attributes interface {} "json:\\"attributes\\""; '
    'Toxicity float32 "json:\\"toxicity\\"" }'
)
#: Go type of the attributes of each toxic type (int64 unless listed)
GO_ATTRIBUTE_TYPE = {"slicer": "int"}

PROXY_FIELDS = {
    "name": "string",
    "listen": "string",
    "upstream": "string",
    "enabled": "bool",
    "Logger": "zerolog.Logger",
}
TOXIC_FIELDS = {
    "name": "string",
    "type": "string",
    "stream": "string",
    "toxicity": "float32",
    "attributes": "raw",
}
TOXIC_UPDATE_FIELDS = {"attributes": "raw", "toxicity": "float32"}

_ALPHABET = "0123456789abcdefghijklmnopqrstuv"


def error_response(status: int, message: str) -> Response:
    return Response(status, dumps({"error": message, "status": status}) + b"\n", TEXT)


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, dumps(value), JSON)


def clean_path(path: str) -> str:
    """gorilla/mux ``cleanPath``: ``path.Clean`` keeping a trailing slash."""
    if not path:
        return "/"
    if not path.startswith("/"):
        path = "/" + path
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


class Api:
    def __init__(
        self, collection: ProxyCollection, events: EventLog, *, proxy_metrics: bool = False
    ) -> None:
        self.collection = collection
        self.events = events
        #: serve ``/metrics`` (toxiproxy-server's ``-proxy-metrics``); else it is a 404
        self.proxy_metrics = proxy_metrics
        self._ids = itertools.count(1)
        self._id_prefix = "".join(_ALPHABET[b % 32] for b in os.urandom(8))

    def _request_id(self) -> str:
        n = next(self._ids)
        suffix = ""
        for _ in range(12):
            suffix = _ALPHABET[n % 32] + suffix
            n //= 32
        return self._id_prefix + suffix

    async def handle(self, request: Request) -> Response:
        routed = self._match(request)
        if isinstance(routed, Response):
            return routed  # a routing answer: no middleware ran, so no request id
        handler, segments = routed
        try:
            response = await asyncio.wait_for(
                self._serve(request, handler, segments), HANDLER_TIMEOUT
            )
        except TimeoutError:
            response = Response(503)
        except ApiError as exc:
            response = error_response(exc.status, exc.message)
        except ListenError as exc:
            response = error_response(500, str(exc))
        response.headers.append(("X-Toxiproxy-Request-Id", self._request_id()))
        return response

    def _match(self, request: Request) -> tuple[Any, list[str]] | Response:
        """The handler and path segments, or gorilla/mux's 301, 404 or 405 answer."""
        path = request.path
        cleaned = clean_path(path)
        if cleaned != path:
            location = cleaned
            if "?" in request.target:
                location += "?" + request.target.split("?", 1)[1]
            return Response(301, b"", None, [("Location", location)])
        segments = cleaned.split("/")[1:]
        if any(not s for s in segments):
            return Response(404, b"404 page not found\n", TEXT)
        routes = self._route(segments)
        if routes is None:
            return Response(404, b"404 page not found\n", TEXT)
        handler = routes.get(request.method) or routes.get("*")
        if handler is None:
            return Response(405)
        return handler, segments

    async def _serve(self, request: Request, handler: Any, segments: list[str]) -> Response:
        if request.headers.get("user-agent", "").startswith("Mozilla/"):
            return Response(403, b"User agent not allowed\n", TEXT)
        result: Response = await handler(request, *segments)
        return result

    def _route(self, s: list[str]) -> dict[str, Any] | None:
        n = len(s)
        if n == 1:
            head = s[0]
            if head == "version":
                return {"GET": self.version}
            if head == "proxies":
                return {"GET": self.proxy_index, "POST": self.proxy_create}
            if head == "populate":
                return {"POST": self.populate}
            if head == "reset":
                return {"POST": self.reset}
            if head == "metrics" and self.proxy_metrics:
                return {"*": self.metrics}
        elif n == 2 and s[0] == "proxies":
            return {
                "GET": self.proxy_show,
                "POST": self.proxy_update_post,
                "PATCH": self.proxy_update,
                "DELETE": self.proxy_delete,
            }
        elif n == 2 and s[0] == "x-resilience":
            if s[1] == "events":
                return {"GET": self.x_events}
            if s[1] == "connections":
                return {"GET": self.x_connections}
            if s[1] == "info":
                return {"GET": self.x_info}
        elif n == 4 and s[0] == "x-resilience" and s[1] == "proxies" and s[3] == "fail_first":
            return {
                "GET": self.x_fail_first_show,
                "POST": self.x_fail_first_arm,
                "DELETE": self.x_fail_first_disarm,
            }
        elif n == 3 and s[0] == "proxies" and s[2] == "toxics":
            return {"GET": self.toxic_index, "POST": self.toxic_create}
        elif n == 4 and s[0] == "proxies" and s[2] == "toxics":
            return {
                "GET": self.toxic_show,
                "POST": self.toxic_update,
                "PATCH": self.toxic_update,
                "DELETE": self.toxic_delete,
            }
        return None

    # -- Toxiproxy endpoints -------------------------------------------------------------
    async def version(self, request: Request, *_: str) -> Response:
        body = f'{{"version": "{TOXIPROXY_VERSION}"}}\n'.encode()
        return Response(
            200, body, "application/json;charset=utf-8",
            [("X-Resilience-Engine", f"pytest-resilience/{ENGINE_VERSION}")],
        )

    async def proxy_index(self, request: Request, *_: str) -> Response:
        return json_response({p.name: p.to_json() for p in self.collection.sorted()})

    async def proxy_create(self, request: Request, *_: str) -> Response:
        data = decode_body(request.body)
        fields = decode_fields(data, PROXY_FIELDS, "Proxy", GO_PROXY)
        name = fields.get("name", "")
        if not name:
            raise ApiError(400, "missing required field: name")
        upstream = fields.get("upstream", "")
        if not upstream:
            raise ApiError(400, "missing required field: upstream")
        proxy = await self.collection.add(
            name, fields.get("listen", ""), upstream, fields.get("enabled", True)
        )
        return json_response(proxy.to_json(), 201)

    async def populate(self, request: Request, *_: str) -> Response:
        created: list[Proxy] = []
        try:
            data = decode_body(request.body)
            if data is None:
                data = []  # null leaves Go's slice nil: nothing to create
            if not isinstance(data, list):
                raise ApiError(
                    400,
                    f"bad request body: json: cannot unmarshal {json_kind(data)} "
                    f"into Go value of type []{GO_POPULATE_ITEM}",
                )
            # The items are an anonymous struct embedding toxiproxy.Proxy: no struct name.
            items = [decode_fields(item, PROXY_FIELDS, "", GO_POPULATE_ITEM) for item in data]
            for index, item in enumerate(items, start=1):
                if not item.get("name"):
                    raise ApiError(400, f"missing required field: name at proxy {index}")
                if not item.get("upstream"):
                    raise ApiError(400, f"missing required field: upstream at proxy {index}")
            for item in items:
                proxy = await self.collection.add_or_replace(
                    item["name"], item.get("listen", ""), item["upstream"],
                    item.get("enabled", True),
                )
                created.append(proxy)
        except (ApiError, ListenError) as exc:
            status = exc.status if isinstance(exc, ApiError) else 500
            message = exc.message if isinstance(exc, ApiError) else str(exc)
            body = {
                "error": message,
                "status": status,
                "proxies": [p.to_json() for p in created] if created else None,
            }
            return Response(status, dumps(body), JSON)
        return json_response(
            {"proxies": [p.to_json() for p in created] if created else None}, 201
        )

    async def proxy_show(self, request: Request, _: str, name: str) -> Response:
        return json_response(self.collection.get(name).to_json())

    async def proxy_update_post(self, request: Request, _: str, name: str) -> Response:
        log.warning(
            "Proxy update through the depercated POST method; use PATCH proxy=%s", name
        )
        return await self.proxy_update(request, _, name)

    async def proxy_update(self, request: Request, _: str, name: str) -> Response:
        proxy = self.collection.get(name)
        data = decode_body(request.body)
        fields = decode_fields(data, PROXY_FIELDS, "Proxy", GO_PROXY)
        listen = fields.get("listen", proxy.listen)
        upstream = fields.get("upstream", proxy.upstream)
        enabled = fields.get("enabled", proxy.enabled)
        if enabled:
            await check_listen(self.collection, listen)
        host, port = await resolve_listen(self.collection.loop, listen)
        if resolved_string(host, port) != proxy.listen or upstream != proxy.upstream:
            proxy.stop("proxy restarted")
            proxy.listen = listen
            proxy.upstream = upstream
        if enabled != proxy.enabled:
            if enabled:
                await proxy.start()
            else:
                proxy.stop("proxy disabled")
        return json_response(proxy.to_json())

    async def proxy_delete(self, request: Request, _: str, name: str) -> Response:
        self.collection.remove(name)
        return Response(204)

    async def toxic_index(self, request: Request, _: str, name: str, __: str) -> Response:
        proxy = self.collection.get(name)
        return json_response([t.to_json() for t in proxy.toxic_list()])

    async def toxic_create(self, request: Request, _: str, name: str, __: str) -> Response:
        proxy = self.collection.get(name)
        data = decode_body(request.body)
        fields = decode_fields(data, TOXIC_FIELDS, "ToxicWrapper", "toxics.ToxicWrapper")
        raw_attrs = fields.get("attributes")
        if raw_attrs is not None and not isinstance(raw_attrs, dict):
            raise ApiError(
                400,
                f"bad request body: json: cannot unmarshal {json_kind(raw_attrs)} into Go "
                "struct field ToxicWrapper.attributes of type toxics.NoopToxic",
            )
        stream = fields.get("stream", "downstream")
        direction = stream.lower()
        if direction not in STREAM.choices:
            raise ApiError(400, "stream was invalid, can be either upstream or downstream")
        toxic_type = fields.get("type", "")
        toxic_name = fields.get("name", "") or f"{toxic_type}_{stream}"
        _layout(toxic_type)
        if proxy.find_toxic(toxic_name) is not None:
            raise ApiError(409, "toxic already exists")
        attributes = self._attributes(toxic_type, raw_attrs, {})
        cfg = ToxicConfig(
            toxic_name, toxic_type, stream, direction,
            fields.get("toxicity", 1.0), attributes,
        )
        proxy.add_toxic(cfg)
        log.info(
            "Added toxic name=%s proxy=%s type=%s stream=%s",
            toxic_name, proxy.name, toxic_type, direction,
        )
        return json_response(cfg.to_json())

    @staticmethod
    def _attributes(toxic_type: str, raw: Any, current: dict[str, int]) -> dict[str, int]:
        struct_name, names = _layout(toxic_type)
        go_type = GO_ATTRIBUTE_TYPE.get(toxic_type, "int64")
        given = decode_fields(
            raw, dict.fromkeys(names, go_type), struct_name, f"toxics.{struct_name}",
            "attributes.",
        )
        attributes = {
            n: given.get(n, current.get(n, attribute_default(toxic_type, n))) for n in names
        }
        validate_attributes(toxic_type, attributes)
        return attributes

    def _toxic(self, proxy_name: str, toxic_name: str) -> tuple[Proxy, ToxicConfig]:
        proxy = self.collection.get(proxy_name)
        toxic = proxy.find_toxic(toxic_name)
        if toxic is None:
            raise ApiError(404, "toxic not found")
        return proxy, toxic

    async def toxic_show(
        self, request: Request, _: str, name: str, __: str, toxic: str
    ) -> Response:
        return json_response(self._toxic(name, toxic)[1].to_json())

    async def toxic_update(
        self, request: Request, _: str, name: str, __: str, toxic_name: str
    ) -> Response:
        proxy, toxic = self._toxic(name, toxic_name)
        data = decode_body(request.body)
        fields = decode_fields(data, TOXIC_UPDATE_FIELDS, "", GO_TOXIC_UPDATE)
        raw_attrs = fields.get("attributes")
        struct_name = _layout(toxic.type)[0]
        if raw_attrs is not None and not isinstance(raw_attrs, dict):
            raise ApiError(
                400,
                f"bad request body: json: cannot unmarshal {json_kind(raw_attrs)} into Go "
                f"struct field .attributes of type toxics.{struct_name}",
            )
        attributes = self._attributes(toxic.type, raw_attrs, toxic.attributes)
        new = ToxicConfig(
            toxic.name, toxic.type, toxic.stream, toxic.direction,
            fields.get("toxicity", toxic.toxicity), attributes,
        )
        proxy.update_toxic(toxic, new)
        return json_response(new.to_json())

    async def toxic_delete(
        self, request: Request, _: str, name: str, __: str, toxic_name: str
    ) -> Response:
        proxy = self.collection.get(name)
        if not proxy.remove_toxic(toxic_name):
            raise ApiError(404, "toxic not found")
        return Response(204)

    async def reset(self, request: Request, *_: str) -> Response:
        for proxy in self.collection.sorted():
            await proxy.start()
            proxy.reset_toxics()
            proxy.fail_first = None
        return Response(204)

    async def metrics(self, request: Request, *_: str) -> Response:
        out: list[str] = []
        for metric, index, help_text in (
            ("toxiproxy_proxy_received_bytes_total", 0, "The total bytes received from the source"),
            ("toxiproxy_proxy_sent_bytes_total", 1, "The total bytes sent to the destination"),
        ):
            out.append(f"# HELP {metric} {help_text}")
            out.append(f"# TYPE {metric} counter")
            for (proxy, direction, listener, upstream), values in sorted(
                self.collection.metrics.items()
            ):
                labels = ",".join(
                    f'{k}="{_label(v)}"'
                    for k, v in (
                        ("direction", direction),
                        ("listener", listener),
                        ("proxy", proxy),
                        ("upstream", upstream),
                    )
                )
                out.append(f"{metric}{{{labels}}} {values[index]}")
        body = ("\n".join(out) + "\n").encode("utf-8", errors="replace")
        return Response(200, body, "text/plain; version=0.0.4; charset=utf-8")

    # -- extension ------------------------------------------------------------------------
    @staticmethod
    def _int_param(request: Request, name: str, default: int | None) -> int | None:
        values = request.query.get(name)
        if not values:
            return default
        try:
            value = int(values[-1])
        except ValueError:
            raise ApiError(400, f"query parameter {name} must be an integer") from None
        if value < 0:
            raise ApiError(400, f"query parameter {name} must be >= 0")
        return value

    async def x_events(self, request: Request, *_: str) -> Response:
        proxy = request.query.get("proxy", [None])[-1]
        since = self._int_param(request, "since", 0) or 0
        limit = self._int_param(request, "limit", None)
        kind = request.query.get("kind", [None])[-1]
        wait_text = request.query.get("wait", [None])[-1]
        if wait_text is not None:
            try:
                wait = float(wait_text)
            except ValueError:
                raise ApiError(400, "query parameter wait must be a number of seconds") from None
            if not 0 <= wait <= 20:
                raise ApiError(400, "query parameter wait must be between 0 and 20 seconds")
            await self.events.wait(proxy, since, wait, kind)
        return json_response(
            self.events.query(proxy=proxy, since=since, limit=limit, kind=kind)
        )

    async def x_connections(self, request: Request, *_: str) -> Response:
        wanted = request.query.get("proxy", [None])[-1]
        result: dict[str, list[dict[str, Any]]] = {}
        for proxy in self.collection.sorted():
            if wanted is not None and proxy.name != wanted:
                continue
            result[proxy.name] = [c.describe() for c in proxy.connections.values()]
        if wanted is not None and wanted not in result:
            raise ApiError(404, "proxy not found")
        return json_response({"proxies": result, "now": time.monotonic()})

    @staticmethod
    def _fail_first_state(proxy: Proxy) -> dict[str, Any]:
        armed = proxy.fail_first
        state = dict(FAIL_FIRST_DISARMED) if armed is None else armed.to_json()
        return {"proxy": proxy.name, **state}

    async def x_fail_first_show(
        self, request: Request, _: str, __: str, name: str, ___: str
    ) -> Response:
        return json_response(self._fail_first_state(self.collection.get(name)))

    async def x_fail_first_arm(
        self, request: Request, _: str, __: str, name: str, ___: str
    ) -> Response:
        proxy = self.collection.get(name)
        data = decode_body(request.body)
        if not isinstance(data, dict):
            raise ApiError(
                400, 'fail_first: the body must be a JSON object like {"count": 3, "mode": '
                f'"reset"}}, got {json_kind(data)}',
            )
        try:
            values = faults.check_attributes("fail_first", data, options=False)
        except ConfigError as exc:
            raise ApiError(400, str(exc)) from None
        mode = values.get("mode", faults.with_defaults("fail_first")["mode"])
        proxy.fail_first = FailFirst(values["count"], mode)
        log.info("Armed fail_first proxy=%s count=%d mode=%s", proxy.name, values["count"], mode)
        return json_response(self._fail_first_state(proxy))

    async def x_fail_first_disarm(
        self, request: Request, _: str, __: str, name: str, ___: str
    ) -> Response:
        proxy = self.collection.get(name)
        state = self._fail_first_state(proxy)
        state["armed"] = False
        proxy.fail_first = None
        return json_response(state)

    async def x_info(self, request: Request, *_: str) -> Response:
        return json_response(
            {
                "engine": "pytest-resilience",
                "version": ENGINE_VERSION,
                "toxiproxy_version": TOXIPROXY_VERSION,
                "seed": self.collection.seed,
                "pid": os.getpid(),
                "now": time.monotonic(),
                "events_next": self.events.next_seq,
            }
        )


def _layout(toxic_type: str) -> tuple[str, tuple[str, ...]]:
    """The toxic type's Go struct and attribute names, or toxiproxy-server's 400."""
    layout = toxic_layout(toxic_type)
    if layout is None:
        raise ApiError(400, "invalid toxic type")
    return layout


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
