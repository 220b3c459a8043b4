"""Unit checks of the engine's Go-compatibility helpers."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_resilience.toxiproxy.gojson import ApiError, decode_body, decode_fields, format_float32
from pytest_resilience.toxiproxy.proxy import ListenError, split_host_port
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
        (b'{"rate": 1e99999}', "of type int64"),
        (b'{"rate": 99999999999999999999}', "of type int64"),
        (b'{"toxicity": 1e39}', "of type float32"),
        (b'{"enabled": "true"}', "cannot unmarshal string into Go struct field S.enabled"),
        (b"[1]", "cannot unmarshal array into Go value of type p.S"),
    ]:
        with pytest.raises(ApiError, match=fragment.replace(".", r"\.")):
            decode_fields(decode_body(body), fields, "S", "p.S")


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
