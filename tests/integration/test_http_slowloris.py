"""Slow HTTP clients cannot starve the HTTP endpoint (PROTOCOL.md v2 "Limits"):
half-sent requests are closed after --http-timeout, idle keep-alive connections
too, and past HTTP_WAITING waiting connections the oldest is closed, so /healthz,
/metrics and the admin API keep answering. Real server, real sockets."""

from __future__ import annotations

import http.client
import re
import socket
import time

from chatsrv.http import HTTP_WAITING

HALF_SENT = [
    b"GET /healthz HT",  # half a request line
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: slow",  # half the headers
    b"POST /api/v1/groups HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n{\"name\":",  # a body that never completes
]


def hold(server, count: int) -> list[socket.socket]:
    """`count` connections, each with a third of a kind of half-sent request."""
    host, port = server.http_url.removeprefix("http://").rsplit(":", 1)
    socks = []
    for i in range(count):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(HALF_SENT[i % len(HALF_SENT)])
        socks.append(sock)
    return socks


def is_closed(sock: socket.socket, wait: float) -> bool:
    """True when the server closes `sock` within `wait` seconds."""
    sock.settimeout(wait)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        return True


def healthz_times(server, n: int = 20) -> list[float]:
    times = []
    for _ in range(n):
        started = time.monotonic()
        assert server.api.get("/healthz", token=None) == (200, {"status": "ok"})
        times.append(time.monotonic() - started)
    return times


def test_healthz_answers_while_200_half_sent_requests_are_held(make_http_server):
    server = make_http_server(http_timeout=3)
    socks = hold(server, 200)
    try:
        times = healthz_times(server)
        assert max(times) < 5.0, times  # generous: it answers, it is not starved
        status, text = server.api.get("/metrics", token=None)
        assert status == 200 and "chatsrv_connections_active" in text
        assert server.api.get("/api/v1/stats")[0] == 200
        # ... and the server closes every half-sent request after the deadline.
        started = time.monotonic()
        assert all(is_closed(s, 15.0) for s in socks)
        assert time.monotonic() - started < 15.0
        text = server.api.metrics()
        assert 'chatsrv_http_closed_total{reason="timeout"} 200.0' in text
        assert "Traceback" not in server.log()
    finally:
        for sock in socks:
            sock.close()


def test_more_waiting_connections_than_the_cap_close_the_oldest(make_http_server):
    server = make_http_server(http_timeout=60)  # the deadline is not what closes them here
    socks = hold(server, HTTP_WAITING + 40)
    try:
        assert max(healthz_times(server, 5)) < 5.0
        oldest, newest = socks[:40], socks[-40:]
        assert all(is_closed(s, 5.0) for s in oldest)
        assert not any(is_closed(s, 0.05) for s in newest)
        # Each request after them (healthz, this scrape) made room too: >= 40.
        evicted = re.search(r'chatsrv_http_closed_total\{reason="evicted"\} (\d+)',
                            server.api.metrics())
        assert evicted is not None and int(evicted.group(1)) >= 40
    finally:
        for sock in socks:
            sock.close()


def test_idle_keep_alive_connections_are_closed_after_the_deadline(make_http_server):
    server = make_http_server(http_timeout=1)
    host, port = server.http_url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Connection") != "close"
    response.read()
    conn.request("GET", "/healthz")  # the same connection, within the deadline
    assert conn.getresponse().read() == b'{"status": "ok"}\n'
    assert is_closed(conn.sock, 10.0)  # then left idle: closed by the server


def test_a_slow_but_complete_request_within_the_deadline_is_served(make_http_server):
    server = make_http_server(http_timeout=5, admin_token="secret-token")
    host, port = server.http_url.removeprefix("http://").rsplit(":", 1)
    body = b'{"name": "slow"}'
    request = (b"POST /api/v1/groups HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret-token"
               b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for i in range(0, len(request), 20):
            sock.sendall(request[i:i + 20])
            time.sleep(0.05)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 201 ") and b'"name": "slow"' in answer
