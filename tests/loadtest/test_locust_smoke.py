"""Locust, headless, against a real server: every scenario, no failures, deliveries measured.

Locust runs as a subprocess (as operators run it): importing it here would
monkey-patch this pytest process for every other test. The fault tests use a
tiny server that loses or reorders deliveries, to prove the smoke test would
notice a server doing so.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
FAKE_SERVER = Path(__file__).with_name("fake_server.py")

# Without locust the test can only be skipped on a developer's machine; CI
# installs the loadtest extra (make test), so there a missing locust is an error.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None and not os.environ.get("CI"),
    reason="locust not installed (pip install -e '.[loadtest]')",
)


def run_locust(host: str, port: int, out: Path, *args: str, users: int, seconds: int, env=None):
    """Run the locustfile headless; return (exit code, stats by name, failure rows, output)."""
    prefix = out / "run"
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users), "-r", str(min(users, 100)), "-t", f"{seconds}s",
        "--host", f"tcp://{host}:{port}", "--csv", str(prefix),
        "--only-summary", "--loglevel", "WARNING", *args,
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=seconds + 60,
    )
    stats = {row["Name"]: row for row in _rows(Path(f"{prefix}_stats.csv"))}
    failures = _rows(Path(f"{prefix}_failures.csv"))
    exceptions = _rows(Path(f"{prefix}_exceptions.csv"))
    return proc.returncode, stats, failures + exceptions, proc.stdout + proc.stderr


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def count(stats, name: str, column: str = "Request Count") -> int:
    return int(stats[name][column]) if name in stats else 0


def test_all_scenarios_without_failures(server, tmp_path):
    # 200 users at -u/-r: equal weights give 50 of each scenario.
    code, stats, failures, output = run_locust(
        server.host, server.port, tmp_path, users=200, seconds=10
    )
    assert failures == [], output[-3000:]
    assert code == 0, output[-3000:]
    assert count(stats, "Aggregated", "Failure Count") == 0
    assert count(stats, "deliver public") > 0, output[-3000:]
    assert count(stats, "deliver private") > 0, output[-3000:]
    assert count(stats, "login") >= 200  # 150 long sessions, churn logs in again and again
    assert count(stats, "exit") > 0  # churn completed whole sessions
    assert float(stats["deliver public"]["Average Response Time"]) > 0


@pytest.fixture
def fake_server(tmp_path):
    """Start tests/loadtest/fake_server.py with fault options; yields its port."""
    procs = []

    def start(*options: str) -> int:
        port = _free_port()
        log = (tmp_path / f"fake-{port}.log").open("wb")
        cmd = [sys.executable, str(FAKE_SERVER), str(port), *options]
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        _wait_listening(port)
        return port

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_server_dropping_deliveries_fails_the_run(fake_server, tmp_path):
    port = fake_server("--drop-every", "15")
    code, _stats, failures, output = run_locust(
        "127.0.0.1", port, tmp_path, "ChattyUser", "PrivateUser", "LurkerUser",
        users=30, seconds=7, env={"LOADTEST_DELIVERY_TIMEOUT": "2"},
    )
    assert code != 0, output[-3000:]
    reasons = {(f["Name"], f["Error"]) for f in failures}
    assert any(name.startswith("deliver") and "missing" in err for name, err in reasons), reasons


def test_a_server_reordering_deliveries_fails_the_run(fake_server, tmp_path):
    # Private pairs: each receiver mostly hears one sender, so a swap breaks its stream.
    port = fake_server("--swap-every", "7")
    code, _stats, failures, output = run_locust(
        "127.0.0.1", port, tmp_path, "PrivateUser", users=10, seconds=5,
        env={"LOADTEST_PRIVATE_RATE": "4"},
    )
    assert code != 0, output[-3000:]
    reasons = {(f["Name"], f["Error"]) for f in failures}
    assert ("deliver private", "ChatFailure('out of order or duplicated')") in reasons, reasons


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"fake server on port {port} did not start")
