"""Shared test helpers: a real chatsrv process on an ephemeral port, and a line client.

`make_server(**options)` starts `python -m chatsrv serve --port 0 ...` with the
options given (underscores become dashes), waits for its `listening on` log
line, and stops it at the end of the test. `connect(server)` opens a raw TCP
client; `login(server, name)` also answers the prompt and reads the welcome.
`http_server(**options)` is a server with its HTTP endpoint on (a free port,
retried if another process takes it first) and `server.api` a JSON client.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

# Servers a test starts by hand (not with start_server) must not all bind the
# web port's default, 8080: parallel tests would collide.
os.environ["CHATSRV_WEB_PORT"] = "0"

LISTENING = re.compile(r"listening on (\S+):(\d+)")
HTTP_ON = re.compile(r"http on (http://\S+:\d+)")


class RunningServer:
    def __init__(self, proc: subprocess.Popen, log_path: Path, host: str, port: int) -> None:
        self.proc = proc
        self.log_path = log_path
        self.host = host
        self.port = port
        match = HTTP_ON.search(log_path.read_text(errors="replace"))
        self.http_url: str | None = match.group(1) if match else None
        self.api: Api | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(tmp_path: Path, **options) -> RunningServer:
    """Start a server process; options are `chatsrv serve` flags as keywords."""
    opts = {"host": "127.0.0.1", "port": 0, "http_port": 0, "web_port": 0,
            "data_dir": tmp_path / "data"}
    opts.update(options)
    args = [sys.executable, "-m", "chatsrv", "serve"]
    for key, value in opts.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    log_path = tmp_path / f"server-{time.monotonic_ns()}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSRV_")}
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return RunningServer(proc, log_path, match.group(1), int(match.group(2)))
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{log_path.read_text()}")
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"server did not start:\n{log_path.read_text()}")


def wait_for(condition, what: str, limit: float = 20.0) -> None:
    """Poll `condition` until it holds (a barrier instead of a fixed sleep); fail
    after `limit` seconds, a bound for a broken server, not a timing assertion."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """JSON over HTTP to a server's endpoint: `call` returns (status, decoded body)."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token

    def call(self, method: str, path: str, body=None, *, token: str | None = "",
             raw: bytes | None = None, headers: dict | None = None) -> tuple[int, object]:
        token = self.token if token == "" else token
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.url + path, data, hdrs, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, payload, ctype = response.status, response.read(), response.headers
        except urllib.error.HTTPError as err:
            status, payload, ctype = err.code, err.read(), err.headers
        if ctype.get("Content-Type", "").startswith("application/json"):
            return status, json.loads(payload)
        return status, payload.decode()

    def get(self, path: str, **kw):
        return self.call("GET", path, **kw)

    def post(self, path: str, body=None, **kw):
        return self.call("POST", path, body if body is not None else {}, **kw)

    def ok(self, method: str, path: str, body=None):
        """The body of a call that must succeed (2xx)."""
        status, payload = self.call(method, path, body)
        assert 200 <= status < 300, f"{method} {path}: {status} {payload}"
        return payload

    def metrics(self) -> str:
        status, text = self.call("GET", "/metrics", token=None)
        assert status == 200
        return text


def start_http_server(tmp_path: Path, **options) -> RunningServer:
    """A server with `--http-port` on a free port; retried when the port gets taken."""
    for attempt in range(5):
        try:
            server = start_server(tmp_path, http_port=free_port(), **options)
        except RuntimeError as err:
            if "in use" in str(err) and attempt < 4:
                continue
            raise
        token = options.get("admin_token")
        if token is None:
            token = (Path(options.get("data_dir", tmp_path / "data")) / "admin.token").read_text()
        server.api = Api(server.http_url, token.strip())
        return server
    raise AssertionError("unreachable")


class Client:
    """A raw protocol client: send lines, read lines with a timeout."""

    def __init__(self, host: str, port: int, timeout: float = 10.0, sock=None) -> None:
        self.sock = sock or socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.name: str | None = None

    def send(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else (line + "\n").encode()
        self.sock.sendall(data)

    def read_line(self) -> str:
        """The next server line without its LF; raises EOFError when the server closed."""
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"server closed; pending {self.buf!r}")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def expect(self, *lines: str) -> None:
        for want in lines:
            got = self.read_line()
            assert got == want, f"expected {want!r}, got {got!r}"

    def request(self, line: str) -> str:
        self.send(line)
        return self.read_line()

    def read_until(self, predicate, limit: int = 100000) -> list[str]:
        seen = []
        for _ in range(limit):
            line = self.read_line()
            seen.append(line)
            if predicate(line):
                return seen
        raise AssertionError(f"no matching line in {seen[-5:]}")

    def sync(self) -> None:
        """Wait until every earlier reply has arrived (a ping's pong comes after them)."""
        self.send("ping")
        self.read_until(lambda line: line == "ok: pong")

    def no_line(self, wait: float = 0.3) -> None:
        """Assert the server sends nothing within `wait` seconds."""
        self.sock.settimeout(wait)
        try:
            data = self.buf or self.sock.recv(65536)
        except TimeoutError:
            data = b""
        finally:
            self.sock.settimeout(10.0)
        assert not data, f"unexpected {data!r}"

    def closed(self, wait: float = 5.0) -> bool:
        """True when the server closes the connection within `wait` (after any lines)."""
        self.sock.settimeout(wait)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except (TimeoutError, OSError):
            return False
        finally:
            self.sock.settimeout(10.0)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _servers(tmp_path: Path, start):
    """A factory fixture's body: servers started by `start`, all killed afterwards."""
    servers: list[RunningServer] = []

    def factory(**options) -> RunningServer:
        server = start(tmp_path, **options)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop(signal.SIGKILL)


@pytest.fixture
def make_server(tmp_path):
    yield from _servers(tmp_path, start_server)


@pytest.fixture
def make_http_server(tmp_path):
    yield from _servers(tmp_path, start_http_server)


@pytest.fixture
def http_server(make_http_server) -> RunningServer:
    return make_http_server(rate_limit=0)


@pytest.fixture
def server(make_server) -> RunningServer:
    return make_server(rate_limit=0)


@pytest.fixture
def connect():
    clients: list[Client] = []

    def factory(server: RunningServer, **kw) -> Client:
        client = Client(server.host, server.port, **kw)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


@pytest.fixture
def login(connect):
    """login(server, name) -> a Client past the welcome and General join lines."""

    def factory(server: RunningServer, name: str) -> Client:
        client = connect(server)
        client.expect("enter a username:")
        client.send(name)
        client.expect(f"connected! welcome {name}", "you joined the group General")
        client.name = name
        return client

    return factory


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost, made with the openssl CLI."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def stall_shutdown(server: RunningServer, login) -> None:
    """SIGTERM a server that has a drain to do: a client that never reads holds
    about 4 MB of queued lines, so shutdown lasts the server's grace period
    (start it with shutdown_grace=3, sendq=16 << 20)."""
    stalled = login(server, "stalled")
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    talker = login(server, "talker")
    talker.send("".join(f"public General {'x' * 1000}\n" for _ in range(4000)))
    talker.sync()
    server.proc.send_signal(signal.SIGTERM)
