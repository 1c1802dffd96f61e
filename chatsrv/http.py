"""The one HTTP endpoint, served by gevent's pywsgi inside the server process.

Open: `GET /metrics` (Prometheus text), `GET /healthz` (the loop answers),
`GET /readyz` (accepting clients; 503 once shutdown began, or while the store
is stalled: see `StoreWriter.stalled`).
Under `/api/v1`, JSON, every request needs `Authorization: Bearer <token>`
(401 otherwise, before any routing, so an unauthenticated caller learns nothing):

    GET  /api/v1/users                 logged-in users with connection details
    POST /api/v1/users/{name}/kick     end that session, reason `kicked`
    GET  /api/v1/groups                every group with its member count
    POST /api/v1/groups  {"name"}      create a group (409 when it exists)
    GET  /api/v1/groups/{name}         one group and its members
    POST /api/v1/announce {"text", "group"?}   `* announcement: <text>`
    GET  /api/v1/stats                 uptime, users, groups, counters

Errors are `{"error": "..."}`: 400 bad JSON or field, 401, 404 unknown name or
path, 405 wrong method, 409 group exists, 413 body too large.
Handlers run in their own greenlets on the chat server's loop, so they read and
change the hub directly, like a session does, without locks.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gevent.pool import Pool
from gevent.pywsgi import LoggingLogAdapter, WSGIServer
from prometheus_client import make_wsgi_app

from . import __version__
from . import protocol as P
from .auth import bearer_ok
from .hub import CreateFailed, GroupExists
from .metrics import DISCONNECT_REASONS, make_registry

if TYPE_CHECKING:
    from .server import ChatServer

log = logging.getLogger("chatsrv.http")
audit = logging.getLogger("chatsrv.admin")

API = "/api/v1"
MAX_BODY = 64 * 1024
HTTP_CONNECTIONS = 64  # concurrent HTTP requests; the chat clients come first

STATUS = {
    200: "200 OK", 201: "201 Created", 400: "400 Bad Request", 401: "401 Unauthorized",
    404: "404 Not Found", 405: "405 Method Not Allowed", 409: "409 Conflict",
    413: "413 Payload Too Large", 500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: list | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


Response = tuple[int, object]


class AdminAPI:
    """The WSGI application; `AdminHTTP` serves it."""

    def __init__(self, server: ChatServer, token: str) -> None:
        self.server = server
        self.hub = server.hub
        self.token = token
        self.metrics = make_wsgi_app(make_registry(server))
        # (method, path pattern, handler); patterns match the path after /api/v1.
        self.routes: list[tuple[str, re.Pattern, Callable[..., Response]]] = [
            ("GET", re.compile(r"/users"), self.list_users),
            ("POST", re.compile(r"/users/([^/]+)/kick"), self.kick_user),
            ("GET", re.compile(r"/groups"), self.list_groups),
            ("POST", re.compile(r"/groups"), self.create_group),
            ("GET", re.compile(r"/groups/([^/]+)"), self.show_group),
            ("POST", re.compile(r"/announce"), self.announce),
            ("GET", re.compile(r"/stats"), self.stats),
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
        if self.server.stopping:
            return 503, {"status": "shutting down"}
        stuck = self.server.writer.stalled()
        if stuck:
            return 503, {"status": "store stalled", "seconds": round(stuck, 1)}
        return 200, {"status": "ready"}

    def api(self, environ: dict, method: str, path: str) -> Response:
        if not bearer_ok(environ.get("HTTP_AUTHORIZATION"), self.token):
            log.info("admin API: 401 for %s %s%s from %s", method, API, path,
                     environ.get("REMOTE_ADDR"))
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
        users = [self._user(u) for u in self.hub.users.values()]
        users.extend(self._remote_user(u) for u in self.hub.remote_users.values())
        users.sort(key=lambda u: P.name_key(u["name"]))
        return 200, {"users": users}

    def _remote_user(self, user) -> dict:
        groups = (self.hub.groups.get(k) for k in user.groups)
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

    def _user(self, user) -> dict:
        session = user.conn
        return {
            "name": user.name,
            "node": self.server.backplane.node or None,
            "peer": session.peer,
            "connected_at": P.utc_stamp(session.connected_at),
            "logged_in_at": P.utc_stamp(user.since),
            "groups": sorted((g.name for g in user.groups.values()), key=P.name_key),
            "bytes_in": session.bytes_in,
            "bytes_out": session.bytes_out,
            "sendq_bytes": session.qbytes,
        }

    def kick_user(self, environ: dict, name: str) -> Response:
        kicked = self.server.kick(name)
        if kicked is None:
            raise HTTPError(404, f"no such user: {name}")
        audit.info("admin: kicked user=%s (from %s)", kicked, environ.get("REMOTE_ADDR"))
        return 200, {"kicked": kicked}

    # ------------------------------------------------------------ groups

    def list_groups(self, environ: dict) -> Response:
        groups = sorted(self.hub.groups.values(), key=lambda g: g.key)
        return 200, {"groups": [
            {"name": g.name, "members": g.size(), "created_at": P.utc_stamp(g.created_at),
             "created_by": g.created_by or None}
            for g in groups
        ]}

    def show_group(self, environ: dict, name: str) -> Response:
        group = self.hub.groups.get(P.name_key(P.normalize(name)))
        if group is None:
            raise HTTPError(404, f"no such group: {name}")
        members = [u.name for u in group.members.values()] + list(group.remote.values())
        return 200, {
            "name": group.name,
            "created_at": P.utc_stamp(group.created_at),
            "created_by": group.created_by or None,
            "members": sorted(members, key=P.name_key),
        }

    def create_group(self, environ: dict) -> Response:
        name = _field(_body(environ), "name", required=True)
        try:
            group = self.server.create_group(name)
        except GroupExists as err:
            raise HTTPError(409, _text(err)) from None
        except CreateFailed as err:
            raise HTTPError(503, _text(err)) from None
        except P.ProtocolError as err:
            raise HTTPError(400, _text(err)) from None
        audit.info("admin: created group=%s (from %s)", group.name, environ.get("REMOTE_ADDR"))
        return 201, {"name": group.name, "created_at": P.utc_stamp(group.created_at)}

    # ------------------------------------------------------------ announce, stats

    def announce(self, environ: dict) -> Response:
        body = _body(environ)
        text = _field(body, "text", required=True)
        group = _field(body, "group", required=False)
        if P.is_blank(text):
            raise HTTPError(400, "text must not be empty")
        if P.has_control(text):
            raise HTTPError(400, "control characters are not allowed")
        limit = self.server.config.max_line - 1
        if len(text.encode()) > limit:
            raise HTTPError(400, f"text too long (max {limit} bytes)")
        target = None
        if group is not None:
            target = self.hub.groups.get(P.name_key(P.normalize(group)))
            if target is None:
                raise HTTPError(404, f"no such group: {group}")
        receivers = self.hub.announce(text, group)
        receivers += self.server.backplane.announce(text, target)  # other nodes' users
        self.server.schedule_flush()
        audit.info("admin: announcement to %s, %d receivers (from %s)",
                   group or "everyone", receivers, environ.get("REMOTE_ADDR"))
        return 200, {"delivered": receivers, "group": group}

    def stats(self, environ: dict) -> Response:
        server, stats = self.server, self.hub.stats
        return 200, {
            "version": __version__,
            "started_at": P.utc_stamp(server.started_at),
            "uptime_seconds": round(time.time() - server.started_at, 3),
            "users": len(self.hub.users) + len(self.hub.remote_users),
            "local_users": len(self.hub.users),
            "cluster": self.server.backplane.status(),
            "groups": len(self.hub.groups),
            "connections": {"active": len(server.sessions), "total": server.connections_total,
                            "rejected": sum(server.rejected.values())},
            "messages": {"public": stats.messages_public, "private": stats.messages_private},
            "deliveries": {"public": stats.deliveries_public,
                           "private": stats.deliveries_private},
            "announcements": stats.announcements,
            "disconnects": {**dict.fromkeys(DISCONNECT_REASONS, 0), **server.disconnects},
            "shutting_down": server.stopping,
        }


# ---------------------------------------------------------------- request helpers


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


class AdminHTTP:
    """pywsgi on `--http-host:--http-port`, on the chat server's own gevent loop."""

    def __init__(self, server: ChatServer, token: str) -> None:
        config = server.config
        self.app = AdminAPI(server, token)
        self.wsgi = WSGIServer(
            (config.http_host, config.http_port), self.app,
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

    def stop(self) -> None:
        self.wsgi.stop(timeout=1.0)
