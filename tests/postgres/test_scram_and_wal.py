"""The session password's SCRAM verifier (computed by us, not by libpq) and the WAL
trimming of a freshly initialised cluster before it is cached."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pytest_resilience.services import postgres as pg
from pytest_resilience.services.postgres import PostgresServer, scram_verifier

pytestmark = pytest.mark.timeout(180)

VERIFIER = re.compile(
    r"SCRAM-SHA-256\$(?P<iterations>[0-9]+):(?P<salt>[A-Za-z0-9+/=]+)"
    r"\$(?P<stored>[A-Za-z0-9+/=]{44}):(?P<server>[A-Za-z0-9+/=]{44})"
)
WAL_SEGMENT = re.compile(r"[0-9A-F]{24}")


def parse(verifier: str) -> tuple[int, bytes, bytes, bytes]:
    """(iterations, salt, StoredKey, ServerKey) of a ``SCRAM-SHA-256$...`` verifier."""
    match = VERIFIER.fullmatch(verifier)
    assert match, verifier
    return (
        int(match["iterations"]),
        base64.b64decode(match["salt"], validate=True),
        base64.b64decode(match["stored"], validate=True),
        base64.b64decode(match["server"], validate=True),
    )


# -- scram_verifier -----------------------------------------------------------------------
# RFC 7677, section 3: user "user", password "pencil".
RFC_SALT = "W22ZaJ0SNY7soEsUEjb6gQ=="
RFC_ITERATIONS = 4096
RFC_CLIENT_FIRST_BARE = "n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL_NO_PROOF = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_AUTH_MESSAGE = ",".join(
    (RFC_CLIENT_FIRST_BARE, RFC_SERVER_FIRST, RFC_CLIENT_FINAL_NO_PROOF)
).encode()
RFC_CLIENT_PROOF = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
RFC_SERVER_SIGNATURE = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def proof_accepted(stored_key: bytes, proof_b64: str) -> bool:
    """The server's check of a client proof (RFC 5802 section 3): recover ClientKey from
    the proof and the ClientSignature, and hash it back to StoredKey."""
    signature = hmac.digest(stored_key, RFC_AUTH_MESSAGE, "sha256")
    client_key = bytes(a ^ b for a, b in zip(
        base64.b64decode(proof_b64), signature, strict=True
    ))
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)


def test_rfc7677_test_vector() -> None:
    salt = base64.b64decode(RFC_SALT)
    verifier = scram_verifier("pencil", salt=salt, iterations=RFC_ITERATIONS)
    iterations, parsed_salt, stored_key, server_key = parse(verifier)
    assert (iterations, parsed_salt) == (RFC_ITERATIONS, salt)
    assert verifier.startswith(f"SCRAM-SHA-256${RFC_ITERATIONS}:{RFC_SALT}$")

    # What the server sends back to prove it knows the verifier.
    server_signature = hmac.digest(server_key, RFC_AUTH_MESSAGE, "sha256")
    assert base64.b64encode(server_signature).decode() == RFC_SERVER_SIGNATURE
    # The client proof of the RFC's exchange logs in with this verifier...
    assert proof_accepted(stored_key, RFC_CLIENT_PROOF)
    # ...and not with the verifier of another password (the check is not vacuous).
    other = parse(scram_verifier("pencil!", salt=salt, iterations=RFC_ITERATIONS))
    assert not proof_accepted(other[2], RFC_CLIENT_PROOF)


def test_defaults_random_salt_and_format() -> None:
    first, second = scram_verifier("secret"), scram_verifier("secret")
    assert first != second  # a fresh random salt each time
    iterations, salt, stored_key, server_key = parse(first)
    assert iterations == pg.SCRAM_ITERATIONS == 4096  # libpq's and the server's default
    assert len(salt) == 16
    assert len(stored_key) == len(server_key) == hashlib.sha256().digest_size
    other = parse(second)
    assert other[0] == iterations
    assert other[1] != salt
    assert other[2:] != (stored_key, server_key)
    # Same salt and count: the same verifier (a function of its inputs only).
    assert scram_verifier("secret", salt=salt, iterations=iterations) == first
    assert parse(scram_verifier("secret", salt=salt, iterations=10))[0] == 10


@pytest.mark.parametrize(
    "password",
    ["pencil", "p@ss w0rd!$:,=~", "x", "A" * 100, "token-like_Zq3-8vL0aBcD_eFgH1jK2lMnO"],
)
def test_same_verifier_as_libpq(postgres: PostgresServer, password: str) -> None:
    with postgres.connect() as conn:
        from_libpq = conn.pgconn.encrypt_password(
            password.encode(), b"postgres", b"scram-sha-256"
        ).decode()
    iterations, salt, _, _ = parse(from_libpq)
    assert scram_verifier(password, salt=salt, iterations=iterations) == from_libpq


# -- _trim_wal ------------------------------------------------------------------------------
def segments(data: Path) -> list[str]:
    return sorted(p.name for p in (data / "pg_wal").iterdir() if WAL_SEGMENT.fullmatch(p.name))


def controldata(bindir: Path, data: Path) -> dict[str, str]:
    """pg_controldata's fields, run as this process's account (root reads any cluster;
    otherwise the cluster is ours)."""
    out = subprocess.run(
        [str(bindir / "pg_controldata"), str(data)], capture_output=True, text=True,
        check=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
    )
    return {
        key.strip(): value.strip()
        for key, value in (line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    }


def data_dir(server: PostgresServer) -> Path:
    assert server.unix_socket is not None
    return Path(server.unix_socket).parent / "data"


def write_wal(conn: psycopg.Connection[Any]) -> None:
    """Several MB of WAL: several 1 MB segments (initdb --wal-segsize=1) past the one
    kept in the cache."""
    conn.execute("CREATE TABLE filler (id int PRIMARY KEY, pad text)")
    conn.execute(
        "INSERT INTO filler SELECT i, repeat(md5(i::text), 16) FROM generate_series(1, 8000) i"
    )


def test_cold_cache_keeps_only_the_checkpoint_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    trimmed: dict[str, list[str]] = {}
    real_trim = pg._trim_wal

    def watched_trim(bindir: Path, data: Path, run_as: Any) -> None:
        trimmed["before"] = segments(data)
        real_trim(bindir, data, run_as)
        trimmed["after"] = segments(data)

    monkeypatch.setattr(pg, "_trim_wal", watched_trim)

    cold, timings = pg.start_local(cache_dir=cache)
    try:
        assert "initdb" in timings, timings  # from nothing: initdb ran, then the trim
        with cold.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        cold.close()
    # initdb left recycled segments: there was something to trim.
    assert len(trimmed["before"]) > 1, trimmed
    assert len(trimmed["after"]) == 1, trimmed

    binaries = pg.find_binaries()
    entry = pg._cached_entry(cache, binaries.bindir)
    assert entry is not None, sorted(os.listdir(cache))
    assert entry.name == pg._cache_key(binaries)
    cached = segments(entry)
    fields = controldata(binaries.bindir, entry)
    assert fields["Database cluster state"] == "shut down"
    assert cached == [fields["Latest checkpoint's REDO WAL file"]]
    assert cached == trimmed["after"]

    # A warm start from that cache: the cluster works and makes the segments it needs.
    warm, timings = pg.start_local(cache_dir=cache)
    try:
        assert "data_dir_copied" in timings, timings
        assert "initdb" not in timings
        with psycopg.connect(warm.dsn, connect_timeout=10) as conn:  # TCP: SCRAM login
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with warm.connect(autocommit=True) as conn:
            write_wal(conn)
            current = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
            assert current is not None
            assert current[0] > cached[0]  # WAL went on past the segment that was kept
            conn.execute("CHECKPOINT")
            conn.execute("INSERT INTO filler VALUES (0, 'after the checkpoint')")
            assert conn.execute("SELECT count(*) FROM filler").fetchone() == (8001,)
        assert len(segments(data_dir(warm))) > 1
    finally:
        warm.close()
    assert segments(entry) == cached  # the server ran on a copy: the cache is untouched


def test_trim_wal_leaves_a_running_cluster_alone() -> None:
    """A cluster that is not cleanly shut down (here: running, 'in production') needs
    its WAL: _trim_wal must not remove any of it."""
    server, _ = pg.start_local()
    try:
        with server.connect(autocommit=True) as conn:
            write_wal(conn)
        data = data_dir(server)
        binaries = pg.find_binaries()
        before = segments(data)
        fields = controldata(binaries.bindir, data)
        assert fields["Database cluster state"] == "in production"
        redo = fields["Latest checkpoint's REDO WAL file"]
        assert [name for name in before if name != redo], before  # a trim would remove some

        pg._trim_wal(binaries.bindir, data, pg.run_as_account())

        assert segments(data) == before
        with server.connect(autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            assert conn.execute("SELECT count(*) FROM filler").fetchone() == (8000,)
    finally:
        server.close()
