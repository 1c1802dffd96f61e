"""Prometheus metrics, read from the server's plain counters at scrape time.

Nothing here runs on the per-message path. The hub and the sessions keep plain
integers (`Hub.stats`, `Session.bytes_in`, ...) and two plain-number latency
histograms (`histogram.Histogram`); `ChatCollector.collect` turns them into
metric families when Prometheus scrapes. So a fan-out to N members costs one
integer add for the deliveries, never N calls into prometheus_client, and the
sums over sessions (send queues, bytes) are computed once per scrape.

The collector never sees the server: it is handed a function that returns a
`Scrape` (plain numbers and the live counters objects, each field named once
below), which the composition root fills (`ChatServer.scrape`).

The registry is private to the server (not prometheus_client's global one), with
the standard process (CPU, RSS, open FDs), platform and GC collectors added.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

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

KINDS = ("public", "private")
DISCONNECT_REASONS = ("exit", "eof", "error", "sendq", "timeout", "kicked", "shutdown",
                      "replaced", "login_failed")
LOGIN_RESULTS = ("guest", "password", "token", "failed", "throttled")
REJECT_REASONS = ("full", "unauth", "per_ip", "rate")
TRANSPORTS = ("tcp", "tls", "ws", "wss")


# ---------------------------------------------------------------- what a scrape reads
#
# Everything the collector reads is named here, once. The composition root
# (`ChatServer.scrape` in server.py) fills a `Scrape` when Prometheus asks; the
# counters objects are the live ones (the hub's `Stats`, the store writer's and
# the backplane's), read, never written, here.


class ChatCounters(Protocol):
    """The hub's plain counters (`hub.Stats`); the admin API's /stats reads them too."""

    @property
    def messages_public(self) -> int: ...
    @property
    def messages_private(self) -> int: ...
    @property
    def deliveries_public(self) -> int: ...
    @property
    def deliveries_private(self) -> int: ...
    @property
    def notices(self) -> int: ...
    @property
    def logins(self) -> int: ...
    @property
    def announcements(self) -> int: ...
    @property
    def commands(self) -> Mapping[str, int]: ...
    @property
    def moderation(self) -> Mapping[str, int]: ...
    @property
    def fanout(self) -> Histogram: ...
    @property
    def login(self) -> Histogram: ...


class StoreCounters(Protocol):
    """The durable store's writer thread (`store.writer.WriterStats`)."""

    @property
    def flushes(self) -> int: ...
    @property
    def messages(self) -> int: ...
    @property
    def creates(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def last_flush_s(self) -> float: ...
    @property
    def max_flush_s(self) -> float: ...


class ClusterCounters(Protocol):
    """This node's traffic with Redis (`backplane.node.Stats`)."""

    @property
    def published(self) -> int: ...
    @property
    def batches(self) -> int: ...
    @property
    def received(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def outages(self) -> int: ...
    @property
    def reaped(self) -> int: ...


@dataclass(frozen=True)
class StoreScrape:
    """The durable store (absent with the memory store)."""

    stalled: bool
    stats: StoreCounters


@dataclass(frozen=True)
class ClusterScrape:
    """Cluster mode (`--redis`): this node's view of the backplane."""

    node: str
    up: bool
    nodes: int  # nodes with users that this node knows, itself included
    remote_users: int
    subscribed_groups: int
    stats: ClusterCounters


@dataclass(frozen=True)
class Scrape:
    """The server's state at one scrape: plain numbers and counters objects."""

    connections_total: int
    connections_active: int
    connections_unauthenticated: int
    rejected: Mapping[str, int]  # by reason (REJECT_REASONS)
    disconnects: Mapping[str, int]  # by reason (DISCONNECT_REASONS)
    logins: Mapping[str, int]  # login attempts by result (LOGIN_RESULTS, and `refused`)
    accounts: int
    limited_addresses: int
    sendq_bytes: int
    received_bytes: int
    sent_bytes: int
    users: int  # logged in on this node
    groups: int
    chat: ChatCounters
    history_bytes: int
    history_budget: int
    started_at: float
    stopping: bool
    max_clients: int
    http_closed: Mapping[str, int] | None  # by reason (timeout, evicted); None without HTTP
    cluster: ClusterScrape | None
    store: StoreScrape | None
    websocket_active: int = 0  # of connections_active, those on the WebSocket door
    # connections_active and connections_total by transport (TRANSPORTS)
    transports_active: Mapping[str, int] | None = None
    transports_total: Mapping[str, int] | None = None


class ChatCollector(Collector):
    """Every chatsrv_* metric, computed from a `Scrape` taken when Prometheus scrapes."""

    def __init__(self, scrape: Callable[[], Scrape]) -> None:
        self.scrape = scrape

    def collect(self) -> Iterator:
        now = self.scrape()
        stats = now.chat

        yield _with_breakdown(
            CounterMetricFamily, "chatsrv_connections",
            "Client connections accepted (TLS handshake done, WebSocket upgraded): the "
            "series without labels counts all; with {transport} (tcp, tls, ws, wss), each.",
            now.connections_total, now.transports_total)
        yield _with_breakdown(
            GaugeMetricFamily, "chatsrv_connections_active",
            "Open client connections, those still at the username prompt included: the "
            "series without labels counts all; with {transport} (tcp, tls, ws, wss), each.",
            now.connections_active, now.transports_active)
        yield _gauge("chatsrv_websocket_connections_active",
                     "Open WebSocket connections (upgraded on the web port), counted in "
                     "chatsrv_connections_active too.", now.websocket_active)
        yield _gauge("chatsrv_users_active", "Logged-in users.", now.users)
        yield _gauge("chatsrv_groups", "Groups that exist, General included.", now.groups)
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
        yield _labelled(CounterMetricFamily, "chatsrv_moderation",
                        "Changes made by moderation commands (set, mod, unmod, invite, uninvite, "
                        "kick, ban, unban, mute, unmute), by users and the admin API, by action.",
                        "action", stats.moderation)
        disconnects = dict.fromkeys(DISCONNECT_REASONS, 0)
        disconnects.update(now.disconnects)
        yield _labelled(CounterMetricFamily, "chatsrv_disconnects",
                        "Sessions ended, by reason.", "reason", disconnects)
        rejected = dict.fromkeys(REJECT_REASONS, 0)
        rejected.update(now.rejected)
        yield _labelled(CounterMetricFamily, "chatsrv_connections_rejected",
                        "Connections refused before the prompt, by reason: full (--max-clients), "
                        "unauth (--max-unauth), per_ip (--max-per-ip), rate (--connect-rate).",
                        "reason", rejected)
        if now.http_closed is not None:
            yield _labelled(CounterMetricFamily, "chatsrv_http_closed",
                            "HTTP connections the server closed before a complete request: "
                            "timeout (--http-timeout), evicted (too many waiting).", "reason",
                            now.http_closed)
        yield _gauge("chatsrv_connections_unauthenticated",
                     "Open connections not logged in yet (capped by --max-unauth).",
                     now.connections_unauthenticated)
        yield _gauge("chatsrv_limited_addresses",
                     "Client addresses with per-address limit state (open connections, "
                     "or a connect-rate bucket still refilling).", now.limited_addresses)
        logins = dict.fromkeys(LOGIN_RESULTS, 0)
        logins.update(now.logins)
        yield _labelled(CounterMetricFamily, "chatsrv_logins",
                        "Login attempts by result: guest, password, token (logged in), "
                        "failed, throttled, refused (e.g. a suspended account).", "result",
                        logins)
        yield _gauge("chatsrv_accounts", "Accounts (--accounts).", now.accounts)
        yield _counter("chatsrv_notices", "Join/leave notice lines queued to receivers.",
                       stats.notices)
        yield _counter("chatsrv_announcements", "Administrator announcements sent.",
                       stats.announcements)
        yield _gauge("chatsrv_sendq_bytes",
                     "Bytes waiting in send queues (the kernel did not take them yet), "
                     "summed over sessions.", now.sendq_bytes)
        yield _counter("chatsrv_received_bytes", "Bytes read from clients.", now.received_bytes)
        yield _counter("chatsrv_sent_bytes", "Bytes written to clients.", now.sent_bytes)
        yield _histogram("chatsrv_fanout_seconds",
                         "Time from parsing a public message to its last enqueue.", stats.fanout)
        yield _histogram("chatsrv_login_seconds",
                         "Time to handle a username line that logs in (checks, "
                         "registration, joining General with its notices).", stats.login)
        yield _gauge("chatsrv_start_time_seconds", "Start time of the server, Unix seconds.",
                     now.started_at)
        yield _gauge("chatsrv_uptime_seconds", "Seconds since the server started.",
                     time.time() - now.started_at)
        yield _gauge("chatsrv_shutting_down", "1 once shutdown has begun.",
                     1 if now.stopping else 0)
        yield _gauge("chatsrv_max_clients", "The --max-clients limit.", now.max_clients)
        if now.cluster is not None:
            yield from _cluster(now.cluster)
        yield from _history(now)
        if now.store is not None:
            yield from _store(now.store)
        info = InfoMetricFamily("chatsrv_build", "chatsrv version and wire protocol version.")
        info.add_metric([], {"version": __version__, "protocol": "1"})
        yield info


def _history(now: Scrape) -> Iterator:
    """History kept in memory against `--history-memory`."""
    yield _gauge("chatsrv_history_memory_bytes", "Estimated bytes of history kept in memory "
                 "(see --history-memory).", now.history_bytes)
    yield _gauge("chatsrv_history_memory_budget_bytes", "The --history-memory budget in bytes.",
                 now.history_budget)


def _store(store: StoreScrape) -> Iterator:
    """The durable store's writer thread: is history keeping up with the disk?"""
    yield _gauge("chatsrv_store_stalled", "1 while a store operation has run, or history "
                 "writes have failed, for more than 5 s (/readyz answers 503).",
                 1 if store.stalled else 0)
    stats = store.stats
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


def _cluster(cluster: ClusterScrape) -> Iterator:
    """Cluster mode (`--redis`): this node's view of the backplane."""
    stats = cluster.stats
    info = InfoMetricFamily("chatsrv_cluster_node", "This node's id in the cluster.")
    info.add_metric([], {"node": cluster.node})
    yield info
    yield _gauge("chatsrv_cluster_up", "1 while Redis is reachable and this node registered.",
                 1 if cluster.up else 0)
    yield _gauge("chatsrv_cluster_nodes", "Nodes with users that this node knows, itself included.",
                 cluster.nodes)
    yield _gauge("chatsrv_cluster_remote_users",
                 "Users logged in on other nodes (chatsrv_users_active counts this node's).",
                 cluster.remote_users)
    yield _gauge("chatsrv_cluster_subscribed_groups",
                 "Group channels this node follows (groups with local members).",
                 cluster.subscribed_groups)
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


def _labelled(family, name: str, doc: str, label: str, values: Mapping[str, int]):
    metric = family(name, doc, labels=[label])
    for key, value in values.items():
        metric.add_metric([key], value)
    return metric


def _with_breakdown(family, name: str, doc: str, total: float,
                    by_transport: Mapping[str, int] | None):
    """`name` without labels (every transport, as before version 2) and, beside it,
    one sample per transport (PROTOCOL.md v2, "Metrics added in version 2")."""
    metric = family(name, doc, value=total)
    suffix = "_total" if family is CounterMetricFamily else ""
    values = dict.fromkeys(TRANSPORTS, 0)
    values.update(by_transport or {})
    for transport, value in values.items():
        metric.add_sample(name + suffix, {"transport": transport}, value)
    return metric


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=hist.cumulative(), sum_value=hist.sum)


def make_registry(scrape: Callable[[], Scrape]) -> CollectorRegistry:
    """The server's own registry: chatsrv_* plus process, platform and GC metrics."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ChatCollector(scrape))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
