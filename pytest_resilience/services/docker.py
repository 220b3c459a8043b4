"""Is a Docker engine reachable? Asked with one raw ``GET /_ping``, so a missing
engine costs a few milliseconds and leaves no client object or socket behind."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

__all__ = ["docker_unavailable_reason"]


def docker_unavailable_reason(timeout: float = 3.0) -> str | None:
    """None when a Docker engine answers ``/_ping``; otherwise why it does not."""
    try:
        import testcontainers  # noqa: F401
    except ImportError:
        return "the 'docker' extra is not installed (pip install 'pytest-resilience[docker]')"
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    parts = urlsplit(host)
    try:
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: str | tuple[str, int] = parts.path
        elif parts.scheme in ("tcp", "http"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (parts.hostname or "127.0.0.1", parts.port or 2375)
        else:
            return f"DOCKER_HOST={host!r} is not a unix:// or tcp:// address this check understands"
    except OSError as exc:
        return f"cannot create a socket for {host}: {exc}"
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(64)
        except OSError as exc:
            return f"no Docker engine is reachable at {host} ({exc.strerror or exc})"
    if not reply.startswith(b"HTTP/1.") or b" 200 " not in reply[:16]:
        return f"the Docker engine at {host} did not answer /_ping with 200"
    return None
