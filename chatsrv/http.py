"""The one HTTP endpoint, served by gevent's pywsgi inside the server process.

Open: `GET /metrics` (Prometheus text), `GET /healthz` (the loop answers),
`GET /readyz` (accepting clients; 503 once shutdown began, or while the store
is stalled: see `StoreWriter.stalled`).
Under `/api/v1`, JSON, every request needs `Authorization: Bearer <token>`
(401 otherwise, before any routing, so an unauthenticated caller learns nothing):

    GET  /api/v1/users                 logged-in users with connection details
    POST /api/v1/users/{name}/kick     end that session, reason `kicked`
    GET  /api/v1/groups                every group with its member count
    POST /api/v1/groups  {"name"}      create a group (409 when it exists or when
                                       --max-groups is reached)
    GET  /api/v1/groups/{name}         one group: members, owner, moderators, settings,
                                       invitations, bans, mutes (with their end)
    DELETE /api/v1/groups/{name}       delete a group and its history (204; General: 400)
    POST /api/v1/groups/{name}/{action} {"user", "minutes"?, "reason"?}   a moderation
                                       command (mod unmod invite uninvite kick ban unban
                                       mute unmute) as the administrator `admin`
    POST /api/v1/groups/{name}/settings {"join"?, "post"?, "history"?, "visibility"?}
    GET  /api/v1/audit?limit=N&group=G the audit log, newest first (limit 1-1000, 100)
    POST /api/v1/announce {"text", "group"?}   `* announcement: <text>`
    GET  /api/v1/stats                 uptime, users, groups, counters
    POST /api/v1/reload                re-read the config file (as SIGHUP): what changed,
                                       what needs a restart (400, nothing changed: invalid)

Errors are `{"error": "..."}`: 400 bad JSON or field (and a moderation command's
refusal, in the chat protocol's words without `error: `), 401, 404 unknown name
or path, 405 wrong method, 409 group exists or too many groups, 413 body too large, 503 the store (or,
in a cluster, Redis) failed.
Every change an administrator makes here is in the audit log (actor `admin`).
Handlers run in their own greenlets on the chat server's loop, so what they read
and change needs no locks. They never see the server: they get an `AdminPort`
(below), which the composition root implements (`server.Admin`), and /metrics
gets the function that takes a `metrics.Scrape`.

Slow clients (slowloris): a connection has `--http-timeout` seconds (10) to send
its whole request, headers and body, and an idle keep-alive connection gets
the same; then it is closed (`_DeadlineHandler`). The body is read before the
application runs, so a handler never waits on a client. Connections that have
not sent a complete request are capped (`HTTP_WAITING`): past the cap the one
that has waited longest is closed, so /healthz and /metrics always get in.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

import gevent
from gevent import Timeout
from gevent.pool import Pool
from gevent.pywsgi import Input, LoggingLogAdapter, WSGIHandler, WSGIServer
from prometheus_client import make_wsgi_app

from . import __version__
from .accounts import AccountError, Exists, Invalid, NotFound, Unavailable
from .auth import bearer_ok
from .core import protocol as P
from .core.accounts import Account
from .core.audit import AuditEntry
from .core.errors import (
    CreateFailed,
    DeleteFailed,
    GroupExists,
    ProtocolError,
    RolesNotStored,
    TooManyGroups,
)
from .metrics import DISCONNECT_REASONS, ChatCounters, Scrape, make_registry

if TYPE_CHECKING:
    from .core.model import Group, RemoteUser, User

log = logging.getLogger("chatsrv.http")
audit = logging.getLogger("chatsrv.admin")

API = "/api/v1"
MAX_BODY = 64 * 1024
# Connections at once. Each costs a greenlet and a descriptor, no more: requests
# are small and quick, and the chat clients come first.
HTTP_CONNECTIONS = 1024
# Of those, connections still sending their request (or idle between two): past
# this the oldest is closed, so slow senders can never take every connection.
HTTP_WAITING = 256
AUDIT_LIMIT_MAX = 1000
MODERATION_ACTIONS = ("mod", "unmod", "invite", "uninvite", "kick", "ban", "unban", "mute",
                      "unmute")

STATUS = {
    200: "200 OK", 201: "201 Created", 204: "204 No Content", 400: "400 Bad Request",
    401: "401 Unauthorized", 404: "404 Not Found", 405: "405 Method Not Allowed", 409: "409 Conflict",
    413: "413 Payload Too Large", 500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: list | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


Response = tuple[int, object]


class Connection(Protocol):
    """What the API shows of a local user's connection (the transport's session)."""

    @property
    def peer(self) -> str: ...
    @property
    def connected_at(self) -> float: ...
    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...
    @property
    def qbytes(self) -> int: ...


class AccountsPort(Protocol):
    """What the admin API does with accounts (`accounts.AccountService`). Each
    change blocks only the request's greenlet (hashing and the disk run on threads)."""

    @property
    def enabled(self) -> bool: ...
    def all(self) -> list[Account]: ...
    def create(self, name: str, password: str | None = None) -> tuple[Account, str | None]: ...
    def delete(self, name: str) -> Account: ...
    def reset(self, name: str, password: str | None = None) -> tuple[Account, str | None]: ...
    def suspend(self, name: str, suspended: bool = True) -> Account: ...


class AdminPort(Protocol):
    """Everything the admin API and the health checks read and do, named once;
    `server.Admin` implements it over the server's state. The users and groups are
    the hub's own (read here, changed only through the methods)."""

    @property
    def node(self) -> str | None:
        """This node's id in a cluster; None alone."""
    @property
    def started_at(self) -> float: ...
    @property
    def stopping(self) -> bool: ...
    @property
    def max_line(self) -> int: ...
    @property
    def users(self) -> Mapping[str, User]:
        """This node's logged-in users, by name key."""
    @property
    def remote_users(self) -> Mapping[str, RemoteUser]:
        """Users of the other nodes this node knows (cluster mode), by name key."""
    @property
    def groups(self) -> Mapping[str, Group]:
        """Every group, by name key."""
    @property
    def chat(self) -> ChatCounters: ...
    @property
    def connections_active(self) -> int: ...
    @property
    def connections_total(self) -> int: ...
    @property
    def rejected(self) -> Mapping[str, int]: ...
    @property
    def disconnects(self) -> Mapping[str, int]: ...

    @property
    def accounts(self) -> AccountsPort:
        """Accounts (PROTOCOL.md v2): list them, and the changes that hash or write."""

    def connection(self, user: User) -> Connection:
        """A local user's connection."""
    def store_stalled(self) -> float:
        """Seconds the store has been stuck; 0.0 when it is not."""
    def cluster_status(self) -> dict: ...
    def kick(self, name: str) -> str | None:
        """End a user's session, on any node: its display name, or None if unknown."""
    def create_group(self, name: str) -> Group:
        """Durable when it returns; raises ProtocolError, GroupExists, TooManyGroups,
        CreateFailed."""
    def delete_group(self, name: str) -> str | None:
        """Durable when it returns: the display name, or None if unknown; raises
        ProtocolError (General), DeleteFailed."""
    def announce(self, text: str, group: Group | None) -> int:
        """`* announcement: <text>` to a group's members (on every node), or to
        everyone; returns how many receive it."""
    def moderate(self, action: str, args: tuple[str, ...]) -> str:
        """A moderation command (`set`, `kick`, ...) as the administrator: its `ok:`
        line once stored; raises ProtocolError (the refusal), RolesNotStored."""
    def group_roles(self, group: Group) -> dict[str, Any]:
        """Owner, moderators, settings, invitations, bans, mutes."""
    def record(self, action: str, group: str | None = None, target: str | None = None,
               detail: str | None = None) -> None:
        """An administrator's change, into the audit log (stored when it returns)."""
    def audit(self, limit: int, group: str | None) -> list[AuditEntry]:
        """The newest audit entries (of one group), newest first; raises on store failure."""
    def reload(self) -> dict[str, Any]:
        """Re-read the config file (as SIGHUP): {"ok", "changed", "restart_needed"},
        or {"ok": False, "error"} with nothing changed."""


class AdminAPI:
    """The WSGI application; `AdminHTTP` serves it."""

    def __init__(self, admin: AdminPort, scrape: Callable[[], Scrape], token: str) -> None:
        self.admin = admin
        self.token = token
        self.metrics = make_wsgi_app(make_registry(scrape))
        # (method, path pattern, handler); patterns match the path after /api/v1.
        self.routes: list[tuple[str, re.Pattern, Callable[..., Response]]] = [
            ("GET", re.compile(r"/users"), self.list_users),
            ("POST", re.compile(r"/users/([^/]+)/kick"), self.kick_user),
            ("GET", re.compile(r"/groups"), self.list_groups),
            ("POST", re.compile(r"/groups"), self.create_group),
            ("GET", re.compile(r"/groups/([^/]+)"), self.show_group),
            ("POST", re.compile(r"/groups/([^/]+)/settings"), self.group_settings),
            ("POST", re.compile(r"/groups/([^/]+)/(" + "|".join(MODERATION_ACTIONS) + ")"),
             self.moderate),
            ("GET", re.compile(r"/audit"), self.audit_log),
            ("DELETE", re.compile(r"/groups/([^/]+)"), self.delete_group),
            ("GET", re.compile(r"/accounts"), self.list_accounts),
            ("POST", re.compile(r"/accounts"), self.create_account),
            ("DELETE", re.compile(r"/accounts/([^/]+)"), self.delete_account),
            ("POST", re.compile(r"/accounts/([^/]+)/password"), self.reset_password),
            ("POST", re.compile(r"/accounts/([^/]+)/(suspend|unsuspend)"), self.suspend_account),
            ("POST", re.compile(r"/announce"), self.announce),
            ("GET", re.compile(r"/stats"), self.stats),
            ("POST", re.compile(r"/reload"), self.reload),
        ]

    # ------------------------------------------------------------ dispatch

    def __call__(self, environ: dict, start_response) -> list[bytes]:
        method = environ["REQUEST_METHOD"]
        try:
            path = _path(environ)
            if path == "/metrics":
                _allow(method, "GET", "HEAD")
                return self.metrics(environ, start_response)
            if path in ("/healthz", "/readyz"):
                _allow(method, "GET", "HEAD")
                status, body = self.health(path)
            elif path == API or path.startswith(API + "/"):
                status, body = self.api(environ, method, path[len(API):])
            else:
                raise HTTPError(404, f"no such endpoint: {path}")
            headers = []
        except HTTPError as err:
            status, body, headers = err.status, {"error": str(err)}, err.headers
        except Exception:
            log.exception("admin HTTP request %s %s failed", method, environ.get("PATH_INFO"))
            status, body, headers = 500, {"error": "internal server error"}, []
        if status == 204:
            start_response(STATUS[status], [("Cache-Control", "no-store"), *headers])
            return []
        data = json.dumps(body, ensure_ascii=False).encode() + b"\n"
        start_response(STATUS[status], [
            ("Content-Type", "application/json; charset=utf-8"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
            *headers,
        ])
        return [data] if method != "HEAD" else []

    def health(self, path: str) -> Response:
        if path == "/healthz":
            return 200, {"status": "ok"}
        if self.admin.stopping:
            return 503, {"status": "shutting down"}
        stuck = self.admin.store_stalled()
        if stuck:
            return 503, {"status": "store stalled", "seconds": round(stuck, 1)}
        return 200, {"status": "ready"}

    def reload(self, environ: dict) -> Response:
        result = self.admin.reload()
        return (200 if result["ok"] else 400), result

    def api(self, environ: dict, method: str, path: str) -> Response:
        if not bearer_ok(environ.get("HTTP_AUTHORIZATION"), self.token):
            # Rate-limited with a count, like errors (logs.LogGuard): anyone can send these.
            log.info("admin API: 401 for %s %s%s from %s", method, API, path,
                     environ.get("REMOTE_ADDR"), extra={"ratelimit": True})
            raise HTTPError(401, "missing or wrong bearer token",
                            [("WWW-Authenticate", 'Bearer realm="chatsrv"')])
        path = path.rstrip("/") or "/"
        allowed = []
        for verb, pattern, handler in self.routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if verb == method:
                return handler(environ, *match.groups())
            allowed.append(verb)
        if allowed:
            raise HTTPError(405, f"method {method} not allowed here",
                            [("Allow", ", ".join(sorted(set(allowed))))])
        raise HTTPError(404, f"no such endpoint: {API}{path}")

    # ------------------------------------------------------------ users

    def list_users(self, environ: dict) -> Response:
        """Every user of the cluster; those of other nodes with what this node knows."""
        admin = self.admin
        users = [self._user(u, admin.connection(u)) for u in admin.users.values()]
        users.extend(self._remote_user(u) for u in admin.remote_users.values())
        users.sort(key=lambda u: P.name_key(u["name"]))
        return 200, {"users": users}

    def _remote_user(self, user: RemoteUser) -> dict:
        groups = (self.admin.groups.get(k) for k in user.groups)
        return {
            "name": user.name,
            "node": user.node,
            "peer": user.peer,
            "connected_at": P.utc_stamp(user.since),
            "logged_in_at": P.utc_stamp(user.since),
            "groups": sorted((g.name for g in groups if g is not None), key=P.name_key),
            "bytes_in": None,
            "bytes_out": None,
            "sendq_bytes": None,
        }

    def _user(self, user: User, session: Connection) -> dict:
        return {
            "name": user.name,
            "node": self.admin.node,
            "peer": session.peer,
            "connected_at": P.utc_stamp(session.connected_at),
            "logged_in_at": P.utc_stamp(user.since),
            "groups": sorted((g.name for g in user.groups.values()), key=P.name_key),
            "bytes_in": session.bytes_in,
            "bytes_out": session.bytes_out,
            "sendq_bytes": session.qbytes,
        }

    def kick_user(self, environ: dict, name: str) -> Response:
        kicked = self.admin.kick(name)
        if kicked is None:
            raise HTTPError(404, f"no such user: {name}")
        audit.info("admin: kicked user=%s (from %s)", kicked, environ.get("REMOTE_ADDR"))
        return 200, {"kicked": kicked}

    # ------------------------------------------------------------ groups

    def list_groups(self, environ: dict) -> Response:
        groups = sorted(self.admin.groups.values(), key=lambda g: g.key)
        return 200, {"groups": [
            {"name": g.name, "members": g.size(), "created_at": P.utc_stamp(g.created_at),
             "created_by": g.created_by or None}
            for g in groups
        ]}

    def show_group(self, environ: dict, name: str) -> Response:
        group = self.admin.groups.get(P.name_key(P.normalize(name)))
        if group is None:
            raise HTTPError(404, f"no such group: {name}")
        return 200, self._group(group)

    def _group(self, group: Group) -> dict[str, Any]:
        members = [u.name for u in group.members.values()] + list(group.remote.values())
        return {
            "name": group.name,
            "created_at": P.utc_stamp(group.created_at),
            "created_by": group.created_by or None,
            "members": sorted(members, key=P.name_key),
            **self.admin.group_roles(group),
        }

    def _find_group(self, name: str) -> Group:
        group = self.admin.groups.get(P.name_key(P.normalize(name)))
        if group is None:
            raise HTTPError(404, f"no such group: {name}")
        return group

    def _run(self, action: str, args: tuple[str, ...]) -> str:
        """A moderation command as the administrator; its refusal as an HTTPError."""
        try:
            return self.admin.moderate(action, args)
        except RolesNotStored as err:
            raise HTTPError(503, _text(err)) from None
        except ProtocolError as err:
            text = _text(err)
            if text.startswith("no such group: "):
                raise HTTPError(404, text) from None
            raise HTTPError(400, text) from None

    def _check_text(self, field: str, text: str) -> None:
        """Text that reaches users in a chat line: no control characters, fits a line."""
        if P.has_control(text):
            raise HTTPError(400, "control characters are not allowed")
        limit = self.admin.max_line - 1
        if len(text.encode()) > limit:
            raise HTTPError(400, f"{field} too long (max {limit} bytes)")

    def moderate(self, environ: dict, name: str, action: str) -> Response:
        body = _body(environ)
        user = _field(body, "user", required=True)
        reason = _field(body, "reason", required=False)
        minutes = body.get("minutes")
        group = self._find_group(name)
        if P.name_problem(P.normalize(user)) is not None:
            raise HTTPError(400, f"invalid user name: {user!r}")
        args = [group.name, user]
        if minutes is not None:
            if action != "mute":
                raise HTTPError(400, "field 'minutes' is for mute only")
            if isinstance(minutes, bool) or not isinstance(minutes, (int, str)):
                raise HTTPError(400, "field 'minutes' must be a number (1 to 10080)")
            args.append(str(minutes))
        if reason is not None:
            if action not in ("kick", "ban"):
                raise HTTPError(400, "field 'reason' is for kick and ban only")
            self._check_text("reason", reason)
            if not P.is_blank(reason):
                args.append(reason)
        line = self._run(action, tuple(args))
        audit.info("admin: %s user=%s in group=%s (from %s)", action, user, group.name,
                   environ.get("REMOTE_ADDR"))
        return 200, {"reply": line, "group": self._group(group)}

    def group_settings(self, environ: dict, name: str) -> Response:
        body = _body(environ)
        group = self._find_group(name)
        if not body:
            raise HTTPError(400, "no setting to change (keys: " + ", ".join(P.SETTINGS) + ")")
        for key, value in body.items():  # all checked before any is changed
            values = P.SETTINGS.get(key)
            if values is None:
                raise HTTPError(400, _text(ProtocolError(P.invalid_setting(key))))
            if not isinstance(value, str) or value not in values:
                raise HTTPError(400, _text(ProtocolError(P.invalid_value(key, str(value)))))
        replies = [self._run("set", (group.name, key, value)) for key, value in body.items()]
        audit.info("admin: settings %s of group=%s (from %s)", body, group.name,
                   environ.get("REMOTE_ADDR"))
        return 200, {"replies": replies, "group": self._group(group)}

    def audit_log(self, environ: dict) -> Response:
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        raw = query.get("limit", ["100"])[-1]
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= AUDIT_LIMIT_MAX:
            raise HTTPError(400, f"limit must be 1 to {AUDIT_LIMIT_MAX}")
        group = query.get("group", [None])[-1] or None
        try:
            entries = self.admin.audit(int(raw), group)
        except Exception as err:
            log.error("reading the audit log failed: %s", err)
            raise HTTPError(503, "audit log unavailable: the store failed") from None
        return 200, {"entries": [
            {"at": P.utc_stamp(e.at), "actor": e.actor, "action": e.action, "group": e.group,
             "target": e.target, "detail": e.detail}
            for e in entries
        ]}

    def create_group(self, environ: dict) -> Response:
        name = _field(_body(environ), "name", required=True)
        try:
            group = self.admin.create_group(name)
        except (GroupExists, TooManyGroups) as err:
            raise HTTPError(409, _text(err)) from None
        except CreateFailed as err:
            raise HTTPError(503, _text(err)) from None
        except ProtocolError as err:
            raise HTTPError(400, _text(err)) from None
        audit.info("admin: created group=%s (from %s)", group.name, environ.get("REMOTE_ADDR"))
        self.admin.record("group.create", group.name)
        return 201, {"name": group.name, "created_at": P.utc_stamp(group.created_at)}

    def delete_group(self, environ: dict, name: str) -> Response:
        try:
            deleted = self.admin.delete_group(name)
        except DeleteFailed as err:
            raise HTTPError(503, _text(err)) from None
        except ProtocolError as err:
            raise HTTPError(400, _text(err)) from None
        if deleted is None:
            raise HTTPError(404, f"no such group: {name}")
        audit.info("admin: deleted group=%s (from %s)", deleted, environ.get("REMOTE_ADDR"))
        self.admin.record("group.delete", deleted)
        return 204, None

    # ------------------------------------------------------------ accounts

    def _accounts(self) -> AccountsPort:
        service = self.admin.accounts
        if not service.enabled:
            raise HTTPError(409, "accounts are disabled (--accounts off)")
        return service

    def list_accounts(self, environ: dict) -> Response:
        accounts = sorted(self._accounts().all(), key=lambda a: a.key)
        return 200, {"accounts": [
            {"name": a.name, "created_at": P.utc_stamp(a.created_at),
             "last_login": P.utc_stamp(a.last_login) if a.last_login else None,
             "suspended": a.suspended}
            for a in accounts
        ]}

    def create_account(self, environ: dict) -> Response:
        body = _body(environ)
        name = _field(body, "name", required=True)
        password = _field(body, "password", required=False)
        try:
            account, generated = self._accounts().create(name, password)
        except AccountError as err:
            raise _account_error(err) from None
        audit.info("admin: created account=%s (from %s)", account.name, environ.get("REMOTE_ADDR"))
        self.admin.record("account.create", target=account.name)
        answer: dict[str, Any] = {"name": account.name}
        if generated is not None:
            answer["password"] = generated  # the one answer a password appears in
        return 201, answer

    def delete_account(self, environ: dict, name: str) -> Response:
        try:
            account = self._accounts().delete(name)
        except AccountError as err:
            raise _account_error(err) from None
        audit.info("admin: deleted account=%s (from %s)", account.name, environ.get("REMOTE_ADDR"))
        self.admin.record("account.delete", target=account.name)
        return 204, None

    def reset_password(self, environ: dict, name: str) -> Response:
        body = _body(environ) if environ.get("CONTENT_LENGTH") not in (None, "", "0") else {}
        password = _field(body, "password", required=False)
        try:
            account, generated = self._accounts().reset(name, password)
        except AccountError as err:
            raise _account_error(err) from None
        audit.info("admin: reset the password of account=%s (from %s)", account.name,
                   environ.get("REMOTE_ADDR"))
        self.admin.record("account.password", target=account.name)
        answer: dict[str, Any] = {"name": account.name}
        if generated is not None:
            answer["password"] = generated
        return 200, answer

    def suspend_account(self, environ: dict, name: str, action: str) -> Response:
        try:
            account = self._accounts().suspend(name, action == "suspend")
        except AccountError as err:
            raise _account_error(err) from None
        audit.info("admin: %sed account=%s (from %s)", action, account.name,
                   environ.get("REMOTE_ADDR"))
        self.admin.record(f"account.{action}", target=account.name)
        return 200, {"name": account.name, "suspended": account.suspended}

    # ------------------------------------------------------------ announce, stats

    def announce(self, environ: dict) -> Response:
        body = _body(environ)
        text = _field(body, "text", required=True)
        group = _field(body, "group", required=False)
        if P.is_blank(text):
            raise HTTPError(400, "text must not be empty")
        self._check_text("text", text)
        target = None
        if group is not None:
            target = self.admin.groups.get(P.name_key(P.normalize(group)))
            if target is None:
                raise HTTPError(404, f"no such group: {group}")
        receivers = self.admin.announce(text, target)
        audit.info("admin: announcement to %s, %d receivers (from %s)",
                   group or "everyone", receivers, environ.get("REMOTE_ADDR"))
        return 200, {"delivered": receivers, "group": group}

    def stats(self, environ: dict) -> Response:
        admin = self.admin
        stats = admin.chat
        return 200, {
            "version": __version__,
            "started_at": P.utc_stamp(admin.started_at),
            "uptime_seconds": round(time.time() - admin.started_at, 3),
            "users": len(admin.users) + len(admin.remote_users),
            "local_users": len(admin.users),
            "cluster": admin.cluster_status(),
            "groups": len(admin.groups),
            "connections": {"active": admin.connections_active,
                            "total": admin.connections_total,
                            "rejected": sum(admin.rejected.values())},
            "messages": {"public": stats.messages_public, "private": stats.messages_private},
            "deliveries": {"public": stats.deliveries_public,
                           "private": stats.deliveries_private},
            "announcements": stats.announcements,
            "disconnects": {**dict.fromkeys(DISCONNECT_REASONS, 0), **admin.disconnects},
            "shutting_down": admin.stopping,
        }


# ---------------------------------------------------------------- request helpers


def _account_error(err: AccountError) -> HTTPError:
    if isinstance(err, Unavailable):
        return HTTPError(503, str(err).removeprefix("error: "))
    status = 409 if isinstance(err, Exists) else 404 if isinstance(err, NotFound) else 400
    assert isinstance(err, (Exists, NotFound, Invalid))
    return HTTPError(status, str(err))


def _path(environ: dict) -> str:
    # pywsgi percent-decodes PATH_INFO as latin-1 (PEP 3333); names are UTF-8.
    try:
        return environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise HTTPError(400, "path is not valid UTF-8") from None


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise HTTPError(405, f"method {method} not allowed here", [("Allow", ", ".join(allowed))])


def _body(environ: dict) -> dict:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise HTTPError(400, "bad Content-Length") from None
    if length > MAX_BODY:
        raise HTTPError(413, f"body too large (max {MAX_BODY} bytes)")
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeError, ValueError):
        raise HTTPError(400, "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "body must be a JSON object")
    return body


@overload
def _field(body: dict, name: str, *, required: Literal[True]) -> str: ...
@overload
def _field(body: dict, name: str, *, required: Literal[False]) -> str | None: ...
def _field(body: dict, name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise HTTPError(400, f"field {name!r} must be a string" if name in body
                        else f"missing field {name!r}")
    return value


def _text(err: Exception) -> str:
    return str(err).removeprefix("error: ")


# ---------------------------------------------------------------- the server


class _DeadlineHandler(WSGIHandler):
    """pywsgi's handler with a deadline on everything the client must send.

    Each request (and the wait for it on a keep-alive connection) runs under a
    `gevent.Timeout` of `--http-timeout` seconds, from the first byte awaited to
    the last byte of the body; the body is read here, before the application
    runs, so the deadline never covers our own work (a create waiting for the
    store) and never cuts a response. While it waits, the handler is listed in
    `server.waiting` (oldest first), which `_DeadlineServer` caps."""

    wsgi_input: Any  # WSGIHandler's (gevent has no types); replaced by `_read_body`

    def handle_one_request(self):
        server = self.server
        deadline = self._deadline = Timeout(server.request_timeout)
        server.waiting[self] = gevent.getcurrent()
        server.evict_oldest()
        deadline.start()
        try:
            return super().handle_one_request()
        except Timeout as err:
            if err is not deadline:
                raise
            server.timed_out += 1
            return None  # `handle` closes the socket
        finally:
            deadline.close()
            server.waiting.pop(self, None)

    def handle_one_response(self):
        self._read_body()
        self._deadline.close()
        self.server.waiting.pop(self, None)
        super().handle_one_response()

    def _read_body(self) -> None:
        """The whole body (at most MAX_BODY bytes) into memory, within the deadline.
        A larger body is not read: the application answers 413 from Content-Length
        (or sees a truncated body) and the connection is closed after the answer."""
        try:
            length = int(self.environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        stream = self.wsgi_input
        if length > MAX_BODY:
            body = b""
            self.close_connection = True
        else:
            body = stream.read(MAX_BODY + 1)
            if len(body) > MAX_BODY:
                self.close_connection = True
                body = body[:MAX_BODY]
        if self.close_connection:
            stream.content_length, stream.chunked_input = 0, False  # nothing left to discard
        self.wsgi_input = Input(io.BytesIO(body), len(body))
        self.environ["wsgi.input"] = self.wsgi_input


class _DeadlineServer(WSGIServer):
    """A WSGIServer whose connections still waiting for a request are capped."""

    handler_class = _DeadlineHandler

    def __init__(self, *args, request_timeout: float, **kw) -> None:
        super().__init__(*args, **kw)
        self.request_timeout = request_timeout
        self.waiting: dict[_DeadlineHandler, gevent.Greenlet] = {}
        self.timed_out = 0  # closed at the deadline
        self.evicted = 0  # closed to make room

    def evict_oldest(self) -> None:
        while len(self.waiting) > HTTP_WAITING:
            handler = next(iter(self.waiting))
            greenlet = self.waiting.pop(handler)
            self.evicted += 1
            greenlet.kill(block=False)  # GreenletExit in its read; `handle` closes


class AdminHTTP:
    """pywsgi on `--http-host:--http-port`, on the chat server's own gevent loop."""

    def __init__(self, admin: AdminPort, scrape: Callable[[], Scrape], token: str, *,
                 host: str, port: int, timeout: float) -> None:
        self.app = AdminAPI(admin, scrape, token)
        self.wsgi = _DeadlineServer(
            (host, port), self.app,
            request_timeout=timeout,
            spawn=Pool(HTTP_CONNECTIONS),
            # Access lines at debug: Prometheus scrapes every few seconds.
            log=LoggingLogAdapter(logging.getLogger("chatsrv.http.access"), logging.DEBUG),
            error_log=LoggingLogAdapter(log, logging.ERROR),
        )

    def start(self) -> None:
        self.wsgi.start()
        host, port = self.wsgi.address[:2]
        log.info("http on http://%s:%d (metrics, health, admin API)",
                 f"[{host}]" if ":" in host else host, port)

    @property
    def port(self) -> int:
        return self.wsgi.server_port

    def closed(self) -> dict[str, int]:
        """Connections closed before a complete request, by reason (for /metrics)."""
        return {"timeout": self.wsgi.timed_out, "evicted": self.wsgi.evicted}

    def stop(self) -> None:
        self.wsgi.stop(timeout=1.0)
