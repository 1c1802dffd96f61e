"""End to end with a real Prometheus (Debian package `prometheus`): it scrapes a
test server while clients chat, and answers our queries and the dashboard's.

`.ci/run` installs the package when missing; under CI=true a missing binary is
a failure, elsewhere a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "chatsrv-dashboard.json"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} not installed (Debian package prometheus; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


class Prometheus:
    def __init__(self, binary: str, folder: Path, target: str) -> None:
        self.folder = folder
        config = folder / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: chatsrv\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.proc = None
        for _ in range(5):
            self.port = free_port()
            log = open(folder / "prometheus.log", "wb")
            self.proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT,
            )
            log.close()
            if self._wait_ready():
                return
            self.stop()
            shutil.rmtree(folder / "tsdb", ignore_errors=True)
        raise AssertionError(f"prometheus did not start:\n{self.log()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                    return True
            except OSError:
                time.sleep(0.1)
        return False

    def log(self) -> str:
        return (self.folder / "prometheus.log").read_text(errors="replace")

    def get(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:  # 400/422 carry the PromQL error as JSON
            return json.loads(err.read())

    def query(self, expr: str) -> list:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]

    def poll(self, expr: str, predicate, timeout: float = 60) -> list:
        deadline = time.monotonic() + timeout
        result = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result and predicate(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"{expr}: no satisfying answer in {timeout}s (last {result})\n"
                             f"{self.log()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def prometheus_for(tmp_path):
    binary = need("prometheus")
    started = []

    def factory(target: str) -> Prometheus:
        folder = tmp_path / f"prom{len(started)}"
        folder.mkdir()
        prom = Prometheus(binary, folder, target)
        started.append(prom)
        return prom

    yield factory
    for prom in started:
        prom.stop()


def chat_continuously(sender, receiver, stop: threading.Event) -> list[threading.Thread]:
    """The sender says something every 20 ms; the receiver keeps reading."""

    def talk():
        i = 0
        while not stop.is_set():
            sender.send(f"public General tick {i}")
            i += 1
            time.sleep(0.02)

    def listen():
        receiver.sock.settimeout(0.5)
        while not stop.is_set():
            try:
                if not receiver.sock.recv(65536):
                    return
            except OSError:
                continue

    threads = [threading.Thread(target=talk, daemon=True),
               threading.Thread(target=listen, daemon=True)]
    for t in threads:
        t.start()
    return threads


def test_prometheus_scrapes_and_answers_the_dashboard(http_server, login, prometheus_for):
    target = http_server.http_url.removeprefix("http://")
    receiver = login(http_server, "receiver")
    sender = login(http_server, "sender")
    receiver.read_line()
    prom = prometheus_for(target)
    stop = threading.Event()
    threads = chat_continuously(sender, receiver, stop)
    try:
        active = prom.poll("chatsrv_connections_active", lambda r: True)
        assert active[0]["metric"]["instance"] == target
        assert float(active[0]["value"][1]) == 2
        rate = prom.poll("sum(rate(chatsrv_deliveries_total[5s]))",
                         lambda r: float(r[0]["value"][1]) > 0)
        assert float(rate[0]["value"][1]) > 0
        prom.poll('rate(chatsrv_fanout_seconds_count[5s])', lambda r: float(r[0]["value"][1]) > 0)
        # Every query of the dashboard is valid PromQL and answered, with $instance set
        # as Grafana would from label_values(chatsrv_build_info, instance).
        values = prom.get("/api/v1/label/instance/values", **{"match[]": "chatsrv_build_info"})
        assert values["data"] == [target]
        empty = []
        for expr in dashboard_queries():
            concrete = (expr.replace("$instance", target)
                        .replace("$__rate_interval", "5s"))
            if not prom.query(concrete):
                empty.append(expr)
        # Only the rates of things that did not happen (rejections) may be empty.
        assert all("rejected" in e for e in empty), empty
    finally:
        stop.set()
        for t in threads:
            t.join(5)


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_shipped_prometheus_config_is_valid():
    promtool = need("promtool")
    result = subprocess.run([promtool, "check", "config",
                             str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
