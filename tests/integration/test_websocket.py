"""The WebSocket door (PROTOCOL.md v2, "WebSocket door and the browser client")
over real sockets, with wsproto as the client: the page, the handshake and its
Origin check, login and chat beside a TCP user, and the close codes."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from conftest import RunningServer, free_port, start_server
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)


def start_web_server(tmp_path, **options) -> RunningServer:
    """A server with --web-port on a free port; retried when the port gets taken."""
    for attempt in range(5):
        port = free_port()
        try:
            server = start_server(tmp_path, web_port=port, **options)
        except RuntimeError as err:
            if "in use" in str(err) and attempt < 4:
                continue
            raise
        server.web_port = port
        return server
    raise AssertionError("unreachable")


@pytest.fixture
def web(tmp_path):
    servers: list[RunningServer] = []

    def factory(**options) -> RunningServer:
        options.setdefault("rate_limit", 0)
        server = start_web_server(tmp_path, **options)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


class WsClient:
    """A blocking WebSocket client: `lines` are the text frames received."""

    def __init__(self, port: int, origin: str | None = None, *, tls=None,
                 headers: list[tuple[bytes, bytes]] | None = None,
                 source: str | None = None) -> None:
        """`tls`: an ssl.SSLContext (wss); `headers`: more handshake headers;
        `source`: the local address to connect from (127.0.0.2: another host)."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                             source_address=(source, 0) if source else None)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list = []
        self.text = ""
        headers = list(headers or []) + ([(b"Origin", origin.encode())] if origin else [])
        self.sock.sendall(self.ws.send(Request(host=f"127.0.0.1:{port}", target="/ws",
                                               extra_headers=headers)))
        self.status = None
        self.reply = b""
        while self.status is None:
            for event in self._events():
                if isinstance(event, AcceptConnection):
                    self.status = 101
                elif isinstance(event, RejectConnection):
                    self.status = event.status_code
                elif isinstance(event, RejectData):
                    self.reply += event.data
                else:  # frames that came in the same read as the 101
                    self.pending.append(event)

    def _events(self) -> list:
        """Events already parsed (frames that came with the 101), else the next read's."""
        events = list(self.ws.events())
        if events:
            return events
        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)
        return list(self.ws.events())

    def event(self):
        """The next event that is not a Ping (pings are answered)."""
        while not self.pending:
            for event in self._events():
                if isinstance(event, Ping):
                    self.sock.sendall(self.ws.send(event.response()))
                else:
                    self.pending.append(event)
        return self.pending.pop(0)

    def line(self) -> str:
        event = self.event()
        assert isinstance(event, TextMessage), event
        assert event.message_finished  # one line per frame
        return event.data

    def expect(self, *lines: str) -> None:
        for want in lines:
            assert self.line() == want

    def send(self, text: str) -> None:
        self.sock.sendall(self.ws.send(Message(data=text)))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def closed_with(self) -> int:
        """Read until the server's close frame; its code."""
        while True:
            event = self.event()
            if isinstance(event, CloseConnection):
                return event.code

    def login(self, name: str) -> WsClient:
        self.expect("enter a username:")
        self.send(name)
        self.expect(f"connected! welcome {name}", "you joined the group General")
        return self

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def ws_clients():
    clients: list[WsClient] = []

    def factory(server: RunningServer, **kw) -> WsClient:
        client = WsClient(server.web_port, **kw)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


def test_the_page_is_served_with_its_security_headers(web):
    server = web()
    for path, ctype in (("/", "text/html"), ("/app.js", "text/javascript"),
                        ("/style.css", "text/css")):
        with urllib.request.urlopen(f"http://127.0.0.1:{server.web_port}{path}",
                                    timeout=10) as response:
            body = response.read()
            assert response.status == 200
            assert response.headers["Content-Type"].startswith(ctype)
            assert response.headers["Content-Security-Policy"] == "default-src 'self'"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert body
    assert f"web client on http://127.0.0.1:{server.web_port}/" in server.log()


def test_unknown_paths_get_404(web):
    server = web()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{server.web_port}/nope", timeout=10)
    assert err.value.code == 404


def test_the_client_files_stay_small():
    from importlib import resources
    files = resources.files("chatsrv.web")
    total = sum(files.joinpath(n).stat().st_size if hasattr(files.joinpath(n), "stat")
                else len(files.joinpath(n).read_bytes())
                for n in ("index.html", "app.js", "style.css"))
    assert total < 100 * 1024


def test_a_websocket_user_and_a_tcp_user_chat(web, ws_clients, login):
    server = web()
    alice = ws_clients(server).login("alice")
    bob = login(server, "bob")
    alice.expect("* bob joined the group General")
    bob.send("public General hello from tcp")
    alice.expect("[public group General from bob] hello from tcp")
    alice.send("public General hi from the browser <img src=x onerror=alert(1)>")
    bob.expect("[public group General from alice] hi from the browser <img src=x onerror=alert(1)>")
    alice.send("private bob psst\nping")  # one frame, two lines
    bob.expect("[private from alice] psst")
    alice.expect("ok: pong")
    bob.send("private alice back")
    alice.expect("[private from bob] back")
    alice.send("exit")
    alice.expect("ok: bye")
    bob.expect("* alice left the group General")


def test_the_page_origin_and_listed_origins_may_connect(web, ws_clients):
    server = web(web_origins="https://chat.example.org/")
    own = f"http://127.0.0.1:{server.web_port}"
    for origin in (own, "https://chat.example.org", None):
        client = ws_clients(server, origin=origin)
        assert client.status == 101
        client.expect("enter a username:")


def test_a_foreign_origin_gets_403(web, ws_clients):
    server = web()
    client = ws_clients(server, origin="https://evil.example")
    assert client.status == 403
    assert b"origin not allowed" in client.reply


def test_a_binary_frame_closes_with_1003(web, ws_clients):
    server = web()
    client = ws_clients(server).login("alice")
    client.sock.sendall(client.ws.send(Message(data=b"\x00\x01")))
    assert client.closed_with() == 1003


def test_a_binary_frame_at_the_prompt_closes_with_1003(web, ws_clients):
    server = web()
    client = ws_clients(server)
    client.expect("enter a username:")
    client.sock.sendall(client.ws.send(Message(data=b"alice")))
    assert client.closed_with() == 1003


def test_a_message_over_max_line_closes_with_1009(web, ws_clients, login):
    server = web(max_line=64)
    client = ws_clients(server).login("alice")
    client.send("public General " + "x" * 100)
    assert client.closed_with() == 1009
    bob = login(server, "bob")  # the server is fine, and alice is gone
    bob.send("users")
    bob.expect("users: bob")


def _masked_text_frame(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + body


def test_invalid_utf8_closes_with_1007(web, ws_clients):
    server = web()
    client = ws_clients(server).login("alice")
    client.send_raw(_masked_text_frame(b"ping \xff\xfe"))
    assert client.closed_with() == 1007


def test_the_server_answers_pings_and_a_client_close(web, ws_clients):
    server = web()
    client = ws_clients(server).login("alice")
    client.sock.sendall(client.ws.send(Ping(payload=b"are you there")))
    event = client.event()
    assert event.__class__.__name__ == "Pong" and event.payload == b"are you there"
    client.sock.sendall(client.ws.send(CloseConnection(code=1000)))
    assert client.closed_with() == 1000
    assert client.ws.state is ConnectionState.CLOSED


def test_a_delivery_is_framed_once_for_the_whole_fan_out():
    from chatsrv.net.websocket import frame_line, frame_lines
    line = b"[public group General from bob] hi\n"
    assert frame_line(line) == b"\x81" + bytes((len(line) - 1,)) + line[:-1]
    assert frame_line(line) is frame_line(line)  # cached
    other = b"[public group General from bob] ho\n"
    first = frame_line(line)
    frame_line(other)
    assert frame_line(line) is first  # a queue of several deliveries still hits
    long = b"x" * 70000 + b"\n"
    assert frame_line(long)[:2] == b"\x81\x7f" and frame_line(long).endswith(b"x")
    assert frame_line(b"one\ntwo\n") == frame_lines(b"one\ntwo\n") == b"\x81\x03one\x81\x03two"


def test_websocket_users_each_get_every_line_as_its_own_frame(web, ws_clients, login):
    server = web()
    bob = login(server, "bob")
    readers = [ws_clients(server).login(name) for name in ("ann", "cid", "dee")]
    for n in range(3):
        bob.send(f"public General message {n}")
    for reader in readers:
        got = []
        while len(got) < 3:
            line = reader.line()
            if not line.startswith("* "):  # join notices of the later readers
                got.append(line)
        assert got == [f"[public group General from bob] message {n}" for n in range(3)]
    readers[0].send("history General 3")
    lines = [readers[0].line() for _ in range(4)]
    assert [line.split("] ", 1)[1] for line in lines[:3]] == [f"message {n}" for n in range(3)]
    assert lines[3] == "ok: end of history General"


def test_a_fragmented_message_is_one_line_and_its_total_counts(web, ws_clients, login):
    server = web(max_line=64)
    alice = ws_clients(server).login("alice")
    bob = login(server, "bob")
    alice.expect("* bob joined the group General")
    alice.sock.sendall(alice.ws.send(Message(data="public General he", message_finished=False)))
    bob.send("ping")
    bob.expect("ok: pong")  # alice's half line reached nobody meanwhile
    alice.sock.sendall(alice.ws.send(Message(data="llo\nping", message_finished=True)))
    bob.expect("[public group General from alice] hello")
    alice.expect("ok: pong")
    for _ in range(3):  # 3 fragments of 30 bytes: each fits, the message does not
        alice.sock.sendall(alice.ws.send(Message(data="x" * 30, message_finished=False)))
    assert alice.closed_with() == 1009


def test_websocket_connections_have_their_own_gauge(web, ws_clients, login):
    from conftest import wait_for
    server = web(http_port=free_port())
    login(server, "bob")
    ws_clients(server).login("alice")

    def gauge(name: str) -> float:
        with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise AssertionError(f"{name} missing")

    assert gauge("chatsrv_websocket_connections_active") == 1
    assert gauge("chatsrv_connections_active") == 2
    ws_clients(server)  # a second one, still at the prompt, counts too
    wait_for(lambda: gauge("chatsrv_websocket_connections_active") == 2, "the second one")
