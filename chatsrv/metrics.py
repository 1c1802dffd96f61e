"""Prometheus metrics, read from the server's plain counters at scrape time.

Nothing here runs on the per-message path. The hub and the sessions keep plain
integers (`Hub.stats`, `Session.bytes_in`, ...) and two plain-number latency
histograms (`histogram.Histogram`); `ChatCollector.collect` turns them into
metric families when Prometheus scrapes. So a fan-out to N members costs one
integer add for the deliveries, never N calls into prometheus_client, and the
sums over sessions (send queues, bytes) are computed once per scrape.

The registry is private to the server (not prometheus_client's global one), with
the standard process (CPU, RSS, open FDs), platform and GC collectors added.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from . import __version__
from .core.histogram import Histogram

if TYPE_CHECKING:
    from .server import ChatServer

KINDS = ("public", "private")
DISCONNECT_REASONS = ("exit", "eof", "error", "sendq", "timeout", "kicked", "shutdown")
REJECT_REASONS = ("full", "unauth", "per_ip", "rate")


class ChatCollector(Collector):
    """Every chatsrv_* metric, computed from the server's state when scraped."""

    def __init__(self, server: ChatServer) -> None:
        self.server = server

    def collect(self) -> Iterator:
        server = self.server
        hub = server.hub
        stats = hub.stats
        sessions = list(server.sessions)

        yield _counter("chatsrv_connections", "TCP connections accepted (TLS handshake done).",
                       server.connections_total)
        yield _gauge("chatsrv_connections_active",
                     "Open client connections, those still at the username prompt included.",
                     len(sessions))
        yield _gauge("chatsrv_users_active", "Logged-in users.", len(hub.users))
        yield _gauge("chatsrv_groups", "Groups that exist, General included.", len(hub.groups))
        yield _labelled(CounterMetricFamily, "chatsrv_messages",
                        "Messages accepted, by kind.", "kind",
                        {"public": stats.messages_public, "private": stats.messages_private})
        yield _labelled(CounterMetricFamily, "chatsrv_deliveries",
                        "Message lines queued to receivers, by kind.", "kind",
                        {"public": stats.deliveries_public,
                         "private": stats.deliveries_private})
        yield _labelled(CounterMetricFamily, "chatsrv_commands",
                        "Non-blank lines after login, by command word (lower-cased) or "
                        "'unknown'; usage errors count too.", "command", stats.commands)
        disconnects = dict.fromkeys(DISCONNECT_REASONS, 0)
        disconnects.update(server.disconnects)
        yield _labelled(CounterMetricFamily, "chatsrv_disconnects",
                        "Sessions ended, by reason.", "reason", disconnects)
        rejected = dict.fromkeys(REJECT_REASONS, 0)
        rejected.update(server.rejected)
        yield _labelled(CounterMetricFamily, "chatsrv_connections_rejected",
                        "Connections refused before the prompt, by reason: full (--max-clients), "
                        "unauth (--max-unauth), per_ip (--max-per-ip), rate (--connect-rate).",
                        "reason", rejected)
        wsgi = server.http.wsgi if server.http is not None else None
        if wsgi is not None:
            yield _labelled(CounterMetricFamily, "chatsrv_http_closed",
                            "HTTP connections the server closed before a complete request: "
                            "timeout (--http-timeout), evicted (too many waiting).", "reason",
                            {"timeout": wsgi.timed_out, "evicted": wsgi.evicted})
        yield _gauge("chatsrv_connections_unauthenticated",
                     "Open connections not logged in yet (capped by --max-unauth).",
                     server.unauth)
        server.limits.purge()  # so the gauge shows no entry that is already due to go
        yield _gauge("chatsrv_limited_addresses",
                     "Client addresses with per-address limit state (open connections, "
                     "or a connect-rate bucket still refilling).", len(server.limits.entries))
        yield _counter("chatsrv_logins", "Successful logins.", stats.logins)
        yield _counter("chatsrv_notices", "Join/leave notice lines queued to receivers.",
                       stats.notices)
        yield _counter("chatsrv_announcements", "Administrator announcements sent.",
                       stats.announcements)
        yield _gauge("chatsrv_sendq_bytes",
                     "Bytes waiting in send queues (the kernel did not take them yet), "
                     "summed over sessions.", sum(s.qbytes for s in sessions))
        yield _counter("chatsrv_received_bytes", "Bytes read from clients.",
                       server.closed_bytes_in + sum(s.bytes_in for s in sessions))
        yield _counter("chatsrv_sent_bytes", "Bytes written to clients.",
                       server.closed_bytes_out + sum(s.bytes_out for s in sessions))
        yield _histogram("chatsrv_fanout_seconds",
                         "Time from parsing a public message to its last enqueue.", stats.fanout)
        yield _histogram("chatsrv_login_seconds",
                         "Time to handle a username line that logs in (checks, "
                         "registration, joining General with its notices).", stats.login)
        yield _gauge("chatsrv_start_time_seconds", "Start time of the server, Unix seconds.",
                     server.started_at)
        yield _gauge("chatsrv_uptime_seconds", "Seconds since the server started.",
                     time.time() - server.started_at)
        yield _gauge("chatsrv_shutting_down", "1 once shutdown has begun.",
                     1 if server.stopping else 0)
        yield _gauge("chatsrv_max_clients", "The --max-clients limit.",
                     server.config.max_clients)
        yield from _cluster(server)
        yield from _history(server)
        yield from _store(server)
        info = InfoMetricFamily("chatsrv_build", "chatsrv version and wire protocol version.")
        info.add_metric([], {"version": __version__, "protocol": "1"})
        yield info


def _history(server: ChatServer) -> Iterator:
    """History kept in memory against `--history-memory`."""
    hub = server.hub
    yield _gauge("chatsrv_history_memory_bytes", "Estimated bytes of history kept in memory "
                 "(see --history-memory).", hub.history_bytes)
    yield _gauge("chatsrv_history_memory_budget_bytes", "The --history-memory budget in bytes.",
                 hub.history_budget)


def _store(server: ChatServer) -> Iterator:
    """The durable store's writer thread: is history keeping up with the disk?"""
    if not server.store.durable:
        return
    yield _gauge("chatsrv_store_stalled", "1 while a store operation has run, or history "
                 "writes have failed, for more than 5 s (/readyz answers 503).",
                 1 if server.writer.stalled() else 0)
    stats = server.writer.stats
    yield _counter("chatsrv_store_flushes", "History batches committed.", stats.flushes)
    yield _counter("chatsrv_store_messages_written", "History messages committed.",
                   stats.messages)
    yield _counter("chatsrv_store_groups_created", "Group creations committed.", stats.creates)
    yield _counter("chatsrv_store_failures", "History writes that failed (retried at the "
                   "next flush).", stats.failures)
    yield _gauge("chatsrv_store_last_flush_seconds", "Duration of the last history commit.",
                 stats.last_flush_s)
    yield _gauge("chatsrv_store_max_flush_seconds", "Slowest history commit since start.",
                 stats.max_flush_s)


def _cluster(server: ChatServer) -> Iterator:
    """Cluster mode (`--redis`): this node's view of the backplane."""
    backplane = server.backplane
    if not backplane.cluster:
        return
    hub, stats = server.hub, backplane.stats
    info = InfoMetricFamily("chatsrv_cluster_node", "This node's id in the cluster.")
    info.add_metric([], {"node": backplane.node})
    yield info
    yield _gauge("chatsrv_cluster_up", "1 while Redis is reachable and this node registered.",
                 0 if hub.unavailable else 1)
    yield _gauge("chatsrv_cluster_nodes", "Nodes with users that this node knows, itself included.",
                 len({u.node for u in hub.remote_users.values()} | {backplane.node}))
    yield _gauge("chatsrv_cluster_remote_users",
                 "Users logged in on other nodes (chatsrv_users_active counts this node's).",
                 len(hub.remote_users))
    yield _gauge("chatsrv_cluster_subscribed_groups",
                 "Group channels this node follows (groups with local members).",
                 len(backplane.subscribed))
    yield _counter("chatsrv_cluster_published", "Events sent to Redis (messages, joins, ...).",
                   stats.published)
    yield _counter("chatsrv_cluster_batches", "Pipelines sent to Redis (one per loop turn "
                   "with events, at most).", stats.batches)
    yield _counter("chatsrv_cluster_received", "Messages received from Redis pub/sub.",
                   stats.received)
    yield _counter("chatsrv_cluster_dropped", "Events not sent because Redis was unreachable "
                   "(public messages of an outage reach this node's members only).",
                   stats.dropped)
    yield _counter("chatsrv_cluster_outages", "Times Redis became unreachable.", stats.outages)
    yield _counter("chatsrv_cluster_reaped_nodes",
                   "Dead nodes this node cleaned up (freed their names).", stats.reaped)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled(family, name: str, doc: str, label: str, values: dict[str, int]):
    metric = family(name, doc, labels=[label])
    for key, value in values.items():
        metric.add_metric([key], value)
    return metric


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=hist.cumulative(), sum_value=hist.sum)


def make_registry(server: ChatServer) -> CollectorRegistry:
    """The server's own registry: chatsrv_* plus process, platform and GC metrics."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ChatCollector(server))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
