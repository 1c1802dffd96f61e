"""The /metrics collector on its own: a hand-made `Scrape` in, Prometheus text out.

The collector never sees the server (docs/architecture.md, "The adapters"), so
what it renders from each field is checked here without a socket; the
integration tier (tests/integration/test_metrics.py) checks what a real server
puts in the scrape."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from chatsrv.core.histogram import Histogram
from chatsrv.core.hub import Stats
from chatsrv.metrics import ChatCollector, ClusterScrape, Scrape, StoreScrape
from chatsrv.store.writer import WriterStats


def _scrape(**changes) -> Scrape:
    chat = Stats(messages_public=7, messages_private=3, deliveries_public=70,
                 deliveries_private=3, notices=5, logins=4, announcements=2,
                 commands={"public": 7, "unknown": 1})
    chat.fanout.observe(0.0002)
    fields = dict(
        connections_total=11, connections_active=6, connections_unauthenticated=2,
        rejected={"rate": 9}, disconnects={"kicked": 1, "eof": 4}, limited_addresses=3,
        logins={"guest": 4, "failed": 2, "refused": 1}, accounts=8,
        sendq_bytes=100, received_bytes=2000, sent_bytes=30000, users=4, groups=5, chat=chat,
        history_bytes=4096, history_budget=1 << 20, started_at=1_700_000_000.0,
        stopping=False, max_clients=10_000, http_closed=None, cluster=None, store=None,
    )
    fields.update(changes)
    return Scrape(**fields)


def _render(scrape: Scrape) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ChatCollector(lambda: scrape))
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _value(samples, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_every_field_lands_in_its_metric():
    samples = _render(_scrape())
    assert _value(samples, "chatsrv_connections_total") == 11
    assert _value(samples, "chatsrv_connections_active") == 6
    assert _value(samples, "chatsrv_connections_unauthenticated") == 2
    assert _value(samples, "chatsrv_limited_addresses") == 3
    assert _value(samples, "chatsrv_users_active") == 4
    assert _value(samples, "chatsrv_groups") == 5
    assert _value(samples, "chatsrv_messages_total", kind="public") == 7
    assert _value(samples, "chatsrv_deliveries_total", kind="public") == 70
    assert _value(samples, "chatsrv_commands_total", command="unknown") == 1
    assert _value(samples, "chatsrv_logins_total", result="guest") == 4
    assert _value(samples, "chatsrv_logins_total", result="failed") == 2
    assert _value(samples, "chatsrv_logins_total", result="refused") == 1
    assert _value(samples, "chatsrv_logins_total", result="token") == 0  # every result shown
    assert _value(samples, "chatsrv_accounts") == 8
    assert _value(samples, "chatsrv_notices_total") == 5
    assert _value(samples, "chatsrv_announcements_total") == 2
    assert _value(samples, "chatsrv_sendq_bytes") == 100
    assert _value(samples, "chatsrv_received_bytes_total") == 2000
    assert _value(samples, "chatsrv_sent_bytes_total") == 30000
    assert _value(samples, "chatsrv_history_memory_bytes") == 4096
    assert _value(samples, "chatsrv_history_memory_budget_bytes") == 1 << 20
    assert _value(samples, "chatsrv_start_time_seconds") == 1_700_000_000.0
    assert _value(samples, "chatsrv_shutting_down") == 0
    assert _value(samples, "chatsrv_max_clients") == 10_000
    assert _value(samples, "chatsrv_fanout_seconds_count") == 1
    assert _value(samples, "chatsrv_login_seconds_count") == 0


def test_every_reason_is_exported_even_at_zero():
    samples = _render(_scrape())
    assert _value(samples, "chatsrv_connections_rejected_total", reason="rate") == 9
    for reason in ("full", "unauth", "per_ip"):
        assert _value(samples, "chatsrv_connections_rejected_total", reason=reason) == 0
    assert _value(samples, "chatsrv_disconnects_total", reason="kicked") == 1
    assert _value(samples, "chatsrv_disconnects_total", reason="eof") == 4
    for reason in ("exit", "error", "sendq", "timeout", "shutdown"):
        assert _value(samples, "chatsrv_disconnects_total", reason=reason) == 0


def test_optional_parts_appear_only_when_given():
    names = {name for name, _ in _render(_scrape())}
    assert not any(n.startswith(("chatsrv_store_", "chatsrv_cluster_", "chatsrv_http_closed"))
                   for n in names)

    writer = WriterStats()
    writer.flushes, writer.messages, writer.failures = 8, 80, 1
    cluster = SimpleNamespace(published=12, batches=6, received=20, dropped=2, outages=1,
                              reaped=0)
    samples = _render(_scrape(
        stopping=True,
        http_closed={"timeout": 2, "evicted": 0},
        store=StoreScrape(stalled=True, stats=writer),
        cluster=ClusterScrape(node="n1", up=False, nodes=3, remote_users=9,
                              subscribed_groups=2, stats=cluster),
    ))
    assert _value(samples, "chatsrv_shutting_down") == 1
    assert _value(samples, "chatsrv_http_closed_total", reason="timeout") == 2
    assert _value(samples, "chatsrv_store_stalled") == 1
    assert _value(samples, "chatsrv_store_flushes_total") == 8
    assert _value(samples, "chatsrv_store_messages_written_total") == 80
    assert _value(samples, "chatsrv_store_failures_total") == 1
    assert _value(samples, "chatsrv_cluster_node_info", node="n1") == 1
    assert _value(samples, "chatsrv_cluster_up") == 0
    assert _value(samples, "chatsrv_cluster_nodes") == 3
    assert _value(samples, "chatsrv_cluster_remote_users") == 9
    assert _value(samples, "chatsrv_cluster_subscribed_groups") == 2
    assert _value(samples, "chatsrv_cluster_published_total") == 12
    assert _value(samples, "chatsrv_cluster_dropped_total") == 2


def test_histogram_buckets_are_cumulative():
    chat = _scrape().chat
    hist = Histogram((0.001, 0.01))
    for seconds in (0.0005, 0.005, 0.5):
        hist.observe(seconds)
    samples = _render(_scrape(chat=Stats(commands=dict(chat.commands), login=hist)))
    assert _value(samples, "chatsrv_login_seconds_bucket", le="0.001") == 1
    assert _value(samples, "chatsrv_login_seconds_bucket", le="0.01") == 2
    assert _value(samples, "chatsrv_login_seconds_bucket", le="+Inf") == 3
    assert _value(samples, "chatsrv_login_seconds_sum") == 0.5055
