"""A peer that vanishes without closing is noticed within --keepalive (PROTOCOL.md
v2, "Dead peers"): the test makes one vanish for real, with an iptables rule that
drops every packet it sends on loopback (removed afterwards).

Needs root and iptables; `.ci/run` installs iptables, and with CI=true a missing
tool fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager

import pytest

IPTABLES = shutil.which("iptables")


def _usable() -> str | None:
    if IPTABLES is None:
        return "iptables is not installed"
    if os.geteuid() != 0:
        return "needs root for iptables"
    probe = subprocess.run([IPTABLES, "-w", "-L", "INPUT", "-n"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"iptables does not work here: {probe.stderr.strip()}"
    return None


PROBLEM = _usable()
if PROBLEM is not None and os.environ.get("CI") == "true":
    pytest.fail(f"CI=true: {PROBLEM}", pytrace=False)
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")


@contextmanager
def vanished(client, server_port: int):
    """Drop everything `client` sends to the server: to the server it looks like a
    laptop that went to sleep (no FIN, no RST, no ACK)."""
    port = client.sock.getsockname()[1]
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--sport", str(port), "--dport",
            str(server_port), "-j", "DROP"]
    subprocess.run([IPTABLES, "-w", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run([IPTABLES, "-w", "-D", *rule], check=True)


def listed_for(bystander, name: str, limit: float, seen: list[str]) -> float:
    """Seconds until `name` leaves `users` (polled), at most `limit`; the lines
    read on the way are added to `seen`."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        bystander.send("users")
        lines = bystander.read_until(lambda line: line.startswith("users: "))
        seen.extend(lines)
        if name not in lines[-1].split()[1:]:
            return time.monotonic() - started
        time.sleep(0.25)
    return limit


def timeouts(server) -> float:
    match = re.search(r'^chatsrv_disconnects_total\{reason="timeout"\} (\S+)$',
                      server.api.metrics(), re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.timeout(60)
def test_idle_peer_that_vanished_is_dropped(make_http_server, login):
    server = make_http_server(rate_limit=0, keepalive=5)
    laptop = login(server, "laptop")
    bob = login(server, "bob")
    with vanished(laptop, server.port):
        seen: list[str] = []
        gone_after = listed_for(bob, "laptop", 20, seen)
        print(f"idle peer listed for {gone_after:.1f} s after vanishing (--keepalive 5)")
        assert gone_after < 20, "a vanished idle peer stayed listed"
    assert "* laptop left the group General" in seen
    assert timeouts(server) == 1
    again = login(server, "laptop")  # its name was free at once
    assert again.request("ping") == "ok: pong"


@pytest.mark.timeout(60)
def test_peer_that_vanished_with_data_pending_is_dropped(make_http_server, login):
    """Data sent to it stays unacknowledged: TCP_USER_TIMEOUT ends it, not the
    ~15 minutes of retransmissions."""
    server = make_http_server(rate_limit=0, keepalive=5)
    laptop = login(server, "laptop")
    bob = login(server, "bob")
    with vanished(laptop, server.port):
        started = time.monotonic()
        while time.monotonic() - started < 2:
            bob.send("private laptop are you there?")
            time.sleep(0.1)
        gone_after = listed_for(bob, "laptop", 20, [])
        print(f"peer with pending data listed for {gone_after:.1f} s more (--keepalive 5)")
        assert gone_after < 20
    assert timeouts(server) == 1
