"""The WebSocket door, issue 15 part 1, over real sockets: HTTPS/WSS with the
chat port's certificate, --trusted-proxies (X-Forwarded-For), the {transport}
breakdown of the connection metrics, the close frame and disconnect reason of
each way a WebSocket session ends, a --max-line reload, and HTTP edge cases
(a malformed head, HEAD)."""

from __future__ import annotations

import signal
import socket
import ssl
import urllib.request

import pytest
from conftest import Api, RunningServer, _servers, free_port, wait_for
from test_websocket import start_web_server, ws_clients  # noqa: F401 - a fixture
from wsproto.events import CloseConnection, Message

TOKEN = "door-admin-token"


@pytest.fixture
def door(tmp_path):
    """door(**options): a server with the web port and the admin API on free ports."""

    def start(tmp, **options) -> RunningServer:
        options.setdefault("rate_limit", 0)
        server = start_web_server(tmp, http_port=free_port(), admin_token=TOKEN, **options)
        server.api = Api(server.http_url, TOKEN)
        return server

    yield from _servers(tmp_path, start)


@pytest.fixture
def wsc(ws_clients):  # noqa: F811 - test_websocket's fixture, under a short name
    return ws_clients


def disconnects(server: RunningServer) -> list[str]:
    return [line.split("reason=", 1)[1] for line in server.log().splitlines()
            if " disconnect id=" in line]


def metric(server: RunningServer, sample: str) -> float:
    assert server.api is not None
    for line in server.api.metrics().splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} missing")


def raw_http(port: int, request: bytes) -> bytes:
    """Send `request` as is; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


# ---------------------------------------------------------------- HTTPS / WSS


def test_with_a_certificate_the_web_port_serves_https_and_wss(door, wsc, login, tls_files):
    cert, key = tls_files
    server = door(tls_cert=cert, tls_key=key)
    ctx = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{server.web_port}/"
    with urllib.request.urlopen(url, timeout=10, context=ctx) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        assert response.headers["Content-Security-Policy"] == "default-src 'self'"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.read()
    assert f"web client on {url}" in server.log()
    # The page's own origin is https://host:port now; http:// is another origin.
    alice = wsc(server, tls=ctx, origin=url.rstrip("/")).login("alice")
    assert wsc(server, tls=ctx, origin=f"http://127.0.0.1:{server.web_port}").status == 403
    tls_ctx = ssl.create_default_context(cafile=str(cert))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    bob_sock = tls_ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    from conftest import Client
    bob = Client(server.host, server.port, sock=bob_sock)
    bob.expect("enter a username:")
    bob.send("bob")
    bob.expect("connected! welcome bob", "you joined the group General")
    alice.expect("* bob joined the group General")
    bob.send("public General over tls")
    alice.expect("[public group General from bob] over tls")
    alice.send("public General " + "é" * 2000)  # 4 kB: two TLS records, one frame
    bob.expect("[public group General from alice] " + "é" * 2000)
    assert metric(server, 'chatsrv_connections_active{transport="wss"}') == 1
    assert metric(server, 'chatsrv_connections_active{transport="tls"}') == 1
    assert metric(server, 'chatsrv_connections_total{transport="wss"}') == 1
    alice.send("exit")
    alice.expect("ok: bye")
    assert alice.closed_with() == 1000
    assert "transport=wss" in server.log()


# ---------------------------------------------------------------- trusted proxies


def test_behind_a_trusted_proxy_the_forwarded_address_counts(door, wsc, tmp_path):
    server = door(trusted_proxies="127.0.0.1/32", exempt="", max_per_ip=1, connect_rate=0)
    xff = [(b"X-Forwarded-For", b"198.51.100.9, 203.0.113.7")]
    alice = wsc(server, headers=xff).login("alice")
    # Same forwarded client: over --max-per-ip 1, refused with the TCP port's line.
    again = wsc(server, headers=[(b"X-Forwarded-For", b"203.0.113.7")])
    assert again.status == 101
    again.expect("error: too many connections from your address")
    assert again.closed_with() == 1008
    # Another client behind the same proxy is another address.
    wsc(server, headers=[(b"X-Forwarded-For", b"203.0.113.8")]).login("bob")
    users = {u["name"]: u for u in server.api.ok("GET", "/api/v1/users")["users"]}
    assert users["alice"]["peer"] == "203.0.113.7"
    assert users["bob"]["peer"] == "203.0.113.8"
    assert "web connection from proxy 127.0.0.1:" in server.log()
    assert metric(server, 'chatsrv_connections_rejected_total{reason="per_ip"}') == 1
    alice.send("exit")
    assert alice.closed_with() == 1000


def test_an_untrusted_peer_cannot_forge_its_address(door, wsc):
    server = door(trusted_proxies="10.0.0.0/8")
    wsc(server, headers=[(b"X-Forwarded-For", b"203.0.113.7")]).login("alice")
    users = server.api.ok("GET", "/api/v1/users")["users"]
    assert users[0]["peer"].startswith("127.0.0.1:")


# ---------------------------------------------------------------- metrics


def test_connection_metrics_have_a_transport_breakdown(door, wsc, login):
    server = door()
    login(server, "bob")
    ws = wsc(server).login("alice")
    wsc(server).expect("enter a username:")  # at the prompt: counted too
    assert metric(server, "chatsrv_connections_active") == 3  # unchanged meaning: all
    assert metric(server, 'chatsrv_connections_active{transport="tcp"}') == 1
    assert metric(server, 'chatsrv_connections_active{transport="ws"}') == 2
    assert metric(server, 'chatsrv_connections_active{transport="wss"}') == 0
    assert metric(server, "chatsrv_connections_total") == 3
    assert metric(server, 'chatsrv_connections_total{transport="ws"}') == 2
    ws.send("exit")
    assert ws.closed_with() == 1000
    wait_for(lambda: metric(server, 'chatsrv_connections_active{transport="ws"}') == 1,
             "alice's session to end")
    assert metric(server, 'chatsrv_connections_total{transport="ws"}') == 2


# ---------------------------------------------------------------- honest ends


def test_each_end_sends_its_close_frame_and_logs_its_reason(door, wsc, login):
    server = door()
    bob = login(server, "bob")
    alice = wsc(server).login("alice")
    alice.send("exit")
    alice.expect("ok: bye")
    assert alice.closed_with() == 1000
    kicked = wsc(server).login("kim")
    assert server.api.ok("POST", "/api/v1/users/kim/kick")
    kicked.expect("* disconnected by an administrator")
    event = kicked.event()
    assert isinstance(event, CloseConnection)
    assert (event.code, event.reason) == (1008, "disconnected by an administrator")
    binary = wsc(server).login("bin")
    binary.sock.sendall(binary.ws.send(Message(data=b"\x00")))
    assert binary.closed_with() == 1003
    closer = wsc(server).login("cal")
    closer.sock.sendall(closer.ws.send(CloseConnection(code=1000)))
    assert closer.closed_with() == 1000
    bob.sync()
    wait_for(lambda: len(disconnects(server)) == 4, "four disconnects logged")
    assert disconnects(server) == ["exit", "kicked", "error", "eof"]
    staying = wsc(server).login("stay")
    server.proc.send_signal(signal.SIGTERM)
    staying.expect("* server shutting down")
    event = staying.event()
    assert isinstance(event, CloseConnection)
    assert (event.code, event.reason) == (1001, "server shutting down")
    assert server.proc.wait(20) == 0


def test_a_replaced_session_closes_with_1000(door, wsc):
    server = door(accounts="optional")
    first = wsc(server).login("ann")
    first.send("register correct-horse-battery")
    first.expect("ok: registered ann")
    second = wsc(server)
    second.expect("enter a username:")
    second.send("ann correct-horse-battery")
    second.expect("connected! welcome ann", "you joined the group General")
    first.expect("* disconnected: logged in from another connection")
    event = first.event()
    assert isinstance(event, CloseConnection)
    assert event.code == 1000
    wait_for(lambda: "replaced" in disconnects(server), "the replaced session's end")


def test_a_websocket_over_its_send_queue_gets_1008_after_its_frames(door, wsc, login):
    server = door(sendq=65536, shutdown_grace=30)
    reader = wsc(server).login("slow")
    talker = login(server, "talker")
    reader.expect("* talker joined the group General")
    text = "x" * 1000
    talker.send("".join(f"public General {text}\n" for _ in range(8000)))  # 8 MB
    talker.read_until(lambda line: line == "* slow left the group General")
    # The reader reads only now: the kernel buffers held a few MB, the rest overflowed.
    # Every frame it is sent is whole: deliveries, then the close frame.
    got = ""
    while True:
        event = reader.event()
        if isinstance(event, CloseConnection):
            assert (event.code, event.reason) == (1008, "send queue full")
            break
        got += event.data  # wsproto hands a frame over in pieces as they arrive
        if event.message_finished:
            assert got == f"[public group General from talker] {text}"
            got = ""
    assert got == ""
    wait_for(lambda: "sendq" in disconnects(server), "the slow reader's sendq end")


def test_a_max_line_reload_reaches_open_websockets(door, wsc, tmp_path):
    path = tmp_path / "chatsrv.toml"
    path.write_text("max_line = 64\n")
    server = door(config=path)
    alice = wsc(server).login("alice")
    path.write_text("max_line = 256\n")
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload: changed max_line: 64 -> 256" in server.log(), "the reload")
    alice.send("public General " + "y" * 150)  # 165 bytes: over 64, within 256
    alice.send("ping")
    alice.expect("ok: pong")
    alice.send("public General " + "y" * 300)
    assert alice.closed_with() == 1009


# ---------------------------------------------------------------- HTTP edge cases


@pytest.mark.parametrize("request_head", [
    b"garbage\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",  # over 8 KiB
])
def test_a_malformed_request_head_gets_400(door, request_head):
    server = door()
    reply = raw_http(server.web_port, request_head)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert reply.endswith(b"\r\n\r\nerror: bad request\n")


def test_head_answers_like_get_without_a_body(door):
    server = door()
    head = raw_http(server.web_port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    get = raw_http(server.web_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head_part, body = get.split(b"\r\n\r\n", 1)
    assert head == head_part + b"\r\n\r\n"
    assert f"Content-Length: {len(body)}\r\n".encode() in head
    assert body.startswith(b"<!")


def test_a_request_to_ws_that_is_not_a_handshake_gets_400(door):
    server = door()
    reply = raw_http(server.web_port, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert reply.endswith(b"error: not a WebSocket handshake\n")


def test_the_page_names_its_icon_and_the_server_has_it(door):
    """No 404 in the browser's console: the page's icon and /favicon.ico are served."""
    server = door()
    page = raw_http(server.web_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b'<link rel="icon" href="favicon.svg"' in page
    for path in (b"/favicon.svg", b"/favicon.ico"):
        reply = raw_http(server.web_port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Type: image/svg+xml\r\n" in reply and reply.endswith(b"</svg>\n")
