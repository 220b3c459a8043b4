"""The Postgres-aware fault stage: a proxy that follows the protocol between a client and
the server and makes the *server* raise the errors a test asks for.

One asyncio loop (uvloop when importable) on a daemon thread (:class:`LoopThread`),
listening on 127.0.0.1 only. Per connection:

* **startup**: SSLRequest and GSSENCRequest are answered ``N``; a CancelRequest is sent
  to the server (it carries the server's own BackendKeyData, which the stage records per
  connection, so a cancel reaches the backend of the connection it names); the
  StartupMessage and the whole authentication exchange (SCRAM included) pass untouched.
* **client to server**: the statement texts are remembered (``Parse`` name -> text,
  ``Bind`` portal -> text, raw bytes decoded only when a rule is matched against them), so
  a prepared statement executed by name (asyncpg's statement cache, psycopg's prepared
  statements) matches on its text, even when it was prepared before the rule was armed.
  While no rule is armed, each read is forwarded at once, untouched, and only then
  scanned; while one is, every message is framed before it is forwarded, so that a
  matching one can be replaced.
* **server to client**: bytes are forwarded as they come while only message boundaries
  and ReadyForQuery messages are counted; the stage parses messages only while one of its
  injections is being answered (to hide the replies to messages the client did not send).

How faults are injected (see :class:`PgFaultProxy`):

* ERROR-class SQLSTATE: a matching simple Query is replaced by ``DO ... RAISE ...
  ERRCODE``; a matching ``Execute`` by ``Parse``/``Bind``/``Execute`` of that ``DO`` on the
  unnamed statement and portal (its ParseComplete/BindComplete are not shown to the
  client). The server raises the error, so the transaction state is the server's own.
  A matching ``COMMIT`` is followed by a ``ROLLBACK`` the client does not see, so the
  transaction ends with the error, as a commit-time serialization failure does.
* FATAL: an ErrorResponse of severity FATAL at a message boundary, then both sides closed.
* refused startup: the StartupMessage answered with a FATAL (53300 by default), closed.
* cut mid-response: the response forwarded up to half of one of its messages, then both
  sides closed.
* hang: ``busy``: the statement replaced by a ``DO`` block that runs ``pg_sleep`` (then
  raises 57014), so the backend is really busy: a CancelRequest cancels it (the client sees
  the server's own 57014), a closed socket leaves it running; ``done``: the statement runs,
  its response (and anything after it) is held until the client cancels (then forwarded,
  as when a cancel comes too late) or closes. Either way, with ``release_after`` the stage
  ends the hang itself when the client did neither (its own CancelRequest, or the held
  response forwarded), so a client without a timeout does not hang a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from pytest_resilience.errors import ServiceError
from pytest_resilience.pgwire import protocol as pw
from pytest_resilience.pgwire.rules import (
    Hang,
    HangServer,
    Injection,
    Kind,
    PgRule,
    RuleBook,
    check_sqlstate,
)

__all__ = ["Cancel", "PgFaultProxy", "start"]

_INT32 = struct.Struct("!I")
_unpack = _INT32.unpack_from
#: type byte and length of a message header in one call (the scanners' inner loops)
_head = struct.Struct("!BI").unpack_from
_Z, _K, _E, _ONE, _TWO = 90, 75, 69, 49, 50
_TERMINATE = b"X\0\0\0\4"
_CANCEL_HEAD = struct.Struct("!II")
#: client message types the stage looks at: Q P B E C S F
_TRACKED = tuple(c in b"QPBECSF" for c in range(256))
#: what the no-rule fast path does with a client message: 1 the server answers it with a
#: ReadyForQuery (Q S F), 2 Parse, 3 Bind, 4 Close (names and texts remembered); 0 nothing
_FAST = tuple({0x51: 1, 0x53: 1, 0x46: 1, 0x50: 2, 0x42: 3, 0x43: 4}.get(c, 0)
              for c in range(256))
#: write buffer limits of both transports (as the Toxiproxy engine's): fewer
#: pause/resume cycles under a bulk response such as a COPY
_WRITE_HIGH = 1024 * 1024
_WRITE_LOW = 256 * 1024
_STATEMENT_KINDS: tuple[Kind, ...] = ("sqlstate", "fatal", "cut_mid_response", "hang")
_FATAL_MESSAGES = {
    "57P01": "terminating connection due to administrator command",
    "57P02": "terminating connection because of crash of another server process",
    "57P03": "the database system is shutting down",
    "53300": "sorry, too many clients already",
}


def _tune(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY, and larger write buffer limits, on a stage's transport."""
    with contextlib.suppress(AttributeError, ValueError):
        cast("asyncio.Transport", transport).set_write_buffer_limits(high=_WRITE_HIGH,
                                                                     low=_WRITE_LOW)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(frozen=True)
class Cancel:
    """A CancelRequest the stage forwarded: when, the backend pid it names, and the proxied
    connection that backend serves (``None``: a key the stage never saw)."""

    time: float
    pid: int
    connection: int | None


class _Conn:
    """One proxied client connection and its server connection."""

    def __init__(self, proxy: PgFaultProxy, cid: int, client: asyncio.Transport) -> None:
        self.proxy = proxy
        self.book = proxy._book
        self.id = cid
        self.client = client
        self.server: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # for the server, before it is connected
        self.closed = False
        # client -> server
        self.starting = True
        self.cbuf = bytearray()  # bytes not forwarded yet (an incomplete message)
        # fast path (no rule armed): bytes are forwarded before they are scanned
        self.cskip = 0  # bytes of a forwarded message not looked at still to come
        self.ctail = bytearray()  # a forwarded message still incomplete, kept to be read
        self.statements: dict[bytes, bytes] = {}  # name -> text, from Parse
        self.portals: dict[bytes, bytes | None] = {}  # name -> text, from Bind
        self.sent_z = 0  # messages sent that the server answers with a ReadyForQuery
        self.rollback_after_sync = False
        # server -> client
        self.recv_z = 0
        self.skip = 0  # bytes of the message in flight still to pass (fast path)
        self.hdr = bytearray()  # a header split between reads (fast path)
        self.sbuf = bytearray()  # parsing buffer (slow path)
        self.watch = True  # parse the server's messages (startup, an injection answered)
        self.in_startup = True
        self.key: bytes | None = None
        self.inject_anchors: list[int] = []
        self.held: list[bytes] = []
        self.commit_anchor: int | None = None
        self.cut: tuple[int, int] | None = None
        self.cut_count = 0
        self.fatal_pending: bytes | None = None
        self.pid: int | None = None  # the backend's, from BackendKeyData
        self.hang: Hang | None = None  # a statement held now
        self.hold_from: int | None = None  # ``done``: responses from this segment held
        self.hang_buf: list[bytes] = []
        self.hang_rule: PgRule | None = None

    # ------------------------------------------------------------------ plumbing
    def _to_server(self, data: bytes) -> None:
        if self.server is None:
            self.pending.append(data)
        else:
            self.server.write(data)

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(
                lambda: _ServerSide(self), self.proxy.upstream_host, self.proxy.upstream_port)
        except OSError:
            self.close()
            return
        if self.closed:
            transport.close()
            return
        self.server = transport
        for data in self.pending:
            transport.write(data)
        self.pending.clear()

    def close(self, by_client: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        hang = self.hang
        if hang is not None and not hang.ended.is_set():
            if by_client:
                hang.closed = time.monotonic()
            self._end_hang(hang)
        self.proxy._conns.pop(self.id, None)
        if self.key is not None:
            self.proxy._keys.pop(self.key, None)
        self.client.close()
        if self.server is not None:
            if not self.server.is_closing():
                self.server.write(_TERMINATE)
            self.server.close()

    def _rewatch(self) -> None:
        self.watch = bool(self.in_startup or self.inject_anchors or self.held or self.cut
                          or self.commit_anchor is not None or self.fatal_pending
                          or self.hang is not None)

    def fatal(self, code: str, message: str | None = None) -> None:
        """A FATAL ErrorResponse to the client at the next message boundary, then closed."""
        err = pw.error_response("FATAL", code, message or _FATAL_MESSAGES.get(
            code, pw.INJECTED_MARKER), pw.INJECTED_MARKER)
        if not (self.hdr or self.skip or self.sbuf or self.held):
            self.client.write(err)
            self.close()
        else:
            self.fatal_pending = err
            self.watch = True

    def _end_hang(self, hang: Hang) -> None:
        """The hang is over for the verdicts (cancelled, closed, released or answered)."""
        hang.ended.set()
        rule = self.hang_rule
        if rule is not None:
            rule.hang_ended.set()

    def cancelled(self) -> None:
        """The client sent a CancelRequest for this connection: a ``done`` hang's held
        response is forwarded (a ``busy`` one is cancelled by the server)."""
        hang = self.hang
        if hang is None or hang.ended.is_set():
            return
        hang.cancelled = time.monotonic()
        self._end_hang(hang)
        if hang.server == "done":
            self._release_held()

    def release_hang(self, hang: Hang, rule: PgRule) -> None:
        """``release_after`` passed: end the hang if nobody did (a CancelRequest of the
        stage's own for a ``busy`` hang, the held response for a ``done`` one)."""
        if hang is not self.hang or hang.ended.is_set() or self.closed:
            return
        now = time.monotonic()
        left = hang.started + (rule.release_after or 0.0) - now
        if left > 0:
            # uvloop runs timers on a cached millisecond loop clock: a timer can fire up
            # to a few ms before its time.monotonic() deadline. "Nobody ended it by then"
            # must hold, so an early call waits for the rest.
            asyncio.get_running_loop().call_later(left, self.release_hang, hang, rule)
            return
        hang.released = now
        self._end_hang(hang)
        if hang.server == "done":
            self._release_held()
        elif self.key is not None:
            self.proxy._send_cancel(_CANCEL_HEAD.pack(8 + len(self.key), pw.CANCEL_REQUEST)
                                    + self.key)

    def _release_held(self) -> None:
        self.hang = None
        self.hold_from = None
        held = b"".join(self.hang_buf)
        self.hang_buf.clear()
        if held:
            self.client.write(held)
        self._rewatch()
        if not self.watch and self.sbuf:  # a message begun while held: the fast path's now
            rest = bytes(self.sbuf)
            self.sbuf.clear()
            self.client.write(rest)
            self._scan(rest)

    def _hang_answered(self, msg: bytes) -> None:
        """The server's ErrorResponse to a ``busy`` hang's DO block."""
        hang = self.hang
        assert hang is not None
        fields = pw.error_fields(msg[5:])
        hang.answer = (fields.get("C", ""), fields.get("M", ""))
        hang.answered = time.monotonic()
        self.hang = None
        if not hang.ended.is_set():
            self._end_hang(hang)
        self._rewatch()

    # ------------------------------------------------------------ client -> server
    def client_data(self, data: bytes) -> None:
        if self.closed or self.fatal_pending:
            return
        if self.starting:
            self.cbuf += data
            self._client_startup()
            return
        if not (self.book.rules or self.cbuf or self.rollback_after_sync):
            # fast path: nothing can be replaced, so the bytes go first, untouched, and
            # are only scanned after (message boundaries, names and texts, Syncs)
            server = self.server
            if server is None:
                self.pending.append(data)
            else:
                server.write(data)
            self._client_scan(data)
            return
        if self.cskip or self.ctail:  # the rest of a message the fast path forwarded
            used = self._client_finish(data, forward=True)
            if used == len(data):
                return
            data = data[used:]
        self._client_slow(data)

    def _client_scan(self, data: bytes) -> None:
        """Follow the messages of bytes already forwarded: count those the server answers
        with a ReadyForQuery, remember Parse/Bind texts, forget Closed names."""
        pos = self._client_finish(data, forward=False) if self.cskip or self.ctail else 0
        n = len(data)
        fast, head = _FAST, _head
        last = n - 5
        z = 0
        while pos <= last:
            kind, length = head(data, pos)
            end = pos + 1 + length
            what = fast[kind]
            if what == 1:
                z += 1
            elif what:
                if end > n:
                    break  # kept in ctail below, read when complete
                if what == 3:  # Bind (inlined: one in every extended-protocol execution)
                    at = data.index(0, pos + 5)
                    self.portals[data[pos + 5:at]] = self.statements.get(
                        data[at + 1:data.index(0, at + 1)])
                else:
                    self._client_names(what, data, pos)
            pos = end
        self.sent_z += z
        if pos < n:
            self.ctail += data[pos:]
        elif pos > n:
            self.cskip = pos - n

    def _client_finish(self, data: bytes, *, forward: bool) -> int:
        """Follow the continuation of a message the fast path began forwarding; how many
        bytes of ``data`` belong to it (forwarded here if ``forward``)."""
        n = len(data)
        used = 0
        tail = self.ctail
        if tail:
            if len(tail) < 5:
                used = min(5 - len(tail), n)
                tail += data[:used]
                if len(tail) == 5 and _FAST[tail[0]] < 2:  # only skipped: header enough
                    self.sent_z += _FAST[tail[0]]
                    self.cskip = max(0, _unpack(tail, 1)[0] - 4)
                    tail.clear()
            if len(tail) >= 5:
                total = 1 + _unpack(tail, 1)[0]
                more = max(0, min(total - len(tail), n - used))
                tail += data[used:used + more]
                used += more
                if len(tail) >= total:
                    self._client_names(_FAST[tail[0]], tail, 0)
                    tail.clear()
        if self.cskip and used < n:
            take = min(self.cskip, n - used)
            self.cskip -= take
            used += take
        if forward and used:
            self._to_server(data[:used])
        return used

    def _client_names(self, what: int, data: bytes | bytearray, pos: int) -> None:
        """Remember a Parse's text (2) or a Bind's portal (3), forget a Close's name (4)."""
        if what == 2:  # raw bytes, decoded only when a rule is matched against them
            at = data.index(0, pos + 5)
            self.statements[bytes(data[pos + 5:at])] = bytes(
                data[at + 1:data.index(0, at + 1)])
        elif what == 3:
            at = data.index(0, pos + 5)
            self.portals[bytes(data[pos + 5:at])] = self.statements.get(
                bytes(data[at + 1:data.index(0, at + 1)]))
        else:
            name = bytes(data[pos + 6:data.index(0, pos + 6)])
            (self.statements if data[pos + 5] == 0x53 else self.portals).pop(name, None)

    def _client_slow(self, data: bytes) -> None:
        """Frame every message before it is forwarded (a rule is armed): a matching
        statement is replaced."""
        if self.cbuf:
            self.cbuf += data
            data = bytes(self.cbuf)
            self.cbuf.clear()
        n = len(data)
        pos = start = 0
        out: list[bytes] = []
        tracked = _TRACKED
        while n - pos >= 5:
            end = pos + 1 + _unpack(data, pos + 1)[0]
            if end > n:
                break
            if tracked[data[pos]]:
                repl = self._client_msg(data[pos], data, pos, end)
                if repl is not None:
                    if self.closed:
                        return
                    if start < pos:
                        out.append(data[start:pos])
                    out.append(repl)
                    start = end
            pos = end
        if pos < n:
            self.cbuf += data[pos:]
        if not out:
            if pos:
                self._to_server(data if pos == n else data[:pos])
            return
        if start < pos:
            out.append(data[start:pos])
        self._to_server(b"".join(out))

    def _client_startup(self) -> None:
        buf = self.cbuf
        while self.starting and len(buf) >= 8:
            length = _unpack(buf, 0)[0]
            if not 8 <= length <= 10_000:
                self.close()
                return
            if len(buf) < length:
                return
            packet = bytes(buf[:length])
            del buf[:length]
            code = _unpack(packet, 4)[0]
            if code in (pw.SSL_REQUEST, pw.GSSENC_REQUEST):
                self.client.write(b"N")
                continue
            if code == pw.CANCEL_REQUEST:
                self.proxy._forward_cancel(packet)
                self.close()
                return
            rule = self.book.fire(("refuse_startup",), None, self.id)
            if rule is not None:
                self.client.write(pw.error_response(
                    "FATAL", rule.code, rule.message or _FATAL_MESSAGES.get(
                        rule.code, pw.INJECTED_MARKER), pw.INJECTED_MARKER))
                self.close()
                return
            self.starting = False
            self.sent_z = 1  # the server ends the startup with a ReadyForQuery
            self._to_server(packet)
            self.proxy._spawn(self._dial())
        if not self.starting and buf:
            rest = bytes(buf)
            buf.clear()
            self.client_data(rest)

    def _client_msg(self, kind: int, data: bytes, pos: int, end: int) -> bytes | None:
        """Look at one tracked client message; a replacement for it, or ``None``."""
        if kind == 0x53 or kind == 0x46:  # Sync, FunctionCall
            self.sent_z += 1
            if kind == 0x53 and self.rollback_after_sync:
                self.rollback_after_sync = False
                self.commit_anchor = self.sent_z - 1
                self.sent_z += 1
                self._rewatch()
                return data[pos:end] + pw.query("ROLLBACK")
            return None
        if kind == 0x50:  # Parse: remember the text (raw bytes, decoded when matched)
            at = data.index(0, pos + 5)
            self.statements[data[pos + 5:at]] = data[at + 1:data.index(0, at + 1)]
            return None
        if kind == 0x42:  # Bind
            at = data.index(0, pos + 5)
            self.portals[data[pos + 5:at]] = self.statements.get(
                data[at + 1:data.index(0, at + 1)])
            return None
        if kind == 0x43:  # Close
            name = data[pos + 6:data.index(0, pos + 6)]
            (self.statements if data[pos + 5] == 0x53 else self.portals).pop(name, None)
            return None
        if kind == 0x51:  # Query
            if not self.book.rules:
                self.sent_z += 1
                return None
            text, _ = pw.cstring(data, pos + 5)
            rule = self.book.fire(_STATEMENT_KINDS, text, self.id)
            if rule is None:
                self.sent_z += 1
                return None
            return self._inject(rule, text, simple=True, original=data[pos:end])
        # Execute
        if not self.book.rules:
            return None
        raw = self.portals.get(data[pos + 5:data.index(0, pos + 5)])
        bound = None if raw is None else raw.decode("utf-8", "replace")
        rule = self.book.fire(_STATEMENT_KINDS, bound, self.id)
        if rule is None:
            return None
        return self._inject(rule, bound, simple=False, original=data[pos:end])

    def _inject(self, rule: PgRule, text: str | None, *, simple: bool, original: bytes
                ) -> bytes:
        if rule.kind == "hang":
            hang = Hang(self.id, self.pid, text, rule.server, time.monotonic())
            with self.book.lock:
                self.book.hangs.append(hang)
                rule.hangs.append(hang)
            self.hang = hang
            if rule.release_after is not None:
                asyncio.get_running_loop().call_later(rule.release_after, self.release_hang,
                                                      hang, rule)
            self.hang_rule = rule
            if rule.server == "done":
                self.hold_from = self.sent_z
                if simple:
                    self.sent_z += 1
                self._rewatch()
                return original
            do = pw.do_sleep(rule.hold_for, "57014",
                             "the held statement was not cancelled in time")
            self._rewatch()
        elif rule.kind == "fatal":
            self.fatal(rule.code, rule.message or None)
            return b""
        elif rule.kind == "cut_mid_response":
            self.cut = (self.sent_z, rule.after_messages)
            self.cut_count = 0
            if simple:
                self.sent_z += 1
            self._rewatch()
            return original
        else:
            do = pw.do_raise(rule.code, rule.message)
        commit = text is not None and pw.is_commit(text)
        if simple:
            if commit:  # the error ends the transaction, as a failed COMMIT does
                self.commit_anchor = self.sent_z
                self.sent_z += 2
                self._rewatch()
                return pw.query(do) + pw.query("ROLLBACK")
            self.sent_z += 1
            return pw.query(do)
        self.inject_anchors.append(self.sent_z)
        self.statements[b""] = self.portals[b""] = do.encode()
        if commit:
            self.rollback_after_sync = True
        self._rewatch()
        return pw.parse("", do) + pw.bind("", "") + pw.execute("")

    # ------------------------------------------------------------ server -> client
    def server_data(self, data: bytes) -> None:
        if self.closed:
            return
        if self.watch:
            self._slow(data)
            return
        self.client.write(data)  # forwarded first, its boundaries followed after
        self._scan(data)

    def _scan(self, data: bytes) -> None:
        """Follow message boundaries over forwarded bytes; count ReadyForQuery messages."""
        n = len(data)
        if self.hdr:
            need = 5 - len(self.hdr)
            self.hdr += data[:need]
            if len(self.hdr) < 5:
                return
            if self.hdr[0] == _Z:
                self.recv_z += 1
            pos = need + _unpack(self.hdr, 1)[0] - 4
            self.hdr.clear()
        else:
            pos = self.skip
        head = _head
        last = n - 5
        z = 0
        while pos <= last:
            kind, length = head(data, pos)
            if kind == 90:  # ReadyForQuery (a literal: no global lookup per message)
                z += 1
            pos += 1 + length
        self.recv_z += z
        if pos < n:
            self.hdr += data[pos:]
            self.skip = 0
        else:
            self.skip = pos - n

    def _slow(self, data: bytes) -> None:
        client = self.client
        if self.hdr or self.skip:  # the rest of a message that began on the fast path
            if self.hdr:
                head = data[:5 - len(self.hdr)]
                client.write(head)
                self.hdr += head
                data = data[len(head):]
                if len(self.hdr) < 5:
                    return
                if self.hdr[0] == _Z:
                    self.recv_z += 1
                self.skip = _unpack(self.hdr, 1)[0] - 4
                self.hdr.clear()
            take = min(self.skip, len(data))
            client.write(data[:take])
            self.skip -= take
            data = data[take:]
            if self.skip:
                return
        buf = self.sbuf
        buf += data
        out: list[bytes] = []
        pos, n = 0, len(buf)
        while True:
            if self.fatal_pending is not None and not self.held:
                client.write(b"".join(out) + self.fatal_pending)
                self.close()
                return
            if n - pos < 5:
                break
            end = pos + 1 + _unpack(buf, pos + 1)[0]
            if end > n:
                break
            msg = bytes(buf[pos:end])
            pos = end
            if msg[0] == _Z:
                self.recv_z += 1
            if not self._server_msg(msg, out):
                client.write(b"".join(out))
                self.close()
                return
            if not self.watch:
                break
        del buf[:pos]
        if out:
            client.write(b"".join(out))
        if not self.watch and buf:
            rest = bytes(buf)
            buf.clear()
            client.write(rest)
            self._scan(rest)

    def _server_msg(self, msg: bytes, out: list[bytes]) -> bool:
        """Decide about one server message (append what the client sees to ``out``);
        ``False``: close the connection now."""
        kind = msg[0]
        if self.in_startup:
            if kind == _K:
                self.key = msg[5:]
                self.pid = _unpack(msg, 5)[0]
                self.proxy._keys[self.key] = self
            elif kind == _Z:
                self.in_startup = False
                self._rewatch()
            out.append(msg)
            return True
        seg = self.recv_z - 1 if kind == _Z else self.recv_z
        if self.cut is not None and seg >= self.cut[0]:
            if kind == _Z or self.cut_count >= self.cut[1]:
                if kind != _Z:
                    out.append(msg[:max(1, len(msg) // 2)])
                return False
            self.cut_count += 1
            out.append(msg)
            return True
        if self.commit_anchor is not None:
            anchor = self.commit_anchor
            if seg == anchor and kind == _Z:
                return True  # the DO's ReadyForQuery: not shown
            if seg == anchor + 1:
                if kind == _Z:  # the ROLLBACK's: shown, transaction idle
                    self.commit_anchor = None
                    self._rewatch()
                    out.append(msg)
                return True
        if self.hang is not None:
            if self.hold_from is not None:
                if seg >= self.hold_from:
                    self.hang_buf.append(msg)
                    return True
            elif kind == _E:  # a busy hang's DO block answered (cancelled, or timed out)
                self._hang_answered(msg)
                if self.inject_anchors and len(self.held) == 2:
                    self.held.clear()
                    self.inject_anchors.pop(0)
                    self._rewatch()
                out.append(msg)
                return True
        if self.inject_anchors:
            held = self.held
            if kind == _ONE and not held:
                held.append(msg)
                return True
            if kind == _TWO and len(held) == 1:
                held.append(msg)
                return True
            if kind == _E and len(held) == 2 and pw.is_injected(msg):
                held.clear()
                self.inject_anchors.pop(0)
                self._rewatch()
                out.append(msg)
                return True
            out.extend(held)
            held.clear()
            if kind == _ONE:
                held.append(msg)
                return True
            if kind == _Z:
                self.inject_anchors = [a for a in self.inject_anchors if a >= self.recv_z]
                self._rewatch()
        out.append(msg)
        return True


def _has_input(transport: asyncio.Transport) -> bool:
    """Bytes (or an EOF) wait on a transport that reads: the loop will handle them."""
    if transport.is_closing() or not transport.is_reading():
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(readable)


class _ClientSide(asyncio.Protocol):
    def __init__(self, proxy: PgFaultProxy) -> None:
        self.proxy = proxy
        self.conn: _Conn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _tune(transport)
        self.conn = self.proxy._accept(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.client_data(data)

    def eof_received(self) -> bool:
        if self.conn is not None:
            self.conn.close(by_client=True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.conn.close(by_client=True)

    def pause_writing(self) -> None:
        if self.conn is not None and self.conn.server is not None:
            self.conn.server.pause_reading()

    def resume_writing(self) -> None:
        if self.conn is not None and self.conn.server is not None \
                and not self.conn.server.is_closing():
            self.conn.server.resume_reading()


class _ServerSide(asyncio.Protocol):
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        # the transport is made after this and keeps this bound method: one call less
        # per read
        self.data_received = conn.server_data  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _tune(transport)

    def data_received(self, data: bytes) -> None:
        self.conn.server_data(data)

    def eof_received(self) -> bool:
        self.conn.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.close()

    def pause_writing(self) -> None:
        self.conn.client.pause_reading()

    def resume_writing(self) -> None:
        if not self.conn.client.is_closing():
            self.conn.client.resume_reading()


class PgFaultProxy:
    """A Postgres-protocol fault stage in front of ``upstream_host:upstream_port``.

    Start it with :func:`start`; connect through :attr:`host`/:attr:`port` (or
    :meth:`dsn_for`). Arm faults from any thread; each returns a :class:`PgRule`, a
    context manager that disarms it on exit::

        with proxy.sqlstate("40001", match=r"UPDATE accounts", nth=3):
            ...
        proxy.fatal("57P01", match=r"SELECT pg_sleep")
        proxy.refuse_startup(n=1)
        proxy.cut_mid_response(match=r"FROM big_table")

    :attr:`injections` is the log of what fired.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1",
                 port: int = 0, name: str = "pytest-resilience-pgwire") -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ServiceError(f"the Postgres fault stage listens on loopback only, not "
                               f"{host!r}")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = "127.0.0.1" if host == "localhost" else host
        self.port = port
        self.name = name
        self._book = RuleBook()
        self._conns: dict[int, _Conn] = {}
        self._keys: dict[bytes, _Conn] = {}
        self._ids = itertools.count(1)
        self._cancels: list[Cancel] = []
        self._cancel_lock = threading.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        from pytest_resilience.services.loop_thread import LoopThread, new_event_loop

        self._thread: LoopThread[int] = LoopThread(
            name, loop_factory=new_event_loop, modules=("pytest_resilience.pgwire",))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> PgFaultProxy:
        async def setup(loop: asyncio.AbstractEventLoop) -> int:
            self._server = await loop.create_server(
                lambda: _ClientSide(self), self.host, self.port, reuse_address=True)
            port: int = self._server.sockets[0].getsockname()[1]
            return port

        async def teardown() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self._conns.values()):
                conn.close()
            await asyncio.sleep(0)

        port = self._thread.start(setup, teardown)
        assert port is not None
        self.port = port
        from pytest_resilience.services import registry

        registry.declare(ports=[port])
        return self

    def close(self) -> None:
        """Close every connection and the listener, stop the thread (idempotent)."""
        self._thread.stop()

    def __enter__(self) -> PgFaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def dsn_for(self, dsn: str) -> str:
        """``dsn`` (a ``postgresql://`` URL or a ``key=value`` conninfo) pointed at this
        proxy instead of its server."""
        if dsn.startswith(("postgresql://", "postgres://")):
            parts = urlsplit(dsn)
            auth = parts.netloc.rpartition("@")[0]
            netloc = (auth + "@" if auth else "") + f"{self.host}:{self.port}"
            return urlunsplit(parts._replace(netloc=netloc))
        return f"{dsn} host={self.host} port={self.port}".strip()

    # ----------------------------------------------------------------- the faults
    def sqlstate(self, code: str, match: str | None = None, *, nth: int | None = None,
                 times: int | None = None, probability: float = 1.0,
                 seed: int | None = None, message: str = "") -> PgRule:
        """Make the server raise ERROR ``code`` (any SQLSTATE: 40001, 40P01, 57014, 23505,
        53100, 53200, ...) instead of running a matching statement. See :class:`PgRule`
        for ``match``/``nth``/``times``/``probability``/``seed``."""
        return self._book.add(PgRule(self._book, "sqlstate", code, match, nth=nth,
                                     times=times, probability=probability, seed=seed,
                                     message=message))

    def fatal(self, code: str = "57P01", match: str | None = None, *, nth: int | None = None,
              times: int | None = None, probability: float = 1.0, seed: int | None = None,
              message: str = "") -> PgRule:
        """Instead of running a matching statement, send the client a FATAL ``code``
        (57P01 admin shutdown by default) and close both sides."""
        return self._book.add(PgRule(self._book, "fatal", code, match, nth=nth,
                                     times=times, probability=probability, seed=seed,
                                     message=message))

    def refuse_startup(self, n: int | None = 1, code: str = "53300", *,
                       message: str = "") -> PgRule:
        """Answer the next ``n`` connections' StartupMessage with a FATAL ``code``
        (53300: "sorry, too many clients already"); ``n=None``: all, until disarmed."""
        return self._book.add(PgRule(self._book, "refuse_startup", code, None, times=n,
                                     message=message))

    def cut_mid_response(self, match: str | None = None, *, nth: int | None = None,
                         times: int | None = None, after_messages: int = 1,
                         probability: float = 1.0, seed: int | None = None) -> PgRule:
        """Forward ``after_messages`` messages of a matching statement's response and half
        of the next, then close both sides (the client sees the connection lost, 08006)."""
        return self._book.add(PgRule(self._book, "cut_mid_response", "08006", match,
                                     nth=nth, times=times, probability=probability,
                                     seed=seed, after_messages=after_messages))

    def hang(self, match: str | None = None, *, nth: int | None = None,
             times: int | None = None, server: HangServer = "busy", hold_for: float = 3600.0,
             release_after: float | None = None, probability: float = 1.0,
             seed: int | None = None) -> PgRule:
        """Hold a matching statement: its response does not come until the client cancels
        it (a CancelRequest) or closes its socket. Each held statement is logged in
        :attr:`hangs` (when it began, when and how it ended, the backend's pid).

        ``server="busy"`` (default): the server runs ``pg_sleep(hold_for)`` in place of the
        statement (then raises 57014), so the backend is active: a CancelRequest cancels
        it and the client gets the server's own 57014; a client that only closes its
        socket leaves the backend sleeping. ``server="done"``: the server runs the
        statement; the stage holds its response (and everything after it) until the
        client cancels - then it is forwarded, as when a cancel comes too late - or
        closes. ``release_after`` (seconds): the stage ends a hang nobody ended by then
        (``busy``: with a CancelRequest of its own; ``done``: forwarding the response), so
        a client without a timeout cannot hang the test. See :class:`PgRule` for
        ``match``/``nth``/``times``/``probability``/``seed``."""
        return self._book.add(PgRule(self._book, "hang", "57014", match, nth=nth,
                                     times=times, probability=probability, seed=seed,
                                     server=server, hold_for=hold_for,
                                     release_after=release_after))

    def terminate(self, code: str = "57P01", message: str | None = None) -> int:
        """Send every live connection a FATAL ``code`` now and close it, as
        ``pg_terminate_backend`` would; returns how many were closed."""
        check_sqlstate(code)

        async def run() -> int:
            conns = [c for c in self._conns.values() if not c.starting]
            for conn in conns:
                with self._book.lock:
                    self._book.log.append(Injection(
                        time.monotonic(), conn.id, None, code, "fatal"))
                conn.fatal(code, message)
            return len(conns)

        return self._thread.run(run())

    def settle(self, timeout: float = 1.0) -> int:
        """Wait, at most *timeout* seconds, until the stage has handled what its clients
        already sent: when this returns, a client that closed its connection has had its
        server session closed too (Terminate sent, socket closed). Connections a client
        still holds open are left alone. The ``pg_fault`` fixture calls it after each
        test, so the ``postgres_db`` teardown and the leak check do not find a closed
        client's server session still open while the stage's thread waits for the CPU.
        Returns how many connections still had input waiting at the deadline."""

        async def run() -> int:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                for _ in range(3):  # events already there are handled within these turns
                    await asyncio.sleep(0)
                waiting = [c for c in self._conns.values() if _has_input(c.client)]
                if not waiting or loop.time() >= deadline:
                    for _ in range(2):  # closed transports close their sockets
                        await asyncio.sleep(0)
                    return len(waiting)
                await asyncio.sleep(0.002)

        return self._thread.run(run(), timeout=timeout + 5.0)

    def clear(self) -> None:
        """Disarm every rule."""
        self._book.clear()

    def reset(self) -> None:
        """Disarm every rule and forget the injection and cancel logs (between tests)."""
        self._book.clear()
        with self._book.lock:
            self._book.log.clear()
            self._book.hangs.clear()
        with self._cancel_lock:
            self._cancels.clear()

    @property
    def rules(self) -> tuple[PgRule, ...]:
        """The armed rules, in arming order."""
        return self._book.rules

    @property
    def injections(self) -> list[Injection]:
        """What was injected so far, oldest first (a copy)."""
        return self._book.injections()

    @property
    def hangs(self) -> list[Hang]:
        """The statements held by :meth:`hang` rules so far, oldest first (a copy)."""
        with self._book.lock:
            return list(self._book.hangs)

    @property
    def cancels(self) -> list[Cancel]:
        """The CancelRequests forwarded so far (a copy)."""
        with self._cancel_lock:
            return list(self._cancels)

    @property
    def connections(self) -> int:
        """Live proxied connections."""
        return len(self._conns)

    # ------------------------------------------------------------ loop internals
    def _accept(self, transport: asyncio.Transport) -> _Conn:
        conn = _Conn(self, next(self._ids), transport)
        self._conns[conn.id] = conn
        return conn

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forward_cancel(self, packet: bytes) -> None:
        key = packet[8:]
        target = self._keys.get(key)

        with self._cancel_lock:
            self._cancels.append(Cancel(time.monotonic(), _unpack(packet, 8)[0],
                                        None if target is None else target.id))

        if target is not None:
            target.cancelled()
        self._send_cancel(packet)

    def _send_cancel(self, packet: bytes) -> None:
        """A CancelRequest to the server, on a connection of its own."""

        async def send() -> None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(OSError):
                transport, _ = await loop.create_connection(
                    asyncio.Protocol, self.upstream_host, self.upstream_port)
                transport.write(packet)
                transport.close()

        self._spawn(send())


def start(upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1",
          port: int = 0) -> PgFaultProxy:
    """Start a :class:`PgFaultProxy` in front of a Postgres server (close it with
    :meth:`PgFaultProxy.close`, or use it as a context manager)."""
    return PgFaultProxy(upstream_host, upstream_port, host=host, port=port).start()
