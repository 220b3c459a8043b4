"""The stage's client -> server framing without a server: whatever the read boundaries,
and whether a rule is armed or not at each read, the bytes reach the server exactly once
and in order, and the stage knows the same statement texts, portals and Sync count."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from pytest_resilience.pgwire import protocol as pw
from pytest_resilience.pgwire.proxy import PgFaultProxy, _Conn


class _Transport:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _stream(rng: random.Random
            ) -> tuple[bytes, dict[bytes, bytes], dict[bytes, bytes | None], int]:
    """A random client stream; the statement texts and portals it leaves and its
    Sync/Query count."""
    out: list[bytes] = []
    statements: dict[bytes, bytes] = {}
    portals: dict[bytes, bytes | None] = {}
    syncs = 0
    for _ in range(rng.randrange(1, 40)):
        name = rng.choice([b"", b"s1", b"s2", b"_pg3_0"])
        choice = rng.randrange(8)
        if choice == 0:
            text = b"SELECT " + b"x" * rng.randrange(0, 3000)
            out.append(pw.parse(name.decode(), text.decode()))
            statements[name] = text
        elif choice == 1:
            portal = rng.choice([b"", b"p"])
            out.append(_msg(b"B", portal + b"\0" + name + b"\0"
                            + b"\0" * rng.randrange(6, 2000)))
            portals[portal] = statements.get(name)
        elif choice == 2:
            out.append(_msg(b"C", b"S" + name + b"\0"))
            statements.pop(name, None)
        elif choice == 3:
            out.append(_msg(b"S", b""))
            syncs += 1
        elif choice == 4:
            out.append(pw.query("SELECT " + "y" * rng.randrange(0, 3000)))
            syncs += 1
        elif choice == 5:
            out.append(_msg(b"d", b"z" * rng.randrange(0, 5000)))  # CopyData
        elif choice == 6:
            out.append(_msg(b"E", rng.choice([b"", b"p"]) + b"\0\0\0\0\0"))  # Execute
        else:
            out.append(rng.choice([_msg(b"D", b"P\0"), _msg(b"H", b"")]))  # Describe, Flush
    return b"".join(out), statements, portals, syncs


def _conn() -> tuple[_Conn, _Transport, PgFaultProxy]:
    proxy: Any = PgFaultProxy("127.0.0.1", 1)
    conn = _Conn(proxy, 1, _Transport())  # type: ignore[arg-type]
    server = _Transport()
    conn.server = server  # type: ignore[assignment]
    conn.starting = False
    return conn, server, proxy


@pytest.mark.parametrize("seed", range(200))
def test_client_framing_any_read_boundaries(seed: int) -> None:
    rng = random.Random(seed)
    data, statements, portals, syncs = _stream(rng)
    conn, server, proxy = _conn()
    never = proxy.sqlstate("40001", match=r"^never matches$")
    never.disarm()
    pos = 0
    while pos < len(data):
        if rng.random() < 0.3:  # rules armed and disarmed between reads
            if proxy.rules:
                never.disarm()
            else:
                never = proxy.sqlstate("40001", match=r"^never matches$")
        step = rng.choice([1, 2, 3, 5, 7, 64, 1000, 4096, 65536])
        conn.client_data(data[pos:pos + step])
        pos += step
    assert bytes(server.data) == data
    assert conn.statements == statements
    assert conn.portals == portals
    assert conn.sent_z == syncs
    assert not conn.cbuf
    assert not conn.ctail
    assert conn.cskip == 0
