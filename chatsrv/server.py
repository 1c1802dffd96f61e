"""The gevent server: accept, limits, TLS, the per-turn flush, signals, shutdown.

It wires the pure hub to sessions; it holds no chat logic of its own. As the
composition root it is also the one place that hands each adapter its narrow
interface: the store writer gets the hub and a flush callback, the backplane
the hub and two callbacks (`open_backplane`), the HTTP endpoint an `Admin`
facade (http.AdminPort) and `scrape` (metrics.Scrape). No adapter sees the
server or a session.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import os
import resource
import signal
import socket
import ssl
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

import gevent
from gevent.event import Event

from . import sdnotify
from .accounts import AccountError, AccountService
from .auth import load_or_create_token
from .backplane import open_backplane
from .config import Config, ConfigError
from .configfile import Resolved, check_tls
from .core import moderation
from .core import protocol as P
from .core.accounts import Account, AccountBook, AccountWork, Register
from .core.audit import ADMIN_ACCOUNT, ADMIN_ACTOR, AuditEntry
from .core.commands import COMMANDS
from .core.createrate import CreateRate
from .core.errors import (
    ClusterUnavailable,
    CreateFailed,
    DeleteFailed,
    GroupExists,
    GroupPending,
    LoginRefused,
    ProtocolError,
    RolesNotStored,
)
from .core.hub import Hub
from .core.limits import (
    PER_IP,
    RATE,
    AddressLimits,
    address_key,
    client_address,
    in_networks,
)
from .core.model import Group, RemoteUser, User
from .core.moderation import Change
from .core.protocol import GENERAL
from .http import AdminHTTP, Connection
from .metrics import ChatCounters, ClusterScrape, Scrape, StoreScrape
from .net import websocket as W
from .net.acceptor import Acceptor, listening_socket
from .net.hashing import Hasher
from .net.session import Session
from .net.sockio import SockIO
from .net.tls import TlsChannel
from .reload import reload_plan, retune
from .store import MemoryStore, Store, open_store
from .store.writer import StoreWriter

log = logging.getLogger("chatsrv.server")

# Sessions ending for these reasons get their last lines flushed (bounded by
# the grace period); the others have a dead or hopeless socket.
GRACEFUL = frozenset({"exit", "timeout", "kicked", "shutdown", "replaced", "login_failed"})

# The line a refused connection gets, by `chatsrv_connections_rejected_total` reason.
REFUSAL_LINES = {
    "full": P.SERVER_FULL,
    "unauth": P.SERVER_BUSY,
    PER_IP: P.TOO_MANY_FROM_ADDRESS,
    RATE: P.CONNECTING_TOO_FAST,
}
# Server-wide refusals (full, unauth) are logged at most once per this many seconds.
BUSY_LOG_EVERY_S = 60.0
# How often idle per-address entries and the once-a-minute log state are swept.
SWEEP_EVERY_S = 10.0
# At shutdown the store gets what is left of --shutdown-grace + this, and at
# least STORE_CLOSE_MIN_S, whatever the disk does: SIGTERM ends the process
# within about --shutdown-grace + 4 s (docs/operations.md).
STORE_CLOSE_EXTRA_S = 3.0
STORE_CLOSE_MIN_S = 3.0
# A web request answered 400 is read (and dropped) this long, this many reads, at most.
LINGER_S = 2.0
LINGER_READS = 16


def raise_fd_limit() -> int:
    """Raise the open-files soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as err:
            log.warning("could not raise the open-files limit: %s", err)
    return soft


def tune_gevent() -> None:
    """Per-client greenlets need not remember who spawned them: gevent's
    greenlet-tree tracking costs memory and time on every accept."""
    gevent.config.track_greenlet_tree = False


def tune_gc() -> None:
    """Keep the cyclic GC off the latency path: chat state is long-lived and acyclic
    in the hot path, so collect young objects rarely and never rescan start-up ones."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def keepalive_options(seconds: float) -> list[tuple[int, int, int]]:
    """Socket options that notice a vanished peer within `seconds` (PROTOCOL.md v2,
    "Dead peers"): an idle connection is probed after half of it, then `count`
    probes `interval` apart fill the other half; TCP_USER_TIMEOUT bounds the time
    sent data may stay unacknowledged (a peer gone while we were writing, which
    keepalive alone leaves to the ~15-minute retransmission limit). The kernel
    then fails the socket with ETIMEDOUT: the session ends with reason `timeout`."""
    total = int(seconds)
    idle = max(1, total // 2)
    count = max(1, min(4, total - idle))
    interval = max(1, (total - idle) // count)
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count),
    ]
    user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux
    if user_timeout is not None:
        options.append((socket.IPPROTO_TCP, user_timeout, int(seconds * 1000)))
    return options


def set_keepalive(sock, seconds: float) -> None:
    for level, option, value in keepalive_options(seconds):
        sock.setsockopt(level, option, value)


# Linux gives an accepted socket the listening socket's options (SO_KEEPALIVE,
# TCP_KEEPIDLE/INTVL/CNT, TCP_USER_TIMEOUT, TCP_NODELAY): set there once, they
# cost no syscall per connection (6 fewer per login). Elsewhere, per connection.
INHERITS_OPTIONS = sys.platform.startswith("linux")


def _linger(io: SockIO) -> None:
    """After an error answer to a request not read to its end: stop sending and read
    what the client still sends (a little, briefly) before the close, so the
    kernel does not reset the connection and lose the answer on the way."""
    try:
        io.sock.shutdown(socket.SHUT_WR)
        with gevent.Timeout(LINGER_S, False):
            for _ in range(LINGER_READS):
                if not io.recv(65536):
                    break
    except OSError:
        pass


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context for --tls-cert/--tls-key; raises ConfigError."""
    return check_tls(config)


def _tls_files(config: Config) -> bytes:
    """The certificate and key as they are on disk now (b"" without TLS or if unreadable),
    so a reload can say whether the pair changed."""
    if config.tls_cert is None or config.tls_key is None:
        return b""
    try:
        return config.tls_cert.read_bytes() + b"\0" + config.tls_key.read_bytes()
    except OSError:
        return b""


class ChatServer:
    def __init__(self, config: Config, store: Store | None = None,
                 resolved: Resolved | None = None) -> None:
        self.config = config
        # How `reload` builds the config again: the --config file and what the
        # flags and environment set at start. Without one, a reload re-reads the
        # TLS certificate and key (same paths) and changes nothing else.
        self.resolved = resolved
        self.store = store if store is not None else MemoryStore()
        # The latency histograms are timed only when something can read them.
        create_rate = (CreateRate(config.create_rate, time.monotonic)
                       if config.create_rate else None)
        # Accounts (PROTOCOL.md v2): all in memory, loaded in `load`; hashing runs
        # on the hasher's threads, never on the loop.
        self.accounts = AccountBook(config.accounts, token_ttl=config.token_ttl)
        self.hub = Hub(clock=time.time, accounts=self.accounts,
                       history=config.history, notice_limit=config.notice_limit,
                       timer=time.perf_counter if config.http_port else None,
                       durable=self.store.durable, max_groups=config.max_groups,
                       create_rate=create_rate, history_memory=config.history_memory_bytes,
                       group_creation=config.group_creation)
        self.writer = StoreWriter(self.store, self.hub, flush_ms=config.flush_ms,
                                  keep=config.history, on_reply=self.schedule_flush)
        self.sessions: set[Session] = set()
        self.graceful = GRACEFUL
        self.stopping = False
        self.stopped = Event()
        self.started_at = time.time()
        self.connections_total = 0
        self.transports_total: Counter[str] = Counter()  # by Session.transport
        self.rejected: Counter[str] = Counter()
        # Connections admitted and not yet ended (sessions, and sockets still in
        # their TLS handshake), and those of them not logged in: the caps count these.
        self.conns = 0
        self.unauth = 0
        self.limits = AddressLimits(max_per_ip=config.max_per_ip, rate=config.connect_rate,
                                    exempt=config.exempt_networks, clock=time.monotonic)
        self._busy_log: dict[str, list] = {}  # reason -> [logged at, refused since]
        self._sweeper: Any | None = None  # a gevent timer (gevent has no types)
        self._ws_pings: Any | None = None  # the WebSocket sessions' ping timer
        self.disconnects: Counter[str] = Counter()
        self.hasher = Hasher()
        self.logins: Counter[str] = Counter()  # chatsrv_logins_total{result}
        self._last_logins: dict[str, float] = {}  # account key -> time, written by _sweep
        self.account_service = AccountService(
            self.accounts, self.hasher, self.store, self.writer.call, self.end_account_session,
            on_change=lambda key: self.backplane.account_changed(key))
        # Bytes of sessions already gone; the live ones are summed at scrape time.
        self.closed_bytes_in = 0
        self.closed_bytes_out = 0
        self._ids = itertools.count(1)
        self._flush_pending = False
        self.loop = gevent.get_hub().loop
        self._tls = tls_context(config)
        # The --keepalive the listening sockets pass on to accepted ones (see
        # INHERITS_OPTIONS); None: each accepted socket gets its options itself.
        self._inherited: float | None = None
        self._tls_loaded = _tls_files(config)
        self._listener: Acceptor | None = None
        self._web: Acceptor | None = None
        self.http: AdminHTTP | None = None
        # Local (a no-op) without --redis; a cluster node with it (chatsrv/backplane).
        self.backplane = open_backplane(config, self.hub, kick_local=self.kick_local,
                                        schedule_flush=self.schedule_flush, accounts=self)
        self.accounts.on_failure = self.backplane.login_failed
        # The admin API's moderation runs as this user (core/audit.py): the owner's
        # powers on every group, and no session (its replies are read, never sent).
        self.admin_actor = User(ADMIN_ACTOR, account=ADMIN_ACCOUNT)
        if self.backplane.cluster:
            self.writer.read_history = self.backplane.read_history
            self.writer.follow = self.backplane.follow

    # ------------------------------------------------------------ lifecycle

    def load(self) -> None:
        """Put back the groups and recent history the store kept; raises StoreError."""
        started = time.monotonic()
        hub = self.hub
        loaded = self.store.load(self.config.history, hub.history_budget)
        for group in loaded:
            record = group.record
            hub.restore_group(record.name, record.created_by, record.created_at,
                              group.history, group.total)
        for name, data in self.store.load_roles():
            hub.restore_roles(name, data)
        hub.restored()
        self.writer.ends = {group.key: group.seq for group in hub.groups.values()}
        log.info("store %s: %d groups, %d history messages loaded (%.1f MiB of "
                 "--history-memory %.1f MiB) in %.2f s", self.store.describe(), len(loaded),
                 sum(len(g.history) for g in hub.groups.values()), hub.history_bytes / 2**20,
                 hub.history_budget / 2**20, time.monotonic() - started)
        if self.accounts.enabled:
            for account in self.store.load_accounts():
                self.accounts.put(account)
            self.accounts.token_key = self.store.token_key(os.urandom(32))
            log.info("accounts %s: %d accounts", self.config.accounts, len(self.accounts))

    def start(self) -> None:
        """Bind the HTTP port (if on), then the chat port: `listening on` means all is up."""
        self.writer.start()
        # Bound before joining a cluster it could not serve; a --workers worker
        # shares the port with the others (SO_REUSEPORT).
        chat_sock = listening_socket(self.config.host, self.config.port,
                                     reuse_port=self.config.reuse_port)
        web_sock = None
        if self.config.web_port:
            web_sock = listening_socket(self.config.web_host, self.config.web_port,
                                        reuse_port=self.config.reuse_port)
        if INHERITS_OPTIONS:  # set once here instead of on every accepted socket
            for sock in (chat_sock, web_sock):
                if sock is not None:
                    self._set_options(sock, self.config.keepalive)
            self._inherited = self.config.keepalive
        listener = Acceptor(chat_sock, self._handle, self.admit)
        web = None
        if web_sock is not None:
            web = Acceptor(web_sock, self._handle_web, self.admit_web)
        self.backplane.start()
        if self.config.http_port:
            token = self.config.admin_token or load_or_create_token(self.config.data_dir)
            self.http = AdminHTTP(Admin(self), self.scrape, token, host=self.config.http_host,
                                  port=self.config.http_port, timeout=self.config.http_timeout)
            self.http.start()
        if web is not None:
            web.start()
            self._web = web
            pings = self._ws_pings = self.loop.timer(W.CHECK_EVERY_S, W.CHECK_EVERY_S)
            pings.start(self._ping_websockets)
            host = self.config.web_host
            log.info("web client on %s://%s:%d/", "https" if self._tls else "http",
                     f"[{host}]" if ":" in host else host, web.server_port)
        listener.start()
        self._listener = listener
        sweeper = self._sweeper = self.loop.timer(SWEEP_EVERY_S, SWEEP_EVERY_S)
        sweeper.start(self._sweep)
        log.info("listening on %s:%d%s", self.config.host, listener.server_port,
                 " (TLS)" if self._tls else "")

    @property
    def port(self) -> int:
        assert self._listener is not None, "not started"
        return self._listener.server_port

    def install_signal_handlers(self) -> None:
        # Kept alive, as gevent advises for its signal handlers. SIGHUP reloads.
        self._signal_handlers = [
            *(gevent.signal_handler(signum, self._on_signal, signum)
              for signum in (signal.SIGTERM, signal.SIGINT)),
            gevent.signal_handler(signal.SIGHUP, self._on_hup),
        ]

    def _on_hup(self) -> None:
        log.info("received SIGHUP: reloading the configuration")
        gevent.spawn(self.reload)

    # ------------------------------------------------------------ reload

    def reload(self) -> dict[str, Any]:
        """Re-read the config file (and the TLS certificate and key) and apply what
        can change with everyone staying connected; see reload.py. Never raises:
        the answer says what changed, what needs a restart, or why nothing did."""
        sdnotify.reloading()
        try:
            result = self._reload()
        except Exception as err:  # a bug must not take the server down with it
            log.exception("reload failed")
            result = {"ok": False, "error": f"reload failed: {err}", "changed": [],
                      "restart_needed": []}
        sdnotify.ready("reloaded" if result["ok"] else "reload refused")
        return result

    def _reload(self) -> dict[str, Any]:
        old = self.config
        try:
            if self.resolved is not None:
                resolved = self.resolved.reload()
                new = resolved.config
            else:
                resolved, new = None, old
            tls = check_tls(new) if new.tls else None
        except ConfigError as err:
            log.error("reload refused, nothing changed: %s", err)
            return {"ok": False, "error": str(err), "changed": [], "restart_needed": []}
        plan = reload_plan(old, new)
        new = plan.effective
        tls_files = _tls_files(new)
        tls_changed = tls is not None and old.tls and tls_files != self._tls_loaded
        if tls is not None and old.tls:
            self._tls = tls  # new handshakes; established sessions keep theirs
            self._tls_loaded = tls_files
        self.config = new
        if resolved is not None:
            self.resolved = replace(resolved, config=new)
        self._apply(old, new)
        changed = list(plan.changed)
        if tls_changed and not any(c.startswith(("tls_cert", "tls_key")) for c in changed):
            changed.append("tls certificate and key: reloaded from the same files")
        log.info("reload: %s; %s", "changed " + ", ".join(changed) if changed else "no change",
                 "needs a restart: " + ", ".join(plan.restart_needed)
                 if plan.restart_needed else "nothing needs a restart")
        return {"ok": True, "changed": changed, "restart_needed": list(plan.restart_needed)}

    def _apply(self, old: Config, new: Config) -> None:
        """Hand the new limits to the parts that keep their own copy (the others read
        `self.config` each time)."""
        if (old.log_level, old.log_format) != (new.log_level, new.log_format):
            from .logs import setup_logging

            setup_logging(new.log_level, new.log_format)
        if (old.max_per_ip, old.connect_rate, old.exempt) != (
                new.max_per_ip, new.connect_rate, new.exempt):
            self.limits.configure(max_per_ip=new.max_per_ip, rate=new.connect_rate,
                                  exempt=new.exempt_networks)
        if old.rate_limit != new.rate_limit:
            for session in self.sessions:
                session.limiter = retune(session.limiter, new.rate_limit)
        if old.max_line != new.max_line:  # a WebSocket checks message sizes itself
            for session in self.sessions:
                if isinstance(session.tls, W.WsChannel):
                    session.tls.max_line = new.max_line
        self.accounts.token_ttl = new.token_ttl  # for tokens minted from now on
        hub = self.hub
        hub.notice_limit = new.notice_limit
        hub.max_groups = new.max_groups
        if old.create_rate != new.create_rate:
            if not new.create_rate:
                hub.create_rate = None
            elif hub.create_rate is None:
                hub.create_rate = CreateRate(new.create_rate, time.monotonic)
            else:
                hub.create_rate.retune(new.create_rate)
        if old.history != new.history:  # both non-zero (reload_plan)
            hub.resize_history(new.history)
            self.writer.keep = new.history  # what the store keeps per group, next write
        if old.history_memory != new.history_memory:
            hub.history_budget = new.history_memory_bytes
            if hub.history_bytes > hub.history_budget:
                hub.trim_history()

    def _on_signal(self, signum: int) -> None:
        log.info("received %s", signal.Signals(signum).name)
        gevent.spawn(self.shutdown)

    def shutdown(self) -> None:
        """Stop accepting, tell everyone, flush within the grace period, close."""
        if self.stopping:
            return
        self.stopping = True
        sdnotify.stopping()
        if self._listener is not None:
            self._listener.close()
        if self._web is not None:
            self._web.close()
        if self._sweeper is not None:
            self._sweeper.close()
        if self._ws_pings is not None:
            self._ws_pings.close()
        sessions = list(self.sessions)
        log.info("shutting down: %d sessions", len(sessions))
        for session in sessions:
            session.emit(P.SHUTTING_DOWN)
        self.flush()
        for session in sessions:
            session.abort("shutdown")
        started = time.monotonic()
        deadline = started + self.config.shutdown_grace + 1.0
        while self.sessions and time.monotonic() < deadline:
            gevent.sleep(0.05)
        self.backplane.stop()
        left = started + self.config.shutdown_grace + STORE_CLOSE_EXTRA_S - time.monotonic()
        self.close_store(max(STORE_CLOSE_MIN_S, left))
        if self.http is not None:  # kept until now: /readyz said 503 during the drain
            self.http.stop()
        self.stopped.set()
        log.info("stopped")

    def close_store(self, timeout: float | None = None) -> None:
        """Write the history still unsaved, close the store and free the data directory
        (within `timeout` seconds, whatever the disk does)."""
        self.save_last_logins()
        try:
            self.writer.close(timeout)
        except Exception as err:
            log.error("closing the store failed: %s", err)
            return
        stats = self.writer.stats
        if self.store.durable:
            log.info("store closed: %d history messages in %d flushes (slowest %.1f ms), "
                     "%d groups created, %d failed writes", stats.messages, stats.flushes,
                     stats.max_flush_s * 1000, stats.creates, stats.failures)

    # ------------------------------------------------------------ connections

    def admit(self, host: str, per_address: bool = True) -> tuple[bytes | None, str | None]:
        """Decide on an accepted socket before anything is allocated for it.

        Admitted: `(None, key)`, and the connection counts until `_release(key)`
        (key is None for an address not counted). Refused: `(line, None)`, the
        line to send before closing (b"" = close without a word).
        `per_address` False: only the server-wide caps (see `admit_web`)."""
        if self.stopping:
            return b"", None
        config = self.config
        if self.conns >= config.max_clients:
            return self._refused_busy("full"), None
        if config.max_unauth and self.unauth >= config.max_unauth:
            return self._refused_busy("unauth"), None
        key = self.limits.key(host) if per_address else None
        if key is not None:
            reason = self.limits.admit(key)
            if reason is not None:
                self.rejected[reason] += 1
                return REFUSAL_LINES[reason], None
        self.conns += 1
        self.unauth += 1
        return None, key

    def admit_web(self, host: str) -> tuple[bytes | None, str | None]:
        """`admit` for the web port: a connection from a --trusted-proxies address
        is counted per address only once its request names the client
        (`_admit_forwarded`); the server-wide caps apply at once."""
        return self.admit(host, not in_networks(host, self.config.trusted_networks))

    def _refused_busy(self, reason: str) -> bytes:
        """Count a server-wide refusal; log it at most once a minute."""
        self.rejected[reason] += 1
        now = time.monotonic()
        state = self._busy_log.get(reason)
        if state is None or now - state[0] >= BUSY_LOG_EVERY_S:
            more = f"; {state[1]} more refused since the last report" if state and state[1] else ""
            if reason == "full":
                why = f"{self.conns} connections open (--max-clients {self.config.max_clients})"
            else:
                why = (f"{self.unauth} connections not logged in "
                       f"(--max-unauth {self.config.max_unauth})")
            log.warning("refusing connections (%s): %s%s; logged once a minute",
                        reason, why, more)
            self._busy_log[reason] = [now, 0]
        else:
            state[1] += 1
        return REFUSAL_LINES[reason]

    def _sweep(self) -> None:
        try:
            self.limits.purge()
            self.accounts.throttle.sweep(time.time())
            self.save_last_logins()
        except Exception:
            log.exception("server error sweeping per-address state")

    def _ping_websockets(self) -> None:
        """Every WebSocket session's ping check (websocket.py `_check`); one answering
        nothing is ended, reason `timeout`."""
        try:
            for session in [s for s in self.sessions if s.framer is not None]:
                if session.tls._check():  # type: ignore[union-attr]
                    session.abort("timeout")
        except Exception:
            log.exception("server error pinging WebSocket sessions")

    def save_last_logins(self) -> None:
        """Accounts' last logins, batched (every sweep and at shutdown), not fsynced."""
        if self._last_logins:
            batch = list(self._last_logins.items())
            self._last_logins.clear()
            self.writer.submit(self.store.record_logins, batch)

    def _release(self, key: str | None, logged_in: bool) -> None:
        """An admitted connection ended: give back what `admit` counted."""
        self.conns -= 1
        if not logged_in:
            self.unauth -= 1
        if key is not None:
            self.limits.release(key)

    def _handle(self, sock, address, key: str | None = None) -> None:
        self._run_session(self._open_session, sock, address, key, "connection")

    def _run_session(self, opener, sock, address, key: str | None, kind: str) -> None:
        """A new connection's greenlet: open its session (`opener`), run it; what was
        admitted is released if no session came of it."""
        session = None
        try:
            session = opener(sock, address, key)
            if session is not None:
                session.run()
        except OSError:  # e.g. reset before we got to it: the client's doing
            sock.close()
        except Exception:
            log.exception("server error on a new %s", kind)
            sock.close()
        finally:
            if session is None:
                self._release(key, False)

    def _open_session(self, sock: socket.socket, address, key: str | None) -> Session | None:
        peer = f"{address[0]}:{address[1]}"
        if self._inherited != self.config.keepalive:  # not Linux, or a reload changed it
            self._set_options(sock, self.config.keepalive)
        io = SockIO(sock)
        tls = None
        if self._tls is not None:
            tls = self._tls_handshake(io, peer)
            if tls is None:
                return None
        session = Session(self, io, peer, next(self._ids), tls)
        session.addr_key = key
        if tls is not None:
            session.transport = "tls"
        self._opened(session)
        log.info("connect id=%d peer=%s", session.id, peer)
        return session

    @staticmethod
    def _set_options(sock: socket.socket, keepalive: float) -> None:
        """No Nagle delay, and a vanished peer noticed within `keepalive` seconds."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if keepalive:
            set_keepalive(sock, keepalive)
        else:  # off: also when a reload turned off what the listener passes on
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
            user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
            if user_timeout is not None:
                sock.setsockopt(socket.IPPROTO_TCP, user_timeout, 0)

    def _opened(self, session: Session) -> None:
        self.sessions.add(session)
        self.connections_total += 1
        self.transports_total[session.transport] += 1

    def _handle_web(self, sock, address, key: str | None = None) -> None:
        """The web port: the static client, or the WebSocket door into a Session."""
        self._run_session(self._open_web, sock, address, key, "web connection")

    def _open_web(self, sock: socket.socket, address, key: str | None) -> Session | None:
        """One HTTP request on the web port (HTTPS with --tls-cert): a page, an error,
        or a WebSocket upgrade that becomes a Session."""
        peer = f"{address[0]}:{address[1]}"
        if self._inherited != self.config.keepalive:  # not Linux, or a reload changed it
            self._set_options(sock, self.config.keepalive)
        io = SockIO(sock)
        tls = None
        if self._tls is not None:  # the chat port's context, reloaded with it
            tls = self._tls_handshake(io, peer)
            if tls is None:
                return None
        send = io.sendall if tls is None else (lambda data: io.sendall(tls.encrypt(data)))
        channel = None
        try:
            with gevent.Timeout(self.config.login_timeout):
                got = W.read_head(tls.recv if tls is not None
                                  else (lambda size: W.recv_shared(io, size)))
                if got is not None:
                    head = W.Head(got[0])
                    channel = self._web_request(io, tls, send, head, got[1], address[0])
        except ValueError as err:  # a malformed (or too long) request head
            log.info("web request refused peer=%s: %s", peer, err)
            self._try(send, W.error_response("400 Bad Request", "error: bad request"))
            _linger(io)
        except gevent.Timeout as err:
            log.info("web request refused peer=%s: %s", peer, err)
        except OSError:
            channel = None
        if channel is None:
            io.close()
            return None
        networks = self.config.trusted_networks
        client = None
        if in_networks(address[0], networks):  # a trusted proxy: the client is in the head
            client = client_address(address[0], head.headers.get("x-forwarded-for", ""),
                                    networks)
            refusal, key = self._admit_forwarded(client)
            if refusal is not None:  # its line, then a close (1008) like a kick's
                self._try(send, channel.encrypt(refusal) + channel.close_frame("kicked"))
                io.close()
                return None
            log.info("web connection from proxy %s for client %s", peer, client)
        session = Session(self, io, client or peer, next(self._ids), channel)
        if client is not None:
            session.host = client
        session.addr_key = key
        session.transport = "wss" if tls is not None else "ws"
        channel.send = session.write
        session.framer = channel  # callable: frame_queue
        self._opened(session)
        log.info("connect id=%d peer=%s transport=%s", session.id, peer, session.transport)
        return session

    def _admit_forwarded(self, client: str) -> tuple[bytes | None, str | None]:
        """The per-address part of `admit` for a client behind a trusted proxy:
        (refusal line, None) or (None, the key it counts under)."""
        key = self.limits.key(client)
        if key is not None:
            reason = self.limits.admit(key)
            if reason is not None:
                self.rejected[reason] += 1
                log.info("web connection refused (%s): client %s", reason, client)
                return REFUSAL_LINES[reason], None
        return None, key

    @staticmethod
    def _try(send, data: bytes) -> None:
        try:
            send(data)
        except OSError:
            pass

    def _web_request(self, io: SockIO, tls: TlsChannel | None, send, head: W.Head,
                     rest: bytes, peer: str) -> W.WsChannel | None:
        """Answer one request; the channel when it was a WebSocket upgrade."""
        head_only = head.method == "HEAD"
        if head.path == "/ws" and head.method == "GET":
            scheme = "https" if tls is not None else "http"
            if in_networks(peer, self.config.trusted_networks):
                # The page was served by the proxy (TLS there): its scheme is the origin's.
                proto = head.headers.get("x-forwarded-proto", "").split(",")[-1].strip()
                if proto in ("http", "https"):
                    scheme = proto
            if W.origin_allowed(head, self.config.web_origin_list, scheme):
                return W.upgrade(head, rest, io, self.config.max_line, tls)
            log.info("websocket refused peer=%s: origin %s", peer, head.headers.get("origin"))
            send(W.error_response("403 Forbidden", "error: origin not allowed"))
        elif head.method not in ("GET", "HEAD"):
            send(W.error_response("405 Method Not Allowed", "error: GET only"))
        elif head.path in W.STATIC:
            name, ctype = W.STATIC[head.path]
            send(W.response("200 OK", ctype, W.static_file(name), head_only))
        else:
            send(W.error_response("404 Not Found", "error: not found", head_only))
        return None

    def _tls_handshake(self, io: SockIO, peer: str) -> TlsChannel | None:
        assert self._tls is not None  # called only with --tls-cert (a context)
        try:
            tls = TlsChannel(self._tls, io)
            with gevent.Timeout(self.config.login_timeout):
                tls.handshake()
            return tls
        except (OSError, gevent.Timeout) as err:
            log.info("tls handshake failed peer=%s: %s", peer, err)
            io.close()
            return None

    def login(self, text: str, session: Session, account: str | None = None) -> User:
        """A username line: log in, cluster-wide with a backplane; raises LoginRefused.
        `account`: the key of the account it logged in to (None: a guest)."""
        hub = self.hub
        addr = address_key(session.host or session.peer.rsplit(":", 1)[0])  # --create-rate
        if hub.outbox is None:
            return hub.login(text, session, addr=addr, account=account)
        name = hub.check_name(text)
        self.backplane.claim(name, session.peer)  # this greenlet waits for Redis
        try:
            return hub.login(name, session, announced=True, addr=addr, account=account)
        except LoginRefused:  # taken here meanwhile (cannot happen: Redis said ours)
            self.backplane.abandon(name)
            raise

    def session_logged_in(self, session: Session, how: str = "guest",
                          account: Account | None = None) -> None:
        self.unauth -= 1
        assert session.user is not None  # the session has just logged in
        self.logins[how] += 1
        if account is not None:
            now = self._last_logins[account.key] = time.time()
            current = self.accounts.get(account.name)
            if current is not None:  # what the admin API lists; the store gets it batched
                self.accounts.put(dataclasses.replace(current, last_login=now))
        log.info("login id=%d user=%s as=%s", session.id, session.user.name, how)

    def do_account_work(self, work: list[AccountWork]) -> None:
        """Run `register`/`password` (a session's greenlet waits; nobody else does)
        and queue each reply for its user."""
        service = self.account_service
        for item in work:
            user = item.user
            assert isinstance(user, User)
            try:
                if isinstance(item, Register):
                    account = service.register(item.name, item.password)
                    user.account = account.key
                    reply = P.registered_line(account.name)
                else:
                    service.change_password(item.name, item.old, item.new)
                    reply = P.PASSWORD_CHANGED
            except AccountError as err:  # the store's failures included (Unavailable)
                reply = str(err)
            if self.hub.users.get(user.key) is user:  # not gone meanwhile
                self.hub.reply(user, reply)
        self.schedule_flush()

    def save_roles(self, work: list[tuple[User, Group, str, Change | None]]) -> None:
        """Store the roles of the groups `work` changed (a session's greenlet waits
        on the writer thread; nobody else does), or in a cluster have Redis make
        each change (`roles_in_cluster`), then queue each reply."""
        if self.hub.audit:  # queued first: a change's `ok:` means its audit entry is kept too
            self.save_audit()
        saved: dict[Group, bool] = {}
        for user, group, reply, change in work:
            if change is not None:
                reply = self.roles_in_cluster(change, reply)
            else:
                ok = saved.get(group)
                if ok is None:
                    try:
                        self.writer.call(self.store.put_roles, group.name,
                                         moderation.snapshot(group))
                        ok = True
                    except Exception as err:  # the store's failures: said, never fatal
                        log.error("storing the roles of group %s failed: %s", group.name, err)
                        ok = False
                    saved[group] = ok
                if not ok:
                    reply = P.roles_not_stored(group.name)
            if self.hub.users.get(user.key) is user:  # not gone meanwhile
                self.hub.reply(user, reply)
        self.schedule_flush()

    def roles_in_cluster(self, change: Change, reply: str) -> str:
        """A role change (or a kick of another node's member) made through Redis:
        `reply` once this node applied it (and the member it removes is out of the
        group as this node hears it), or the error."""
        backplane = self.backplane
        try:
            if change.field is not None and not backplane.change_roles(change):
                return P.no_such_group(change.group.name)
            if change.node is not None:
                backplane.remove_remote(change)
        except ClusterUnavailable:
            return P.CLUSTER_UNAVAILABLE
        return reply

    def login_result(self, result: str) -> None:
        """A refused login: `failed`, `throttled` or another refusal (`refused`)."""
        self.logins[result] += 1

    def replace_session(self, name: str) -> None:
        """A login to an account ends the older session of that name (a dead laptop,
        a second tab, or a guest that took the name before the account existed),
        on this node or another: it hears why, and the name is free when this
        returns."""
        if self.kick_local(name, "replaced") is None:
            self.backplane.replace(name)

    def end_account_session(self, name: str, line: bytes, reason: str) -> None:
        """An account was suspended or deleted: end the session logged in to it."""
        session = self.find_session(name)
        if session is not None and session.user is not None \
                and session.user.account == P.name_key(P.normalize(name)):
            self._end_session(session, line, reason)

    def _end_session(self, session: Session, line: bytes, reason: str) -> None:
        user = session.user
        assert user is not None  # found through the hub's users: logged in
        session.emit(line)
        self.flush()
        self.hub.logout(user)
        self.schedule_flush()  # the leave notices
        session.abort(reason)

    def session_closed(self, session: Session, reason: str) -> None:
        self.sessions.discard(session)
        self._release(session.addr_key, session.user is not None)
        self.disconnects[reason] += 1
        self.closed_bytes_in += session.bytes_in
        self.closed_bytes_out += session.bytes_out
        user = session.user.name if session.user is not None else "-"
        log.info("disconnect id=%d user=%s reason=%s", session.id, user, reason)

    # ------------------------------------------------------------ output

    def schedule_flush(self) -> None:
        """Flush once at the end of this loop turn, however many lines were queued."""
        if not self._flush_pending and (self.hub.dirty or self.hub.outbox):
            self._flush_pending = True
            self.loop.run_callback(self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        hub = self.hub
        if hub.audit:  # a moderation command changed something
            self.save_audit()
        if hub.outbox:  # cluster mode: the publisher sends this turn's events
            self.backplane.wake()
        dirty = hub.dirty
        if not dirty:
            return
        hub.dirty = set()
        for user in dirty:
            queue = user.queue
            if queue:
                # Every dirty user has a conn (a session logs out before detaching);
                # the hot path gets no runtime check, only this narrowing comment.
                conn = user.conn
                framer = conn.framer  # type: ignore[union-attr]
                if framer is None:
                    data = b"".join(queue)
                    queue.clear()
                    conn.write(data)  # type: ignore[union-attr]
                else:  # WebSocket: a delivery's frame is made once per fan-out
                    data = framer(queue)
                    queue.clear()
                    conn.write(data, True)  # type: ignore[union-attr]
        W.forget_frames()

    # ------------------------------------------------------------ administration

    def find_session(self, name: str) -> Session | None:
        user = self.hub.users.get(P.name_key(P.normalize(name)))
        if user is None:
            return None
        conn = user.conn
        # The server logs users in with their Session only (`login`).
        assert conn is None or isinstance(conn, Session)
        return conn

    def create_group(self, name: str) -> Group:
        """An administrator's `create`: like a user's, durable before it returns.

        Runs in a greenlet (an HTTP request's): it may wait for the store's
        commit. Raises ProtocolError (bad name), GroupExists, or CreateFailed."""
        hub = self.hub
        try:
            group = hub.reserve_group(name, created_by="")
        except GroupPending as pending:  # a user's create of that name is committing
            raise GroupExists(P.group_exists(pending.group.name)) from None
        if not hub.durable:
            hub.group_committed(group, None)
            return group
        hub.commits.uncommitted.append((None, group))
        self.writer.settle(hub.commits.take())
        existing = hub.groups.get(group.key)
        if existing is not None and existing is not group:  # another node's, in a cluster
            raise GroupExists(P.group_exists(existing.name))
        if existing is not group:
            raise CreateFailed(P.storage_failed(group.name))
        return group

    def delete_group(self, name: str) -> str | None:
        """An administrator deletes a group: its display name, or None if unknown.

        Runs in a greenlet (an HTTP request's) and returns once the deletion is
        durable: the hub drops the group first (members told, no more messages
        for it), then the store forgets it on its writer thread, or in a cluster
        the publisher removes it from Redis and tells every node. Raises
        ProtocolError for General, DeleteFailed if the store failed (the group is
        then back, empty, as the store still has it)."""
        hub = self.hub
        group = hub.groups.get(P.name_key(P.normalize(name)))
        if group is None:
            return None
        if group.key == P.name_key(GENERAL):
            raise ProtocolError(f"error: {GENERAL} cannot be deleted")
        hub.remove_group(group)
        self.schedule_flush()
        try:
            if self.backplane.cluster:
                self.backplane.delete_group(group)
            else:
                self.writer.delete_group(group)
        except ClusterUnavailable as err:
            hub.put_back_group(group)
            raise DeleteFailed(f"error: group not deleted: {err}") from None
        except Exception as err:
            log.error("group %s not deleted: the store failed: %s", group.name, err)
            hub.put_back_group(group)
            raise DeleteFailed(f"error: group not deleted, storage failed: {group.name}") from None
        return group.name

    # ------------------------------------------------------------ audit, group moderation

    def save_audit(self) -> None:
        """The audit entries the core recorded: to the store, on its writer thread."""
        batch, self.hub.audit = self.hub.audit, []
        self.writer.submit(self.store.append_audit, batch)

    def record_audit(self, action: str, group: str | None = None, target: str | None = None,
                     detail: str | None = None) -> None:
        """An administrator's change (admin API), in the audit: stored when this
        returns (the request's greenlet waits on the writer). A store failure is
        logged: the change itself is made."""
        self.hub.audit.append(AuditEntry(time.time(), ADMIN_ACTOR, action, group, target, detail))
        self._store_audit()

    def _store_audit(self) -> None:
        """Write the pending audit entries and wait for it; a failure is logged (the
        changes themselves are made)."""
        batch, self.hub.audit = self.hub.audit, []
        try:
            self.writer.call(self.store.append_audit, batch)
        except Exception as err:
            log.error("%d audit entries not stored (%s): %s", len(batch),
                      ", ".join(f"{e.action} {e.group or '-'} {e.target or '-'}" for e in batch),
                      err)

    def read_audit(self, limit: int, group: str | None) -> list[AuditEntry]:
        """The newest `limit` audit entries (of one group), newest first; raises what
        the store raises. After every entry submitted before (one writer thread)."""
        if self.hub.audit:
            self.save_audit()
        key = P.name_key(P.normalize(group)) if group is not None else None
        entries: list[AuditEntry] = self.writer.call(self.store.read_audit, limit, key)
        return entries

    def moderate(self, action: str, args: tuple[str, ...]) -> str:
        """An administrator's moderation command (admin API): run as `admin` with the
        owner's powers on every group, like a user's (same checks, notices, audit);
        its `ok:` line once stored. Raises ProtocolError, RolesNotStored."""
        hub = self.hub
        actor = self.admin_actor
        try:
            COMMANDS[action].run(hub, actor, args)
        except GroupPending as pending:  # being created: not visible yet
            raise ProtocolError(P.no_such_group(pending.group.name)) from None
        finally:
            hub.dirty.discard(actor)  # no session: the replies are read here
            lines = [data.decode().rstrip("\n") for data in actor.queue]
            actor.queue.clear()
            work = [item for item in hub.roles_work if item[0] is actor]
            hub.roles_work = [item for item in hub.roles_work if item[0] is not actor]
            self.schedule_flush()
        if hub.audit:  # stored before the answer, like the change itself
            self._store_audit()
        for _, group, line, change in work:
            if change is not None:  # a cluster: made through Redis, then applied here
                result = self.roles_in_cluster(change, line)
                if result == P.CLUSTER_UNAVAILABLE:
                    raise RolesNotStored(result)
                if result != line:
                    raise ProtocolError(result)
                lines.append(line)
                continue
            try:  # a durable store: acknowledged once stored
                self.writer.call(self.store.put_roles, group.name, moderation.snapshot(group))
            except Exception as err:
                log.error("storing the roles of group %s failed: %s", group.name, err)
                raise RolesNotStored(P.roles_not_stored(group.name)) from None
            lines.append(line)
        return lines[0] if lines else ""

    def group_roles(self, group: Group) -> dict[str, Any]:
        """A group's owner, moderators, settings, invitations, bans and mutes (with
        their end, None: until unmuted) for the admin API; expired mutes left out."""
        hub = self.hub
        book = self.accounts

        def shown(key: str) -> str:
            user = hub.users.get(key)
            if user is not None:
                return user.name
            account = book.accounts.get(key) if book.enabled else None
            return account.name if account is not None else key

        now = time.time()
        return {
            "owner": shown(group.owner) if group.owner is not None else None,
            "moderators": sorted(group.mods.values(), key=P.name_key),
            "settings": dict(zip(P.SETTINGS, group.settings(), strict=True)),
            "invitations": sorted(group.invited.values(), key=P.name_key),
            "bans": sorted(group.banned.values(), key=P.name_key),
            "mutes": sorted(({"user": shown(key),
                              "until": None if until == float("inf") else P.utc_stamp(until)}
                             for key, until in group.muted.items() if until > now),
                            key=lambda m: P.name_key(str(m["user"]))),
        }

    def kick_local(self, name: str, reason: str = "kicked") -> str | None:
        """End the session of `name` on this node only: its display name, or None
        if it is not here. Reason `kicked` (an administrator, here or on another
        node) or `replaced` (a login to its account, here or elsewhere); the user
        hears which before the close, and the name is free when this returns."""
        session = self.find_session(name)
        if session is None or session.user is None:
            return None
        shown = session.user.name
        self._end_session(session, P.REPLACED if reason == "replaced" else P.KICKED, reason)
        return shown

    # Accounts changed by other nodes (cluster mode; backplane.AccountEvents).

    def account_updated(self, key: str, account: Account | None) -> None:
        book = self.accounts
        if not book.enabled:
            return
        if account is None:
            gone = book.drop(key)
            if gone is not None:
                self.end_account_session(gone.name, P.KICKED, "kicked")
            return
        book.put(account)
        if account.suspended:
            self.end_account_session(account.name, P.KICKED, "kicked")

    def login_failed_elsewhere(self, key: str, at: float) -> None:
        if key in self.accounts.accounts:
            self.accounts.throttle.failed(key, at)

    def kick(self, name: str, local_only: bool = False) -> str | None:
        """End a user's session (reason `kicked`); its display name, or None if unknown.

        The name is free when this returns, as after `exit`: the logout happens
        here rather than when the session's greenlet next runs. A user of another
        node is kicked there (cluster mode), and this waits until it is gone."""
        shown = self.kick_local(name)
        if shown is not None or local_only:
            return shown
        remote = self.backplane.kick(name)
        return remote[0] if remote is not None else None


    # ------------------------------------------------------------ metrics

    def scrape(self) -> Scrape:
        """What /metrics shows, taken when Prometheus scrapes (metrics.ChatCollector)."""
        hub = self.hub
        sessions = list(self.sessions)
        self.limits.purge()  # so the gauge shows no entry that is already due to go
        return Scrape(
            connections_total=self.connections_total,
            connections_active=len(sessions),
            connections_unauthenticated=self.unauth,
            rejected=self.rejected,
            disconnects=self.disconnects,
            logins=self.logins,
            accounts=len(self.accounts),
            limited_addresses=len(self.limits.entries),
            sendq_bytes=sum(s.qbytes for s in sessions),
            received_bytes=self.closed_bytes_in + sum(s.bytes_in for s in sessions),
            sent_bytes=self.closed_bytes_out + sum(s.bytes_out for s in sessions),
            users=len(hub.users),
            groups=len(hub.groups),
            chat=hub.stats,
            history_bytes=hub.history_bytes,
            history_budget=hub.history_budget,
            started_at=self.started_at,
            stopping=self.stopping,
            max_clients=self.config.max_clients,
            http_closed=self.http.closed() if self.http is not None else None,
            cluster=self._cluster_scrape(),
            store=(StoreScrape(stalled=bool(self.writer.stalled()), stats=self.writer.stats)
                   if self.store.durable else None),
            websocket_active=sum(s.framer is not None for s in sessions),
            transports_active=Counter(s.transport for s in sessions),
            transports_total=self.transports_total,
        )

    def _cluster_scrape(self) -> ClusterScrape | None:
        backplane = self.backplane
        if not backplane.cluster:
            return None
        hub = self.hub
        return ClusterScrape(
            node=backplane.node,
            up=not hub.unavailable,
            nodes=len({u.node for u in hub.remote_users.values()} | {backplane.node}),
            remote_users=len(hub.remote_users),
            subscribed_groups=len(backplane.subscribed),
            stats=backplane.stats,
        )


class Admin:
    """The admin API's view of the server (http.AdminPort): what it may read and do.

    Reads go to the hub and the server's counters; the operations are the
    server's (`kick`, `create_group`, `delete_group`) and the announcement, which
    reaches this node's users through the hub and the other nodes' through the
    backplane."""

    def __init__(self, server: ChatServer) -> None:
        self._server = server
        self._hub = server.hub

    @property
    def node(self) -> str | None:
        return self._server.backplane.node or None

    @property
    def started_at(self) -> float:
        return self._server.started_at

    @property
    def stopping(self) -> bool:
        return self._server.stopping

    @property
    def max_line(self) -> int:
        return self._server.config.max_line

    @property
    def accounts(self) -> AccountService:
        return self._server.account_service

    @property
    def users(self) -> Mapping[str, User]:
        return self._hub.users

    @property
    def remote_users(self) -> Mapping[str, RemoteUser]:
        return self._hub.remote_users

    @property
    def groups(self) -> Mapping[str, Group]:
        return self._hub.groups

    @property
    def chat(self) -> ChatCounters:
        return self._hub.stats

    @property
    def connections_active(self) -> int:
        return len(self._server.sessions)

    @property
    def connections_total(self) -> int:
        return self._server.connections_total

    @property
    def rejected(self) -> Mapping[str, int]:
        return self._server.rejected

    @property
    def disconnects(self) -> Mapping[str, int]:
        return self._server.disconnects

    def connection(self, user: User) -> Connection:
        # The server logs users in with their Session only (`ChatServer.login`).
        return cast(Session, user.conn)

    def store_stalled(self) -> float:
        return self._server.writer.stalled()

    def cluster_status(self) -> dict:
        return self._server.backplane.status()

    def kick(self, name: str) -> str | None:
        return self._server.kick(name)

    def create_group(self, name: str) -> Group:
        return self._server.create_group(name)

    def delete_group(self, name: str) -> str | None:
        return self._server.delete_group(name)

    def moderate(self, action: str, args: tuple[str, ...]) -> str:
        return self._server.moderate(action, args)

    def group_roles(self, group: Group) -> dict[str, Any]:
        return self._server.group_roles(group)

    def record(self, action: str, group: str | None = None, target: str | None = None,
               detail: str | None = None) -> None:
        self._server.record_audit(action, group, target, detail)

    def audit(self, limit: int, group: str | None) -> list[AuditEntry]:
        return self._server.read_audit(limit, group)

    def announce(self, text: str, group: Group | None) -> int:
        server = self._server
        receivers = self._hub.announce(text, group.name if group is not None else None)
        receivers += server.backplane.announce(text, group)  # other nodes' users
        server.schedule_flush()
        return receivers

    def reload(self) -> dict[str, Any]:
        return self._server.reload()


def serve(config: Config, resolved: Resolved | None = None) -> int:
    """Run until SIGTERM/SIGINT (SIGHUP reloads); the process exit code."""
    limit = raise_fd_limit()
    if resolved is not None and resolved.path is not None:
        log.info("config file %s (SIGHUP reloads it)", resolved.path)
    tune_gevent()
    tune_gc()
    if config.redis:
        from .backplane.store import RedisStore

        store: Store = RedisStore(config.redis)
    else:
        store = open_store(config)
    server = None
    try:
        server = ChatServer(config, store, resolved)
        server.load()
        server.start()
    except BaseException:
        if server is not None:
            server.backplane.stop()  # leave a cluster it joined at once, not after a TTL
        store.close()
        raise
    log.info("open-files limit %d: room for about %d clients (max-clients %d)",
             limit, max(limit - 64, 0), config.max_clients)
    server.install_signal_handlers()
    sdnotify.ready(f"listening on {config.host}:{server.port}", main_pid=True)
    server.stopped.wait()
    return 0
