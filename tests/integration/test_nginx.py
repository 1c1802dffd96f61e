"""deploy/nginx/chatsrv.conf in front of a real server: nginx (Debian's, started
as the test user with a temporary prefix) terminates TLS and proxies the web port;
a WebSocket client chats through it, and chatsrv, trusting 127.0.0.1/32, sees
the client's own address (127.0.0.2, the client's source address) from
X-Forwarded-For. With CI=true a missing nginx is a failure, never a skip."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
from conftest import Api, free_port, wait_for
from test_websocket import WsClient, start_web_server

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "nginx-test-admin-token"


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (apt-get install nginx; .ci/run does)")
        pytest.skip("nginx is not installed")
    return found


def nginx_config(folder: Path, listen: int, upstream: int, cert: Path, key: Path) -> Path:
    """The shipped example with this test's ports and certificate, in an http block
    whose files all live in `folder`."""
    site = (ROOT / "deploy" / "nginx" / "chatsrv.conf").read_text()
    site, n = re.subn(r"listen 443 ssl;", f"listen 127.0.0.1:{listen} ssl;", site)
    assert n == 1
    site, n = re.subn(r"listen 80;", f"listen 127.0.0.1:{free_port()};", site)
    assert n == 1
    site, n = re.subn(r"server 127\.0\.0\.1:8080;", f"server 127.0.0.1:{upstream};", site)
    assert n == 1
    site = re.sub(r"ssl_certificate +\S+;", f"ssl_certificate {cert};", site)
    site = re.sub(r"ssl_certificate_key +\S+;", f"ssl_certificate_key {key};", site)
    (folder / "chatsrv.conf").write_text(site)
    temp = "\n".join(f"    {kind}_temp_path {folder / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = folder / "nginx.conf"
    main.write_text(f"""pid {folder / "nginx.pid"};
error_log {folder / "error.log"} info;
events {{ worker_connections 64; }}
http {{
    access_log {folder / "access.log"};
{temp}
    include {folder / "chatsrv.conf"};
}}
""")
    return main


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def nginx_in_front(tmp_path, tls_files):
    binary = nginx_binary()
    cert, key = tls_files
    server = start_web_server(tmp_path, rate_limit=0, trusted_proxies="127.0.0.1/32",
                              http_port=free_port(), admin_token=TOKEN)
    server.api = Api(server.http_url, TOKEN)
    folder = tmp_path / "nginx"
    folder.mkdir()
    port = free_port()
    config = nginx_config(folder, port, server.web_port, cert, key)
    proc = subprocess.Popen([binary, "-p", str(folder), "-c", str(config), "-e",
                             str(folder / "error.log"), "-g", "daemon off;"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: listening(port) or proc.poll() is not None, "nginx to listen")
        if proc.poll() is not None:
            raise AssertionError(f"nginx exited {proc.returncode}: "
                                 f"{proc.stdout.read().decode()}"
                                 f"{(folder / 'error.log').read_text(errors='replace')}")
        yield server, port, ssl.create_default_context(cafile=str(cert))
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        server.stop(signal.SIGKILL)


def test_a_websocket_through_nginx_chats_and_shows_its_own_address(nginx_in_front, login):
    server, port, ctx = nginx_in_front
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/", timeout=10,
                                context=ctx) as response:
        assert response.status == 200
        assert response.headers["Content-Security-Policy"] == "default-src 'self'"
    # The page's own origin is nginx's https://host:port (X-Forwarded-Proto, Host).
    alice = WsClient(port, origin=f"https://127.0.0.1:{port}", tls=ctx, source="127.0.0.2")
    try:
        assert alice.status == 101
        alice.login("alice")
        bob = login(server, "bob")
        alice.expect("* bob joined the group General")
        bob.send("public General through nginx?")
        alice.expect("[public group General from bob] through nginx?")
        alice.send("private bob yes")
        bob.expect("[private from alice] yes")
        users = {u["name"]: u for u in server.api.ok("GET", "/api/v1/users")["users"]}
        assert users["alice"]["peer"] == "127.0.0.2"  # not nginx's 127.0.0.1:port
        assert re.search(r"web connection from proxy 127\.0\.0\.1:\d+ for client 127\.0\.0\.2",
                         server.log())
        alice.send("exit")
        alice.expect("ok: bye")
        assert alice.closed_with() == 1000  # the close frame passed through nginx
    finally:
        alice.close()
