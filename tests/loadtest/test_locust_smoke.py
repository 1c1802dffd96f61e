"""Locust, headless, against a real server: every scenario, no failures, deliveries measured.

Locust runs as a subprocess (as operators run it): importing it here would
monkey-patch this pytest process for every other test. The fault tests put a
proxy that loses or reorders delivery lines between Locust and the real
server, to prove that a run would notice a server doing so.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
SHAPEFILE = ROOT / "loadtest" / "shape.py"
FAULTY_PROXY = Path(__file__).with_name("faulty_proxy.py")

# Without locust the test can only be skipped on a developer's machine; CI
# installs the loadtest extra (make test), so there a missing locust is an error.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None and not os.environ.get("CI"),
    reason="locust not installed (pip install -e '.[loadtest]')",
)


def run_locust(
    host: str, port: int, out: Path, *args: str, users: int | None, seconds: int | None,
    env=None, locustfile: Path = LOCUSTFILE,
):
    """Run a locustfile headless; return (exit code, stats by name, failure rows, output)."""
    prefix = out / "run"
    cmd = [
        sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
        "--host", f"tcp://{host}:{port}", "--csv", str(prefix),
        "--only-summary", "--loglevel", "WARNING", *args,
    ]
    if users is not None:
        cmd += ["-u", str(users), "-r", str(min(users, 100)), "-t", f"{seconds}s"]
    # Locust reads LOCUST_* and this project's LOADTEST_* from the environment: only the
    # test's own may count.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "LOADTEST_"))}
    proc = subprocess.run(
        cmd, cwd=ROOT, env={**base, **(env or {})},
        capture_output=True, text=True, timeout=(seconds or 20) + 60,
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
    assert float(stats["deliver private"]["Average Response Time"]) > 0
    assert "Traceback" not in server.log()


@pytest.fixture
def faulty_proxy(server, tmp_path):
    """start(*faults) runs tests/loadtest/faulty_proxy.py before the real server; yields its port."""
    procs = []

    def start(*faults: str) -> int:
        log = tmp_path / f"proxy-{len(procs)}.log"
        cmd = [sys.executable, str(FAULTY_PROXY), str(server.port), *faults]
        with log.open("wb") as out:
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
        return _wait_listening(log, procs[-1])

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_lost_delivery_fails_the_run(faulty_proxy, tmp_path):
    port = faulty_proxy("--drop-every", "15")
    code, _stats, failures, output = run_locust(
        "127.0.0.1", port, tmp_path, "ChattyUser", "PrivateUser", "LurkerUser",
        users=30, seconds=10, env={"LOADTEST_DELIVERY_TIMEOUT": "2"},
    )
    assert code != 0, output[-3000:]
    reasons = {(f["Name"], f["Error"]) for f in failures}
    assert any(name.startswith("deliver") and "missing" in err for name, err in reasons), reasons


def test_a_misordered_delivery_fails_the_run(faulty_proxy, tmp_path):
    # Private pairs: each receiver mostly hears one sender, so a swap breaks its stream.
    # Selected by tag, which also proves --tags picks whole scenarios.
    port = faulty_proxy("--swap-every", "7")
    code, stats, failures, output = run_locust(
        "127.0.0.1", port, tmp_path, "--tags", "private", users=10, seconds=5,
        env={"LOADTEST_PRIVATE_RATE": "4"},
    )
    assert code != 0, output[-3000:]
    reasons = {(f["Name"], f["Error"]) for f in failures}
    assert ("deliver private", "ChatFailure('out of order or duplicated')") in reasons, reasons
    assert count(stats, "deliver public") == 0 and count(stats, "exit") == 0  # private only


def test_account_logins_by_password_and_token(server, tmp_path):
    """The accounts scenario against a real server (--accounts optional, the default):
    each user registers, then logs in again by token and by password, 0 failures."""
    code, stats, failures, output = run_locust(
        server.host, server.port, tmp_path, "--tags", "accounts", users=6, seconds=12,
        env={"LOADTEST_CHURN_PAUSE": "0.3"},
    )
    assert failures == [] and code == 0, output[-3000:]
    assert count(stats, "register") >= 6, output[-3000:]
    assert count(stats, "login token") >= 3 and count(stats, "login password") >= 1, \
        output[-3000:]


def test_the_shape_ramps_holds_and_stops_by_itself(server, tmp_path):
    # No -t: the shape alone ends the run, after a 1 s ramp to 20 users and a 3 s hold.
    code, stats, failures, output = run_locust(
        server.host, server.port, tmp_path, "--shape-users", "20", "--shape-spawn-rate", "20",
        "--shape-hold", "3", users=None, seconds=None, locustfile=SHAPEFILE,
    )
    assert failures == [] and code == 0, output[-3000:]
    assert count(stats, "login") >= 15, output[-3000:]
    assert count(stats, "deliver public") > 0, output[-3000:]


def _wait_listening(log: Path, proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """The port the proxy prints once it listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())
        if m:
            return int(m[1])
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"faulty proxy did not start:\n{log.read_text()}")
