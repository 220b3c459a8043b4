"""Who is on the other end of a loopback TCP connection: the local account's uid.

Unix sockets have ``SO_PEERCRED``; TCP has nothing like it. On Linux the kernel
knows the uid of the account that created every TCP socket of the network
namespace. The peer of an accepted connection is the socket whose *local*
address is our peer address and whose *remote* address is our local address;
its owner is asked for with one ``sock_diag`` netlink request for exactly that
4-tuple (about 12 us here), or, where netlink diagnostics are not available,
read from ``/proc/net/tcp`` and ``/proc/net/tcp6`` (about 3 ms here: the kernel
walks its whole hash table to print it). TIME_WAIT entries carry no owner
(uid 0) and are skipped.

Where ``/proc/net/tcp`` does not exist (macOS, BSD) the owner cannot be read:
:func:`peer_uid` says :data:`UNKNOWN` and the caller decides.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import sys
from typing import Final

__all__ = ["NOT_LOCAL", "UNKNOWN", "PeerPolicy", "peer_uid"]

#: The connection does not come from a socket of this machine's network namespace.
NOT_LOCAL: Final = -1
#: This system does not tell socket owners (no ``/proc/net/tcp``).
UNKNOWN: Final = -2

_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
_TIME_WAIT = "06"
_README = "see 'Security' in the pytest-resilience README"


def _hex4(ip: ipaddress.IPv4Address) -> str:
    return f"{int.from_bytes(ip.packed, sys.byteorder):08X}"


def _hex6(ip: ipaddress.IPv6Address) -> str:
    raw = ip.packed
    return "".join(
        f"{int.from_bytes(raw[i:i + 4], sys.byteorder):08X}" for i in range(0, 16, 4)
    )


def _key(host: str, port: int, v6_table: bool) -> str | None:
    """``ADDR:PORT`` as ``/proc/net/tcp`` (``v6_table`` False) or ``tcp6`` prints it;
    None when the address cannot appear in that table."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if v6_table:
        if isinstance(ip, ipaddress.IPv4Address):
            ip = ipaddress.IPv6Address("::ffff:" + str(ip))
        return f"{_hex6(ip)}:{port:04X}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return None
        ip = ip.ipv4_mapped
    return f"{_hex4(ip)}:{port:04X}"


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_TCP_TIME_WAIT = 6
_NO_COOKIE = 0xFFFFFFFF


def _diag_uid(family: int, peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """The owner of the ``family`` TCP socket bound to ``peer`` and connected to ``local``
    (None: there is none; OSError: this system cannot be asked)."""
    def raw(address: str) -> bytes:
        return socket.inet_pton(family, address).ljust(16, b"\0")

    sockid = (
        struct.pack("!HH", peer[1], local[1]) + raw(peer[0]) + raw(local[0])
        + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    )
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.send(header + request)
        reply = nl.recv(65536)
    if len(reply) < 20:
        raise OSError("short sock_diag reply")
    kind = struct.unpack_from("=H", reply, 4)[0]
    if kind == _NLMSG_ERROR:
        code = -struct.unpack_from("=i", reply, 16)[0]
        if code == errno.ENOENT:
            return None
        raise OSError(code, os.strerror(code))
    if len(reply) < 16 + 72:
        raise OSError("short sock_diag reply")
    state = reply[17]
    if state == _TCP_TIME_WAIT:
        return None
    # inet_diag_msg: 4 bytes of family/state/timer/retrans, a 48-byte socket id,
    # expires, rqueue, wqueue, then uid.
    return int(struct.unpack_from("=I", reply, 16 + 64)[0])


def _plain(host: str) -> str:
    return host.split("%", 1)[0]


def _netlink_uid(peer: tuple[str, int], local: tuple[str, int]) -> int:
    peer_ip = ipaddress.ip_address(_plain(peer[0]))
    local_ip = ipaddress.ip_address(_plain(local[0]))
    attempts: list[tuple[int, str, str]] = []
    if isinstance(peer_ip, ipaddress.IPv6Address):
        mapped_peer, mapped_local = peer_ip.ipv4_mapped, getattr(local_ip, "ipv4_mapped", None)
        if mapped_peer is not None and mapped_local is not None:
            # A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d.
            attempts.append((socket.AF_INET, str(mapped_peer), str(mapped_local)))
        attempts.append((socket.AF_INET6, str(peer_ip), str(local_ip)))
    else:
        attempts.append((socket.AF_INET, str(peer_ip), str(local_ip)))
    for family, peer_host, local_host in attempts:
        uid = _diag_uid(family, (peer_host, peer[1]), (local_host, local[1]))
        if uid is not None:
            return uid
    return NOT_LOCAL


def peer_uid(sock: socket.socket) -> int:
    """The uid owning the other end of the accepted TCP connection ``sock``.

    :data:`NOT_LOCAL` when no socket of this machine is the peer, :data:`UNKNOWN` when
    the system does not tell socket owners."""
    try:
        local = sock.getsockname()
        peer = sock.getpeername()
    except OSError:
        return NOT_LOCAL
    if hasattr(socket, "AF_NETLINK"):
        try:
            return _netlink_uid(peer, local)
        except OSError:
            pass  # no sock_diag here: read the tables instead
    return _proc_uid(peer, local)


def _proc_uid(peer: tuple[str, int], local: tuple[str, int]) -> int:
    seen_table = False
    for table, v6 in zip(_TABLES, (False, True), strict=True):
        peer_key, local_key = _key(peer[0], peer[1], v6), _key(local[0], local[1], v6)
        if peer_key is None or local_key is None:
            continue
        try:
            with open(table, encoding="ascii") as f:
                text = f.read()
        except OSError:
            continue
        seen_table = True
        # The peer's socket: its local address is our peer, its remote address is us.
        needle = f" {peer_key} {local_key} "
        start = 0
        while (at := text.find(needle, start)) >= 0:
            start = at + 1
            line_end = text.find("\n", at)
            fields = text[at : line_end if line_end >= 0 else None].split()
            # local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            if len(fields) > 6 and fields[2] != _TIME_WAIT:
                return int(fields[6])
    return NOT_LOCAL if seen_table else UNKNOWN


class PeerPolicy:
    """Who may talk to a control API: this account (and root), never another local one.

    ``refusal(sock)`` is None for an allowed connection, else the message to answer it
    with. Peers from other machines are allowed only when the API was told to listen
    beyond loopback (``remote_ok``); they cannot be told apart by account."""

    def __init__(self, service: str, *, remote_ok: bool = False, uid: int | None = None) -> None:
        self.service = service
        self.remote_ok = remote_ok
        self.uid = os.geteuid() if uid is None else uid

    def refusal(self, sock: socket.socket) -> str | None:
        owner = peer_uid(sock)
        if owner in (self.uid, 0):
            return None
        if owner == UNKNOWN:
            return None  # no /proc/net/tcp: documented; the listener is loopback-only
        if owner == NOT_LOCAL:
            try:
                host = sock.getpeername()[0]
                loopback = ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
            except (OSError, ValueError):
                loopback = True
            if self.remote_ok and not loopback:
                return None
            return (
                f"{self.service} answers only the local account that started it "
                f"(uid {self.uid}); the owner of this connection could not be "
                f"verified ({_README})"
            )
        return (
            f"{self.service} answers only the local account that started it "
            f"(uid {self.uid}); this connection comes from uid {owner} ({_README})"
        )
