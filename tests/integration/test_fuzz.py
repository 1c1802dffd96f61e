"""Fuzzing the session layer of a real server: hypothesis byte streams (protocol
fragments, random bytes, bad UTF-8, control characters, over-long lines) split at
random points into separate writes. Invariants: the server never dies or logs a
server error, every line it sends is one of PROTOCOL.md's line kinds and ends
with LF, and a normal client logged in throughout gets its replies.

One server for the whole test, not one per example, to keep it fast.
"""

from __future__ import annotations

import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# PROTOCOL.md, "Line kinds, for parsers".
LINE_KINDS = ("enter a username:", "connected! ", "you joined the group ", "ok: ", "error: ",
              "groups: ", "users: ", "[public group ", "[private from ", "[history group ",
              "* ")

FRAGMENTS = [
    b"\n", b"\r\n", b"\r", b" ", b"\t", b"fuzzer\n", b"Zz9\n", b"alice\n", b"ping\n",
    b"PiNg\n", b"help\n", b"users\n", b"groups\n", b"create g1\n", b"create \n", b"join g1\n",
    b"join General\n", b"leave g1\n", b"leave General\n", b"public General hi\n", b"public g1 ",
    b"private alice yo\n", b"private fz me\n", b"history General 3\n", b"history g1\n",
    b"history General +5\n", b"exit\n", b"exit now\n", b"\xff\xfe", b"\xc3", "ы".encode(),
    "名\u200c".encode(), "e\u0301".encode(), b"\x00", b"\x1b[31m", b"\x7f", "\u0085".encode(),
    b"x" * 70, b"public General " + b"y" * 60 + b"\n",
]

# Most streams log in first, so that the commands after login get fuzzed too.
streams = st.builds(
    lambda login, parts: login + b"".join(parts),
    st.sampled_from([b"", b"fz\n", b"fz\r\n", b"fz\n"]),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.sampled_from(FRAGMENTS),
                       st.binary(max_size=40)),
             min_size=1, max_size=25),
)


def check_line(line: bytes) -> None:
    text = line.decode()  # the server only ever sends UTF-8
    assert text.startswith(LINE_KINDS), f"not a PROTOCOL.md line kind: {text!r}"


def run_stream(server, data: bytes, cuts: list[int]) -> list[bytes]:
    """Write `data` in pieces cut at `cuts`, half-close, and read every line until EOF."""
    sock = socket.create_connection((server.host, server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        start = 0
        try:
            for cut in [*sorted(set(cuts)), len(data)]:
                if cut > start:
                    sock.sendall(data[start:cut])
                    start = cut
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # EPIPE, ECONNRESET, ENOTCONN: an `exit` in the stream closed it
            pass
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
    assert received.endswith(b"\n") or not received, f"unterminated last line: {received!r}"
    return received.split(b"\n")[:-1]


def test_fuzzed_byte_streams_never_hurt_the_server(make_server, login):
    server = make_server(rate_limit=0, max_line=64, login_timeout=30)
    alice = login(server, "alice")
    seen = {"examples": 0, "lines": 0}

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=streams, cut_seed=st.lists(st.floats(0, 1), max_size=12))
    def check(data: bytes, cut_seed: list[float]) -> None:
        cuts = [int(f * len(data)) for f in cut_seed]
        lines = run_stream(server, data, cuts)
        for line in lines:
            check_line(line)
        assert lines and lines[0] == b"enter a username:"
        # The normal client: all it got (deliveries, notices) is well-formed, and it
        # is answered; the server is alive.
        alice.send("ping")
        for line in alice.read_until(lambda line: line == "ok: pong"):
            check_line(line.encode())
        assert server.proc.poll() is None
        seen["examples"] += 1
        seen["lines"] += len(lines)
        for line in lines:
            kind = next(k for k in LINE_KINDS if line.decode().startswith(k))
            seen[kind] = seen.get(kind, 0) + 1

    check()
    assert seen["examples"] >= 300
    # The generator reaches past the login and gets command replies, not only errors.
    assert seen["connected! "] >= 100 and seen.get("ok: ", 0) >= 10, seen
    log = server.log()
    assert "Traceback" not in log and "server error" not in log
    # Every fuzzer session has ended; only alice is left.
    assert alice.request("users") == "users: alice"
