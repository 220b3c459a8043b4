"""Postgres frontend/backend protocol (v3) framing: the few messages the fault stage reads
and the few it writes. Pure functions on bytes, no I/O.

Every message after the startup packet is ``type (1 byte) + length (int32, counting
itself) + body``; the startup packet, SSLRequest, GSSENCRequest and CancelRequest have
no type byte. See https://www.postgresql.org/docs/current/protocol-message-formats.html
"""

from __future__ import annotations

import re
import struct

__all__ = [
    "CANCEL_REQUEST",
    "GSSENC_REQUEST",
    "INJECTED_MARKER",
    "SSL_REQUEST",
    "bind",
    "cstring",
    "do_raise",
    "do_sleep",
    "error_fields",
    "error_response",
    "execute",
    "is_commit",
    "is_injected",
    "parse",
    "query",
    "startup_params",
]

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

#: Every error the stage makes the server raise carries this text (it finds its own
#: replies in the server's stream by it).
INJECTED_MARKER = "injected by pytest-resilience"
_MARKER_BYTES = INJECTED_MARKER.encode()

_INT32 = struct.Struct("!I")
_COMMIT_RE = re.compile(r"\s*(?:COMMIT|END)(?:\s+(?:WORK|TRANSACTION))?\s*;?\s*", re.I)


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + _INT32.pack(len(body) + 4) + body


def cstring(data: bytes | bytearray, pos: int) -> tuple[str, int]:
    """The NUL-terminated string at ``pos`` and the offset after its NUL."""
    end = data.index(b"\0", pos)
    return bytes(data[pos:end]).decode("utf-8", "replace"), end + 1


def startup_params(body: bytes) -> dict[str, str]:
    """The ``name -> value`` pairs of a StartupMessage body (after the protocol version)."""
    out: dict[str, str] = {}
    parts = body[4:].split(b"\0")
    for i in range(0, len(parts) - 1, 2):
        if not parts[i]:
            break
        out[parts[i].decode("utf-8", "replace")] = parts[i + 1].decode("utf-8", "replace")
    return out


def error_response(severity: str, code: str, message: str, detail: str | None = None) -> bytes:
    """An ErrorResponse (``E``) as the server writes it."""
    fields = [b"S" + severity.encode(), b"V" + severity.encode(), b"C" + code.encode(),
              b"M" + message.encode()]
    if detail:
        fields.append(b"D" + detail.encode())
    return _msg(b"E", b"\0".join(fields) + b"\0\0")


def error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse / NoticeResponse body, by their one-letter code."""
    out: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return out


def is_injected(body: bytes | bytearray) -> bool:
    """Whether an ErrorResponse body is one the stage made the server raise."""
    return _MARKER_BYTES in body


def is_commit(text: str) -> bool:
    """``COMMIT`` / ``END`` (``[WORK|TRANSACTION]``, an optional ``;``), nothing else."""
    return _COMMIT_RE.fullmatch(text) is not None


def do_raise(code: str, message: str) -> str:
    """A ``DO`` block that makes the server raise SQLSTATE ``code`` as an ERROR."""
    text = f"{INJECTED_MARKER}: {message}" if message else INJECTED_MARKER
    text = text.replace("'", "''")
    return (f"DO $pytest_resilience$ BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', "
            f"MESSAGE = '{text}'; END $pytest_resilience$")


def do_sleep(seconds: float, code: str, message: str) -> str:
    """A ``DO`` block that keeps the server busy for ``seconds`` (``pg_sleep``), then raises
    SQLSTATE ``code`` (marked as injected)."""
    text = f"{INJECTED_MARKER}: {message}".replace("'", "''")
    return (f"DO $pytest_resilience$ BEGIN PERFORM pg_sleep({float(seconds)!r}); "
            f"RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = '{text}'; "
            f"END $pytest_resilience$")


def query(text: str) -> bytes:
    """A simple-protocol Query (``Q``)."""
    return _msg(b"Q", text.encode() + b"\0")


def parse(name: str, text: str) -> bytes:
    """Parse (``P``) of ``text`` as statement ``name``, no parameter types."""
    return _msg(b"P", name.encode() + b"\0" + text.encode() + b"\0\0\0")


def bind(portal: str, statement: str) -> bytes:
    """Bind (``B``) without parameters, text results."""
    return _msg(b"B", portal.encode() + b"\0" + statement.encode() + b"\0" + b"\0\0\0\0\0\0")


def execute(portal: str) -> bytes:
    """Execute (``E``) of ``portal``, all rows."""
    return _msg(b"E", portal.encode() + b"\0" + b"\0\0\0\0")
