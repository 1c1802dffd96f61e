"""Locust users for chatsrv: one class per scenario, each task tagged with the scenario name.

    locust -f loadtest/locustfile.py ChattyUser --host tcp://127.0.0.1:50000
    locust -f loadtest/locustfile.py --tags chatty churn --host tcp://127.0.0.1:50000

class        tag      what each user does
ChattyUser   chatty   joins --chat-join of --chat-groups groups, posts --chat-rate msg/s
PrivateUser  private  paired with another PrivateUser, sends --private-rate msg/s to it
LurkerUser   lurkers  joins --chat-join groups, then only reads
ChurnUser    churn    connect, login, groups, join, one post, exit; pause; repeat
AccountUser  accounts register once (guest + `register` + `token`), then log in again
                      by token (3/4) or password (1/4); pause; repeat

Every delivery a user receives fires `deliver public` / `deliver private` with
the end-to-end latency; see docs/loadtesting.md for how failures are decided.
"""

# ruff: noqa: E402  (imports follow the sys.path fix below)
from __future__ import annotations

import itertools
import logging
import os
import random
import sys
import time
import uuid

import gevent
from locust import User, constant, events, tag, task

# Run as a locustfile itself, this file must still find the loadtest package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadtest import settings
from loadtest.client import ChatClient, error_starting, locust_fire, of_kind, ok_with
from loadtest.protocol import (
    Kind,
    Line,
    decode_payload,
    encode_payload,
    make_name,
    parse_host,
)
from loadtest.tracker import GroupDirectory, PairRegistry, PendingDeliveries, SequenceChecker

log = logging.getLogger(__name__)

DEFAULT_HOST = "tcp://127.0.0.1:50000"


class Shared:
    """Per-process state shared by all users of this Locust process (one per worker)."""

    def __init__(self) -> None:
        self.pending = PendingDeliveries(timeout=10.0)
        self.groups = GroupDirectory()
        self.pairs = PairRegistry()
        self.watchdog: gevent.Greenlet | None = None
        # Names must be unique across workers and runs; a random tag per process does it.
        self.tag = uuid.uuid4().hex[:6]
        self.counter = itertools.count(1)

    def start(self, environment) -> None:
        """Start the missing-delivery watchdog once per test (idempotent)."""
        if self.watchdog is None:
            timeout = settings.get(environment.parsed_options, "delivery_timeout")
            self.pending.timeout = timeout
            self.watchdog = gevent.spawn(self._watch, locust_fire(environment.events), timeout)

    def stop(self) -> None:
        # Messages still in flight when the test stops are nobody's failure. Pairs stay:
        # users stopping one by one still need to know whose partner left on purpose.
        if self.watchdog is not None:
            self.watchdog.kill(block=False)
            self.watchdog = None
        self.pending.clear()

    def reset(self) -> None:
        self.stop()
        self.groups.clear()
        self.pairs.clear()

    def _watch(self, fire, timeout: float) -> None:
        reason = f"missing: not delivered within {timeout:g}s"
        while True:
            gevent.sleep(min(1.0, timeout / 4))
            for m in self.pending.overdue(time.monotonic()):
                log.warning("missing delivery %s", m)
                fire(f"deliver {m.kind}", timeout * 1000.0, 0, reason)

    def new_name(self, role: str) -> str:
        return make_name(role, self.tag, next(self.counter))


shared = Shared()


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    settings.add_arguments(parser)


@events.init.add_listener
def _select_by_tags(environment, **_kw) -> None:
    """With --tags/--exclude-tags, run only the scenarios that keep a task.

    Locust filters tasks by tag but keeps user classes left without any, and those
    fail when spawned; dropping them here makes a tag select whole scenarios.
    """
    opts = environment.parsed_options
    tags = set(getattr(opts, "tags", None) or ())
    excluded = set(getattr(opts, "exclude_tags", None) or ())
    if not (tags or excluded):
        return
    keep = [u for u in environment.user_classes if _has_task(u, tags, excluded)]
    if not keep:
        raise SystemExit(f"no scenario left by --tags {sorted(tags)} --exclude-tags {sorted(excluded)}")
    environment.user_classes[:] = keep  # the runner reads this very list


def _has_task(user_class, tags: set[str], excluded: set[str]) -> bool:
    for t in user_class.tasks:
        names = getattr(t, "locust_tag_set", set())
        if (not tags or names & tags) and not names & excluded:
            return True
    return False


@events.test_start.add_listener
def _on_test_start(environment, **_kw) -> None:
    shared.reset()
    shared.start(environment)


@events.test_stopping.add_listener
def _on_test_stopping(environment, **_kw) -> None:
    shared.stop()


class ChatUser(User):
    """A Locust user holding one chat session; reconnects under a fresh name when it breaks."""

    abstract = True
    host = DEFAULT_HOST
    role = "u"  # short tag in user names, so the server's `users` list shows who is who

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.chat: ChatClient | None = None
        self.name = ""
        self.fire = locust_fire(environment.events)
        self.checker = SequenceChecker()
        self.seq: dict[tuple[str, str], int] = {}
        self.joined: list[str] = []
        self._next_at = 0.0  # monotonic time the next task should start (see paced())

    def opt(self, dest: str):
        return settings.get(self.environment.parsed_options, dest)

    def mean_interval(self) -> float:
        """Mean seconds between this user's tasks (spreads the first one, too)."""
        return 1.0

    def wait_time(self) -> float:
        return self.paced(self.mean_interval())

    def paced(self, mean_interval: float) -> float:
        """Wait so that tasks *start* every `mean_interval` s on average (jittered).

        A plain wait after each task would add the task's own round trip to every
        interval, so a slower server would be offered less load than configured.
        A user that falls behind starts at once but does not burst to catch up.
        """
        now = time.monotonic()
        base = self._next_at or now  # the first task just ran: pace from here
        self._next_at = max(now, base + _jittered(mean_interval))
        return self._next_at - now

    # --- session ------------------------------------------------------------
    def on_start(self) -> None:
        shared.start(self.environment)
        # Spread first actions so users spawned together don't fire in lockstep.
        gevent.sleep(random.uniform(0, self.mean_interval()))
        self.ensure_session()

    def on_stop(self) -> None:
        self.drop_session(polite=False)

    def ensure_session(self) -> bool:
        """Connect, log in and run `setup()` unless a live session exists."""
        if self.chat is not None and self.chat.alive:
            return True
        self.drop_session(polite=False)
        host, port = parse_host(self.host)
        chat = ChatClient(host, port, self.fire, self.on_delivery, self.opt("reply_timeout"))
        # Held from the start, so a stop that lands mid-login still closes it (on_stop).
        self.chat, self.name = chat, shared.new_name(self.role)
        self.checker, self.seq, self.joined = SequenceChecker(), {}, []
        if not (chat.connect() and chat.login(self.name)):
            self.drop_session(polite=False)
            gevent.sleep(1.0)  # don't hammer a server that refuses us
            return False
        return self.setup()

    def setup(self) -> bool:
        """Per-scenario work right after login."""
        return True

    def drop_session(self, polite: bool) -> None:
        """Leave the shared registries first, so nobody expects deliveries to us any more."""
        chat, self.chat = self.chat, None
        if chat is None:
            return
        shared.groups.remove_user(self.name)
        shared.pending.forget_receiver(self.name)
        shared.pairs.leave(self.name)
        try:
            if polite and chat.alive:
                chat.exit()
            else:
                chat.send_quietly("exit")  # frees the name at once instead of at EOF detection
        finally:
            chat.close()  # also when the stop kills us while `exit` waits for `ok: bye`

    # --- commands -----------------------------------------------------------
    def list_groups(self) -> tuple[str, ...]:
        reply = self.chat.call("groups", "groups", of_kind(Kind.GROUPS))
        return reply.names if reply is not None else ()

    def join_group(self, group: str) -> bool:
        """Join, creating the group first if it doesn't exist yet."""
        joined, no_group = ok_with("joined group"), error_starting("no such group")
        reply = self.chat.call("join", f"join {group}", joined, accept_error=no_group)
        if reply is not None and reply.kind is Kind.ERROR:
            # Another user may create it first: that reply is fine as well.
            self.chat.call(
                "create",
                f"create {group}",
                ok_with("created group"),
                accept_error=error_starting("group already exists"),
            )
            reply = self.chat.call("join", f"join {group}", joined)
        if reply is None:
            return False
        # Registered only now: from here on the server must deliver this group's posts to us.
        shared.groups.add(group, self.name)
        self.joined.append(group)
        return True

    def join_some(self) -> bool:
        prefix, n = self.opt("group_prefix"), max(1, self.opt("chat_groups"))
        picks = random.sample(range(n), min(n, max(0, self.opt("chat_join"))))
        return all(self.join_group(f"{prefix}{i}") for i in picks)

    def post(self, kind: str, target: str) -> bool:
        """Send one sequenced, timestamped public or private message (fenced by a ping)."""
        seq = self.seq.get((kind, target), 0) + 1
        key = (kind, target, self.name, seq)
        if kind == "public":
            receivers = shared.groups.members(target) - {self.name}
        else:
            receivers = {target}
        # Expect before sending: the delivery can reach a receiver before our pong does.
        shared.pending.expect(key, receivers, time.monotonic())
        text = encode_payload(seq, size=self.opt("msg_size"))
        reply = self.chat.call(
            kind,
            f"{kind} {target} {text}",
            None,
            fence=True,
            accept_error=self._partner_gone(kind, target),
        )
        if reply is None or reply.kind is Kind.ERROR:
            shared.pending.cancel(key)  # not accepted, so not delivered: the seq is reused
            return False
        self.seq[(kind, target)] = seq
        return True

    @staticmethod
    def _partner_gone(kind: str, target: str):
        """`no such user` for a partner that left on purpose is not the server's fault."""
        if kind != "private":
            return None
        return lambda line: line.text.startswith("no such user") and shared.pairs.is_gone(target)

    # --- deliveries (called from the reader greenlet) -------------------------
    def on_delivery(self, line: Line, received_at: float, nbytes: int) -> None:
        payload = decode_payload(line.text)
        if payload is None:
            return  # a human or another tool talking: not ours to measure
        kind = line.kind.value
        target = line.group if line.kind is Kind.PUBLIC else self.name
        problem = self.checker.check(kind, target, line.user, payload.seq)
        shared.pending.delivered((kind, target, line.user, payload.seq), self.name)
        latency_ms = max(0.0, (received_at - payload.sent_at) * 1000.0)
        self.fire(f"deliver {kind}", latency_ms, nbytes, problem)


class ChattyUser(ChatUser):
    """Joins a few groups and posts to a random one of them at --chat-rate."""

    role = "c"

    def mean_interval(self) -> float:
        return 1.0 / max(self.opt("chat_rate"), 1e-3)

    def setup(self) -> bool:
        self.list_groups()
        return self.join_some()

    @tag("chatty")
    @task
    def chat_public(self) -> None:
        if self.ensure_session() and self.joined:
            self.post("public", random.choice(self.joined))


class PrivateUser(ChatUser):
    """Sends to its partner at --private-rate; while unpaired, to itself."""

    role = "p"

    def mean_interval(self) -> float:
        return 1.0 / max(self.opt("private_rate"), 1e-3)

    @tag("private")
    @task
    def chat_private(self) -> None:
        if self.ensure_session():
            partner = shared.pairs.partner(self.name) or self.name
            self.post("private", partner)


class LurkerUser(ChatUser):
    """Connected and reading; its only traffic is the deliveries it measures."""

    role = "l"
    wait_time = constant(2.0)  # the task only checks the session is still alive

    def mean_interval(self) -> float:
        return 2.0

    def setup(self) -> bool:
        return self.join_some()

    @tag("lurkers")
    @task
    def lurk(self) -> None:
        self.ensure_session()  # only reconnects after a failure


class ChurnUser(ChatUser):
    """Short sessions: connect, login, a few commands, exit, pause, repeat."""

    role = "x"

    def mean_interval(self) -> float:
        return self.opt("churn_pause")

    def wait_time(self) -> float:
        return _jittered(self.mean_interval())  # a pause between sessions, not a pace

    def on_start(self) -> None:
        shared.start(self.environment)
        gevent.sleep(random.uniform(0, self.mean_interval()))

    @tag("churn")
    @task
    def session(self) -> None:
        if not self.ensure_session():
            return
        self.list_groups()
        prefix, n = self.opt("group_prefix"), max(1, self.opt("chat_groups"))
        group = f"{prefix}{random.randrange(n)}"
        if self.join_group(group):
            self.post("public", group)
        self.drop_session(polite=True)


class AccountUser(ChatUser):
    """Logins to accounts (`--accounts optional`, the default): register once, then
    log in again and again, by password (argon2id on the server) or by token.

    Measures login storms, e.g. every student logging in again after a restart:
    `login password` and `login token` events (connect to `you joined ...`), and
    `register`. Three token logins for one password login, like clients that keep
    a token ("remember me")."""

    role = "a"

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.password = uuid.uuid4().hex  # 32 characters: a valid password
        self.token = ""

    def mean_interval(self) -> float:
        return self.opt("churn_pause")

    def wait_time(self) -> float:
        return _jittered(self.mean_interval())

    def setup(self) -> bool:
        """First session: a guest that registers its name and keeps a token."""
        registered = self.chat.call("register", f"register {self.password}",
                                    ok_with("registered"))
        reply = self.chat.call("token", "token", ok_with("token")) if registered else None
        if reply is None:
            return False
        self.token = reply.raw.split("ok: token ", 1)[1].strip()
        return True

    def _login_again(self, event: str, secret: str) -> None:
        self.drop_session(polite=True)
        host, port = parse_host(self.host)
        chat = ChatClient(host, port, self.fire, self.on_delivery, self.opt("reply_timeout"))
        self.chat = chat
        if not chat.connect():
            self.drop_session(polite=False)
            return
        # The one-line form; only the event name reaches Locust's statistics.
        reply = chat.call(event, f"{self.name} {secret}", of_kind(Kind.JOINED_GENERAL),
                          partial=of_kind(Kind.CONNECTED))
        if reply is None:
            self.drop_session(polite=False)
        else:
            chat.name = self.name

    @tag("accounts")
    @task(3)
    def token_login(self) -> None:
        if self.ensure_session() and self.token:
            self._login_again("login token", self.token)

    @tag("accounts")
    @task(1)
    def password_login(self) -> None:
        if self.ensure_session() and self.token:
            self._login_again("login password", self.password)


def _jittered(mean: float) -> float:
    """Uniform in [0.5, 1.5) x mean: keeps the average rate without lockstep bursts."""
    return random.uniform(0.5, 1.5) * mean
