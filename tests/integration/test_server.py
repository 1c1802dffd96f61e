"""The server under stress and abuse, over real sockets: scale, slow readers,
garbage, huge lines, TLS, shutdown."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import ssl
import time

from conftest import Client, wait_for


def test_thousand_concurrent_logins(server, connect):
    socks = [socket.create_connection((server.host, server.port)) for _ in range(1000)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(f"user{i}\n".encode())
        pending = {sock: b"" for sock in socks}
        sel = selectors.DefaultSelector()
        for sock in socks:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(1.0):
                sock = key.fileobj
                data = sock.recv(1 << 20)
                assert data, "server closed a login"
                if sock in pending:
                    pending[sock] += data
                    if b"you joined the group General\n" in pending[sock]:
                        del pending[sock]
        assert not pending, f"{len(pending)} logins unfinished"
        sel.close()
        checker = connect(server)
        checker.expect("enter a username:")
        checker.send("checker")
        checker.read_until(lambda line: line == "you joined the group General")
        checker.send("users")
        users = checker.read_until(lambda line: line.startswith("users: "))[-1]
        assert len(users.split()) == 1 + 1001
    finally:
        for sock in socks:
            sock.close()


def test_never_reading_client_does_not_delay_others(make_server, login, connect):
    server = make_server(rate_limit=0, sendq=256 * 1024)
    # The slow client shrinks its receive buffer and never reads.
    slow_sock = socket.socket()
    slow_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow_sock.connect((server.host, server.port))
    slow = Client(server.host, server.port, sock=slow_sock)
    slow.expect("enter a username:")
    slow.send("slow")
    slow.expect("connected! welcome slow", "you joined the group General")
    receiver = login(server, "receiver")
    sender = login(server, "sender")
    receiver.read_until(lambda line: line == "* sender joined the group General")
    total = 20000
    payload = "x" * 300  # 6.8 MB in all: more than the kernel buffers can hide
    batch = "".join(f"public General {i} {payload}\n" for i in range(total)).encode()
    started = time.monotonic()
    sender.send(batch)
    for i in range(total):
        line = receiver.read_line()
        if line.startswith("* slow left"):
            line = receiver.read_line()
        assert line == f"[public group General from sender] {i} {payload}"
    elapsed = time.monotonic() - started
    sender.sync()
    sender.send("users")
    assert sender.read_line() == "users: receiver sender"  # the slow one was cut off
    assert "user=slow reason=sendq" in server.log()
    print(f"20000 messages delivered past a stalled reader in {elapsed:.2f}s")


def test_garbage_bytes_do_not_hurt_the_server(server, login, connect):
    watcher = login(server, "watcher")
    for _ in range(5):
        vandal = connect(server)
        vandal.send(os.urandom(200_000) + b"\n")
        vandal.sock.shutdown(socket.SHUT_WR)
        assert vandal.closed(), "the server should close the vandal's session at EOF"
    watcher.send("users")
    assert watcher.read_until(lambda line: line.startswith("users: "))[-1] == "users: watcher"
    assert "Traceback" not in server.log()


def test_megabyte_line_is_refused_once_and_the_session_goes_on(server, login):
    alice = login(server, "alice")
    alice.send(b"public General " + b"y" * 1_000_000 + b"\n")
    assert alice.read_line() == "error: line too long (max 4096 bytes)"
    assert alice.request("ping") == "ok: pong"


def test_half_line_then_disconnect_is_discarded(server, login):
    alice = login(server, "alice")
    bob = login(server, "bob")
    alice.read_line()  # bob's join notice
    bob.send(b"public General never finished")
    bob.close()
    assert alice.read_line() == "* bob left the group General"
    alice.sync()


def test_pipelined_commands_answer_in_order(server, login):
    alice = login(server, "alice")
    alice.send(b"create G1\njoin G1\nping\ngroups\npublic G1 hi\nhistory G1 1\nleave G1\nexit\n")
    alice.expect(
        "ok: created group G1",
        "ok: joined group G1",
        "ok: pong",
        "groups: G1 General",
    )
    assert alice.read_line().startswith("[history group G1 at ")
    alice.expect("ok: end of history G1", "ok: left group G1", "ok: bye")
    assert alice.closed()


def test_login_pipelined_with_commands(server, connect):
    client = connect(server)
    client.send(b"zoe\r\nping\r\nexit\r\n")
    client.expect(
        "enter a username:",
        "connected! welcome zoe",
        "you joined the group General",
        "ok: pong",
        "ok: bye",
    )


def test_tls_login(make_server, tls_files):
    cert, key = tls_files
    server = make_server(rate_limit=0, tls_cert=cert, tls_key=key)
    ctx = ssl.create_default_context(cafile=str(cert))
    raw = socket.create_connection((server.host, server.port), timeout=10)
    client = Client(server.host, server.port, sock=ctx.wrap_socket(raw, server_hostname="localhost"))
    client.expect("enter a username:")
    client.send("tls_user")
    client.expect("connected! welcome tls_user", "you joined the group General")
    assert client.request("ping") == "ok: pong"
    client.send("exit")
    client.expect("ok: bye")
    client.close()
    # A plain-text client on the TLS port is turned away without harming the server.
    plain = Client(server.host, server.port)
    plain.send("hello")
    assert plain.closed()
    assert "Traceback" not in server.log()


def test_sigterm_shutdown_tells_everyone_and_exits_zero(server, login):
    alice = login(server, "alice")
    bob = login(server, "bob")
    alice.read_line()
    server.proc.send_signal(signal.SIGTERM)
    for client in (alice, bob):
        assert client.read_until(lambda line: line.startswith("* server"))[-1] == (
            "* server shutting down"
        )
        assert client.closed()
    assert server.proc.wait(15) == 0
    assert server.log().count("reason=shutdown") == 2


def test_sigint_also_shuts_down_cleanly(server, login):
    alice = login(server, "alice")
    server.proc.send_signal(signal.SIGINT)
    alice.expect("* server shutting down")
    assert server.proc.wait(15) == 0


def test_server_logs_connect_login_disconnect(server, login):
    alice = login(server, "alice")
    alice.send("exit")
    alice.expect("ok: bye")
    assert alice.closed()
    wait_for(lambda: "disconnect id=1 " in server.log(), "the disconnect's log line")
    log = server.log()
    assert "connect id=1 peer=127.0.0.1:" in log
    assert "login id=1 user=alice" in log
    assert "disconnect id=1 user=alice reason=exit" in log


def test_reset_frees_the_name_at_once(server, login, connect):
    alice = login(server, "alice")
    bob = login(server, "bob")
    alice.read_line()
    bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    bob.sock.close()
    assert alice.read_line() == "* bob left the group General"
    again = login(server, "bob")
    assert again.request("ping") == "ok: pong"


def _tls_client(server, cert):
    ctx = ssl.create_default_context(cafile=str(cert))
    raw = socket.create_connection((server.host, server.port), timeout=10)
    return Client(server.host, server.port, sock=ctx.wrap_socket(raw, server_hostname="localhost"))


def test_tls_pipelined_bulk_and_delivery_between_tls_clients(make_server, tls_files):
    # The login and the next 20,000 commands arrive in one burst: more plaintext
    # than one read, so some is still buffered in TLS when the session parks.
    cert, key = tls_files
    server = make_server(rate_limit=0, tls_cert=cert, tls_key=key)
    bob = _tls_client(server, cert)
    bob.expect("enter a username:")
    bob.send("bob")
    bob.expect("connected! welcome bob", "you joined the group General")
    alice = _tls_client(server, cert)
    alice.expect("enter a username:")
    alice.send("alice\n" + "ping\n" * 20000 + "public General done")
    alice.expect("connected! welcome alice", "you joined the group General", *["ok: pong"] * 20000)
    bob.expect("* alice joined the group General", "[public group General from alice] done")
    alice.close()
    bob.expect("* alice left the group General")
    assert bob.request("users") == "users: bob"
    assert "Traceback" not in server.log()


def test_rate_limited_session_keeps_order_through_exit(make_server, login):
    server = make_server(rate_limit=50)
    alice = login(server, "alice")
    bob = login(server, "bob")
    alice.read_line()  # bob joined
    alice.send("\n".join(["ping"] * 150 + ["exit", "ping"]))
    alice.expect(*["ok: pong"] * 150, "ok: bye")
    assert alice.closed()
    bob.expect("* alice left the group General")
    assert bob.request("users") == "users: bob"
