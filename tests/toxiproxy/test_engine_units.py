"""Unit checks of the engine's Go-compatibility helpers."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_resilience.toxiproxy.api import Api
from pytest_resilience.toxiproxy.events import EventLog
from pytest_resilience.toxiproxy.gojson import ApiError, decode_body, decode_fields, format_float32
from pytest_resilience.toxiproxy.http import Request, Response
from pytest_resilience.toxiproxy.proxy import ListenError, ProxyCollection, split_host_port
from pytest_resilience.toxiproxy.toxics import SlicerStage, ToxicConfig


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.0, "1"), (0.5, "0.5"), (0.1, "0.1"), (7.0, "7"), (-1.0, "-1"), (1e-7, "1e-7"),
     (0.0, "0"), (123456.0, "123456"), (1e21, "1e+21")],
)
def test_float32_formatting(value: float, text: str) -> None:
    assert format_float32(value) == text


def test_decode_like_go() -> None:
    assert decode_body(b'{"a": 1} trailing garbage') == {"a": 1}
    with pytest.raises(ApiError, match="bad request body: EOF"):
        decode_body(b"  ")
    with pytest.raises(ApiError, match="unexpected EOF"):
        decode_body(b'{"a": ')
    with pytest.raises(ApiError, match="invalid character 'N'"):
        decode_body(b"NaN")
    fields = {"name": "string", "enabled": "bool", "rate": "int64", "toxicity": "float32"}
    value = decode_body(b'{"NAME": "x", "enabled": null, "rate": 5, "toxicity": 0.5}')
    assert decode_fields(value, fields, "S", "p.S") == {"name": "x", "rate": 5, "toxicity": 0.5}
    for body, fragment in [
        (b'{"rate": 1.5}', "cannot unmarshal number 1.5 into Go struct field S.rate of type int64"),
        (b'{"rate": 1e99999}', "number 1e99999 into Go struct field S.rate of type int64"),
        (b'{"rate": 99999999999999999999}', "number 99999999999999999999 into"),
        (b'{"rate": "5"}', "cannot unmarshal string into Go struct field S.rate of type int64"),
        (b'{"toxicity": 1e39}', "number 1e39 into Go struct field S.toxicity of type float32"),
        (b'{"toxicity": true}', "cannot unmarshal bool into Go struct field S.toxicity"),
        (b'{"enabled": "true"}', "cannot unmarshal string into Go struct field S.enabled"),
        (b'{"name": 5}', "cannot unmarshal number into Go struct field S.name of type string"),
        (b'{"name": 5.5}', "cannot unmarshal number into Go struct field S.name"),
        (b'{"name": {}}', "cannot unmarshal object into Go struct field S.name"),
        (b"[1]", "cannot unmarshal array into Go value of type p.S"),
    ]:
        with pytest.raises(ApiError, match=re.escape(fragment)):
            decode_fields(decode_body(body), fields, "S", "p.S")
    with pytest.raises(ApiError, match=re.escape("Go struct field .attributes.rate of type")):
        decode_fields({"rate": "x"}, fields, "", "p.S", "attributes.")


def test_populate_field_path_is_go_1_23s() -> None:
    # toxiproxy-server 2.12.0 is built with Go 1.23: no embedded struct name in the path.
    response = asyncio.run(_populate(b'[{"name": 5, "upstream": "x:1"}]'))
    assert response.status == 400
    assert json.loads(response.body)["error"] == (
        "bad request body: json: cannot unmarshal number into Go struct field .name "
        "of type string"
    )


async def _populate(body: bytes) -> Response:
    events = EventLog()
    api = Api(ProxyCollection(asyncio.get_running_loop(), events, 1), events)
    return await api.populate(Request("POST", "/populate", "/populate", {}, "HTTP/1.1", {}, body))


@pytest.mark.parametrize(
    ("byte", "quoted"),
    [(0x00, "'\\x00'"), (0x07, "'\\a'"), (0x0B, "'\\v'"), (0x1F, "'\\x1f'"),
     (0x22, "'\"'"), (0x27, "'\\''"), (0x5C, "'\\\\'"), (0x7F, "'\\x7f'"),
     (0x80, "'\\u0080'"), (0x9F, "'\\u009f'"), (0xA0, "'\\u00a0'"), (0xA1, "'¡'"),
     (0xAD, "'\\u00ad'"), (0xEF, "'ï'"), (0xFF, "'ÿ'")],
)
def test_invalid_byte_quoted_like_go(byte: int, quoted: str) -> None:
    # encoding/json's quoteChar: strconv.Quote(string(c)), c read as the rune U+00XX
    with pytest.raises(ApiError) as info:
        decode_body(b'{"a"' + bytes([byte]) + b"}")
    assert info.value.message == f"bad request body: invalid character {quoted} after object key"


@pytest.mark.parametrize(
    ("byte", "quoted"), [(0x01, "'\\x01'"), (0x09, "'\\t'"), (0x0A, "'\\n'"), (0x0D, "'\\r'")]
)
def test_control_byte_in_string_quoted_like_go(byte: int, quoted: str) -> None:
    with pytest.raises(ApiError) as info:
        decode_body(b'"a' + bytes([byte]) + b'"')
    assert info.value.message == f"bad request body: invalid character {quoted} in string literal"


def test_invalid_utf8_in_strings_becomes_one_replacement_per_byte() -> None:
    # Go's unquote decodes rune by rune: each byte of a broken sequence is one U+FFFD.
    value = decode_body(b'{"name": "a\xe2\x82b\xff"}')
    assert decode_fields(value, {"name": "string"}, "S", "p.S") == {
        "name": "a\ufffd\ufffdb\ufffd"
    }


def test_split_host_port_like_go() -> None:
    assert split_host_port("localhost:0") == ("localhost", "0")
    assert split_host_port("[::1]:80") == ("::1", "80")
    assert split_host_port(":5") == ("", "5")
    for bad, message in [("nohost", "missing port"), ("::1:80", "too many colons"),
                         ("[::1", "missing ']'")]:
        with pytest.raises(ListenError, match=message):
            split_host_port(bad)


def _slicer(avg: int, var: int) -> SlicerStage:
    rng = random.Random(1)
    conn = SimpleNamespace(rng=lambda: rng)
    link: Any = SimpleNamespace(loop=None, sink=None, conn=conn)
    cfg = ToxicConfig("s", "slicer", "downstream", "downstream", 1.0,
                      {"average_size": avg, "size_variation": var, "delay": 0})
    return SlicerStage(link, cfg)


def test_slicer_pieces_like_go() -> None:
    data = bytes(range(256)) * 8  # 2048 B
    pieces = _slicer(100, 10)._split(data)
    assert b"".join(pieces) == data
    # Go splits at the midpoint +- variation until a piece is <= avg + var:
    # 2048 B ends up as ~32 pieces of ~55-110 B (measured on the real server: 32 x ~60 B)
    assert 16 <= len(pieces) <= 40
    assert all(0 < len(p) <= 110 for p in pieces)

    def go_chunk(start: int, end: int, avg: int) -> list[int]:
        # toxics/slicer.go ``chunk`` with size_variation 0, transcribed as the oracle
        if (end - start) - avg <= 0:
            return [start, end]
        mid = start + (end - start) // 2
        left, right = go_chunk(start, mid, avg), go_chunk(mid, end, avg)
        return left + right[1:]

    for size, avg in [(100, 10), (2048, 100), (7, 1), (1000, 999)]:
        bounds = go_chunk(0, size, avg)
        expected = [b - a for a, b in itertools.pairwise(bounds)]
        assert [len(p) for p in _slicer(avg, 0)._split(b"x" * size)] == expected
