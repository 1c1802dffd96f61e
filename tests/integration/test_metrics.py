"""/metrics of a real server: every PROTOCOL.md metric, exact moves after known
traffic, and the dashboard asks only for metrics the server exports."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "chatsrv-dashboard.json"
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created", "_info")


def scrape(server) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from one scrape."""
    samples = {}
    for family in text_string_to_metric_families(server.api.metrics()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_every_protocol_metric_exists_with_its_labels(http_server, login):
    login(http_server, "alice")
    samples = scrape(http_server)
    names = {name for name, _ in samples}
    for name in ("chatsrv_connections_total", "chatsrv_connections_active",
                 "chatsrv_users_active", "chatsrv_groups", "chatsrv_sendq_bytes",
                 "chatsrv_received_bytes_total", "chatsrv_sent_bytes_total",
                 "chatsrv_fanout_seconds_bucket", "chatsrv_login_seconds_count",
                 "process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "python_info"):
        assert name in names, name
    for kind in ("public", "private"):
        assert value(samples, "chatsrv_messages_total", kind=kind) == 0
        assert value(samples, "chatsrv_deliveries_total", kind=kind) == 0
    for reason in ("exit", "eof", "error", "sendq", "timeout", "kicked", "shutdown"):
        assert value(samples, "chatsrv_disconnects_total", reason=reason) == 0
    for reason in ("full", "unauth", "per_ip", "rate"):
        assert value(samples, "chatsrv_connections_rejected_total", reason=reason) == 0
    assert value(samples, "chatsrv_connections_unauthenticated") == 0
    assert value(samples, "chatsrv_limited_addresses") == 0  # loopback is exempt
    for command in ("create", "join", "leave", "groups", "users", "public", "private", "exit",
                    "history", "help", "ping", "unknown"):
        assert value(samples, "chatsrv_commands_total", command=command) == 0
    assert value(samples, "chatsrv_users_active") == 1
    assert value(samples, "chatsrv_login_seconds_count") == 1


def test_counters_move_by_exactly_the_traffic(http_server, login, connect):
    api = http_server.api
    alice = login(http_server, "alice")
    bob = login(http_server, "bob")
    carol = login(http_server, "carol")
    alice.read_until(lambda line: line == "* carol joined the group General")
    bob.read_line()
    before = scrape(http_server)
    # 5 public messages to General (3 members: 2 deliveries each), 3 to a group of 2.
    for i in range(5):
        alice.send(f"public General m{i}")
    assert alice.request("create dev") == "ok: created group dev"
    assert alice.request("join dev") == "ok: joined group dev"
    assert bob.read_until(lambda line: line == "[public group General from alice] m4")
    assert bob.request("join dev") == "ok: joined group dev"
    for i in range(3):
        bob.send(f"public dev d{i}")
    bob.send("private carol psst")
    bob.send("private alice psst")
    bob.send("private nobody lost")  # an error: counted as a command, not a message
    bob.send("frobnicate")
    bob.send("public")  # usage error, still a `public` command
    bob.send("   ")  # blank: not a command
    bob.sync()
    alice.read_until(lambda line: line == "[private from bob] psst")
    carol.send("exit")
    carol.read_until(lambda line: line == "ok: bye")
    late = connect(http_server)  # at the prompt only: a connection, not a user
    late.expect("enter a username:")
    api.ok("POST", "/api/v1/announce", {"text": "hello"})
    api.ok("POST", "/api/v1/users/alice/kick")
    alice.read_until(lambda line: line == "* disconnected by an administrator")
    assert alice.closed()
    bob.sync()
    after = scrape(http_server)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("chatsrv_messages_total", kind="public") == 8
    assert delta("chatsrv_messages_total", kind="private") == 2
    assert delta("chatsrv_deliveries_total", kind="public") == 5 * 2 + 3 * 1
    assert delta("chatsrv_deliveries_total", kind="private") == 2
    assert delta("chatsrv_commands_total", command="public") == 5 + 3 + 1
    assert delta("chatsrv_commands_total", command="private") == 3
    assert delta("chatsrv_commands_total", command="unknown") == 1
    assert delta("chatsrv_commands_total", command="create") == 1
    assert delta("chatsrv_commands_total", command="join") == 2
    assert delta("chatsrv_commands_total", command="ping") == 2  # bob's two syncs
    assert delta("chatsrv_commands_total", command="exit") == 1
    assert delta("chatsrv_disconnects_total", reason="exit") == 1
    assert delta("chatsrv_disconnects_total", reason="kicked") == 1
    assert delta("chatsrv_disconnects_total", reason="eof") == 0
    assert delta("chatsrv_connections_total") == 1
    assert delta("chatsrv_announcements_total") == 1
    assert delta("chatsrv_fanout_seconds_count") == 8  # one per public message delivered
    assert delta("chatsrv_fanout_seconds_sum") > 0
    assert delta("chatsrv_login_seconds_count") == 0
    assert value(after, "chatsrv_users_active") == 1  # bob
    assert value(after, "chatsrv_connections_active") == 2  # bob and the one at the prompt
    assert value(after, "chatsrv_groups") == 2
    assert value(after, "chatsrv_sendq_bytes") == 0
    assert delta("chatsrv_received_bytes_total") > 0
    assert delta("chatsrv_sent_bytes_total") > delta("chatsrv_received_bytes_total")
    assert value(after, 'chatsrv_fanout_seconds_bucket', le="+Inf") == value(
        after, "chatsrv_fanout_seconds_count")


def test_bytes_count_exactly(http_server, connect):
    before = scrape(http_server)
    client = connect(http_server)
    client.expect("enter a username:")
    client.send("dora")
    client.expect("connected! welcome dora", "you joined the group General")
    client.send("exit")
    client.expect("ok: bye")
    assert client.closed()
    sent = len(b"dora\nexit\n")
    received = len(b"enter a username:\nconnected! welcome dora\nyou joined the group General\n"
                   b"ok: bye\n")
    for _ in range(100):  # the disconnect is counted right after the close
        after = scrape(http_server)
        if value(after, "chatsrv_connections_active") == 0:
            break
    assert value(after, "chatsrv_received_bytes_total") - value(
        before, "chatsrv_received_bytes_total") == sent
    assert value(after, "chatsrv_sent_bytes_total") - value(
        before, "chatsrv_sent_bytes_total") == received


def test_metrics_are_gzip_and_openmetrics_capable(http_server):
    import gzip
    import urllib.request

    request = urllib.request.Request(http_server.http_url + "/metrics",
                                     headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert b"chatsrv_users_active" in gzip.decompress(response.read())


# ---------------------------------------------------------------- the dashboard


def dashboard_expressions() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"])
    return exprs


PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "time", "label_values", "le",
    "instance", "kind", "command", "reason", "result", "job", "without", "avg", "max", "min",
    "irate", "action", "transport",
}


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that are metric names (not functions or labels)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {n for n in names if n not in PROMQL_WORDS}


def test_dashboard_has_every_panel_and_the_instance_variable():
    dash = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for words in ("connections and users", "groups", "messages per second by kind",
                  "deliveries per second", "commands per second by command",
                  "disconnects by reason", "fan-out time p50 / p99", "login time p99",
                  "send queues", "cpu", "resident memory", "file descriptors",
                  "logins by result", "moderation actions per minute by action",
                  "open connections by transport",
                  "new connections per second by transport"):
        assert words in titles, words
    assert any(v["name"] == "instance" for v in dash["templating"]["list"])
    for expr in dashboard_expressions():
        if "chatsrv_build_info" not in expr or "label_values" not in expr:
            assert '$instance' in expr, expr


def test_dashboard_uses_only_exported_metrics(http_server, login):
    alice = login(http_server, "alice")
    bob = login(http_server, "bob")
    alice.read_line()
    bob.send("public General hi")
    bob.send("private alice hi")
    alice.read_until(lambda line: line == "[private from bob] hi")
    exported = set()
    for family in text_string_to_metric_families(http_server.api.metrics()):
        exported.add(family.name)
        exported.update(s.name for s in family.samples)
    used = set()
    for expr in dashboard_expressions():
        names = metric_names(expr)
        assert names, expr
        used |= names
    missing = sorted(used - exported)
    assert not missing, f"the dashboard queries metrics the server does not export: {missing}"
    assert {"chatsrv_fanout_seconds_bucket", "process_cpu_seconds_total",
            "chatsrv_deliveries_total"} <= used


def test_store_metrics_count_what_reached_the_disk(http_server, login):
    # The sqlite store (the default): every public message is written by the
    # writer thread within a flush interval; metrics show it without SQL.
    alice = login(http_server, "alice")
    before = scrape(http_server)
    assert alice.request("create ops") == "ok: created group ops"
    assert alice.request("join ops") == "ok: joined group ops"
    for i in range(7):
        alice.send(f"public ops m{i}")
    alice.sync()
    deadline = time.monotonic() + 10  # a flush interval is 50 ms; generous for a loaded CI
    while True:
        after = scrape(http_server)
        written = (value(after, "chatsrv_store_messages_written_total")
                   - value(before, "chatsrv_store_messages_written_total"))
        if written >= 7 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert written == 7
    assert value(after, "chatsrv_store_groups_created_total") - value(
        before, "chatsrv_store_groups_created_total") == 1
    assert value(after, "chatsrv_store_failures_total") == 0
    assert value(after, "chatsrv_store_flushes_total") > value(before, "chatsrv_store_flushes_total")
    assert value(after, "chatsrv_store_max_flush_seconds") >= value(
        after, "chatsrv_store_last_flush_seconds") > 0
