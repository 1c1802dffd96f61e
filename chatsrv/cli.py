"""`chatsrv serve` and `chatsrv connect`: the command line, via Typer.

Every serve option is also read from `CHATSRV_<OPTION>` (Typer's envvar), and
all of them land in one frozen `Config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .config import Config, ConfigError
from .configfile import ENV, FLAG, Resolved, resolve, show
from .store import StoreError
from .store.commands import backup, restore

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="chatsrv: a scalable line-protocol chat server.",
)


def _env(name: str) -> str:
    return "CHATSRV_" + name.upper()


# Every default is written once, in Config; the options below take theirs from it.
D = Config()


@app.command()
def serve(
    ctx: typer.Context,
    config_file: Path | None = typer.Option(  # noqa: UP007
        None, "--config", envvar="CHATSRV_CONFIG",
        help="TOML file with any of these options (keys as the option names); a flag or "
        "its CHATSRV_ variable wins over the file. Re-read on SIGHUP (reload).",
    ),
    host: str = typer.Option(D.host, envvar=_env("host"), help="Address to listen on."),
    port: int = typer.Option(D.port, envvar=_env("port"), help="TCP port for clients (0 = any)."),
    http_host: str = typer.Option(
        D.http_host, envvar=_env("http_host"), help="Address of the metrics/admin HTTP port."
    ),
    http_port: int = typer.Option(
        D.http_port, envvar=_env("http_port"), help="Metrics/admin HTTP port (0 = off)."
    ),
    web_host: str = typer.Option(
        D.web_host, envvar=_env("web_host"), help="Address of the web client and WebSocket port."
    ),
    web_port: int = typer.Option(
        D.web_port, envvar=_env("web_port"),
        help="Web port: GET / serves the browser client, GET /ws the WebSocket door (0 = off).",
    ),
    web_origins: str = typer.Option(
        D.web_origins, envvar=_env("web_origins"),
        help="Comma-separated origins (https://chat.example.org) whose pages may open "
        "the WebSocket, beside the web port's own.",
    ),
    trusted_proxies: str = typer.Option(
        D.trusted_proxies, envvar=_env("trusted_proxies"),
        help="Comma-separated addresses/CIDR networks of reverse proxies in front of the web "
        "port: a connection from one of them is the client named in X-Forwarded-For "
        "(the rightmost address that is not a trusted proxy) for limits and logs ('' = none).",
    ),
    data_dir: Path = typer.Option(
        D.data_dir, envvar=_env("data_dir"), help="Directory for durable data."
    ),
    store: str = typer.Option(
        D.store, envvar=_env("store"),
        help="Where groups and history are kept: sqlite (a file in --data-dir) or memory "
        "(nothing survives a restart).",
    ),
    flush_ms: int = typer.Option(
        D.flush_ms, envvar=_env("flush_ms"),
        help="History is written every this many ms; a crash loses at most the last interval.",
    ),
    max_clients: int = typer.Option(
        D.max_clients, envvar=_env("max_clients"),
        help="Most connections at once, those still at the prompt included.",
    ),
    max_per_ip: int = typer.Option(
        D.max_per_ip, envvar=_env("max_per_ip"),
        help="Most connections at once from one address (an IPv6 /64 counts as one); "
        "more get 'error: too many connections from your address' (0 = off).",
    ),
    connect_rate: float = typer.Option(
        D.connect_rate, envvar=_env("connect_rate"),
        help="New connections per second from one address, burst twice that; more get "
        "'error: connecting too fast' (0 = off).",
    ),
    exempt: str = typer.Option(
        D.exempt, envvar=_env("exempt"),
        help="Comma-separated addresses/CIDR networks that skip --max-per-ip and "
        "--connect-rate ('' = none).",
    ),
    max_unauth: int = typer.Option(
        D.max_unauth, envvar=_env("max_unauth"),
        help="Most connections not yet logged in; more get 'error: server busy, try again "
        "later' (0 = off).",
    ),
    max_line: int = typer.Option(
        D.max_line, envvar=_env("max_line"), help="Longest client line in bytes, LF included."
    ),
    sendq: int = typer.Option(
        D.sendq, envvar=_env("sendq"),
        help="Bytes a session may have queued before it is cut off (reason sendq).",
    ),
    login_timeout: float = typer.Option(
        D.login_timeout, envvar=_env("login_timeout"), help="Seconds to send a valid username."
    ),
    rate_limit: float = typer.Option(
        D.rate_limit, envvar=_env("rate_limit"),
        help="Lines per second per session, burst twice that; excess is delayed (0 = off).",
    ),
    history: int = typer.Option(
        D.history, envvar=_env("history"), help="Public messages kept per group (0 = off)."
    ),
    history_memory: float = typer.Option(
        D.history_memory, envvar=_env("history_memory"),
        help="MiB of history all groups may keep in memory together (fractions allowed); "
        "the oldest leave memory first and `history` reads them back from the store.",
    ),
    notice_limit: int = typer.Option(
        D.notice_limit, envvar=_env("notice_limit"),
        help="No join/leave notices in groups with more members than this (0 = always).",
    ),
    max_groups: int = typer.Option(
        D.max_groups, envvar=_env("max_groups"),
        help="Most groups (General and every node's included); a create beyond it gets "
        "'error: too many groups (max N)'.",
    ),
    create_rate: float = typer.Option(
        D.create_rate, envvar=_env("create_rate"),
        help="Groups created per minute per client address (an IPv6 /64 counts as one), "
        "burst twice that; more get 'error: creating groups too fast, try again later' "
        "(0 = off).",
    ),
    http_timeout: float = typer.Option(
        D.http_timeout, envvar=_env("http_timeout"),
        help="Seconds an HTTP client has to send a whole request (headers and body), and "
        "that an idle keep-alive connection is kept; then it is closed.",
    ),
    admin_token: str | None = typer.Option(  # noqa: UP007 - Typer needs Optional
        None, envvar=_env("admin_token"), help="Bearer token for the admin API."
    ),
    redis: str | None = typer.Option(  # noqa: UP007
        None, envvar=_env("redis"),
        help="redis://HOST:PORT/DB: run as a node of a cluster (see docs/scaling.md).",
    ),
    node_id: str | None = typer.Option(  # noqa: UP007
        None, envvar=_env("node_id"),
        help="This node's name in the cluster (default: HOSTNAME-PID).",
    ),
    node_ttl: float = typer.Option(
        D.node_ttl, envvar=_env("node_ttl"),
        help="Seconds after which the cluster drops a node that stopped heartbeating.",
    ),
    workers: int = typer.Option(
        D.workers, envvar=_env("workers"),
        help="Worker processes sharing the port (SO_REUSEPORT), each a cluster node; "
        "needs --redis. Worker i serves HTTP on --http-port + i.",
    ),
    reuse_port: bool = typer.Option(
        D.reuse_port, "--reuse-port", hidden=True, help="Share the port (set for --workers workers)."
    ),
    tls_cert: Path | None = typer.Option(  # noqa: UP007
        None, envvar=_env("tls_cert"), help="PEM certificate: serve the protocol over TLS."
    ),
    tls_key: Path | None = typer.Option(  # noqa: UP007
        None, envvar=_env("tls_key"), help="PEM private key for --tls-cert."
    ),
    shutdown_grace: float = typer.Option(
        D.shutdown_grace, envvar=_env("shutdown_grace"),
        help="Seconds to flush queued lines at shutdown, exit, kick or login timeout.",
    ),
    keepalive: float = typer.Option(
        D.keepalive, envvar=_env("keepalive"),
        help="Seconds within which a peer that vanished without closing (network loss, "
        "a sleeping laptop) is detected and disconnected, reason timeout: TCP keepalive "
        "and TCP_USER_TIMEOUT (0 = off).",
    ),
    accounts: str = typer.Option(
        D.accounts, envvar=_env("accounts"),
        help="off (no accounts, version 1), optional (guests, and accounts need their "
        "password) or required (every login needs an account made by an administrator).",
    ),
    group_creation: str = typer.Option(
        D.group_creation, envvar=_env("group_creation"),
        help="Who may `create` groups: all, accounts (users logged in to an account) or "
        "admins (only the admin API).",
    ),
    token_ttl: float = typer.Option(
        D.token_ttl, envvar=_env("token_ttl"),
        help="Seconds a login token from the `token` command stays valid.",
    ),
    log_level: str = typer.Option(
        D.log_level, envvar=_env("log_level"), help="debug, info, warning or error."
    ),
    log_format: str = typer.Option(D.log_format, envvar=_env("log_format"), help="text or json."),
) -> None:
    """Run the chat server until SIGTERM or SIGINT; SIGHUP reloads the config file."""
    resolved = _resolve(ctx)
    config = resolved.config
    from .logs import setup_logging
    from .server import serve as run_server

    setup_logging(config.log_level, config.log_format)
    if config.workers > 1:
        from .backplane.workers import supervise as run_server
    try:
        code = run_server(config, resolved)
    except (OSError, ValueError, StoreError) as err:
        typer.echo(f"error: cannot start: {err}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def connect(
    host: str = typer.Argument("127.0.0.1", help="Server address."),
    port: int = typer.Argument(50000, help="Server port."),
    tls: bool = typer.Option(False, "--tls", help="Connect over TLS."),
    insecure: bool = typer.Option(
        False, "--insecure", help="With --tls: do not verify the certificate (self-signed)."
    ),
    raw: bool = typer.Option(
        False, "--raw", help="Send every typed line as is (protocol commands, no /commands)."
    ),
    no_color: bool = typer.Option(
        False, "--no-color", help="No colors (also when the NO_COLOR variable is set)."
    ),
    token_file: Path | None = typer.Option(  # noqa: UP007
        None, "--token-file",
        help="After a password login, ask the server for a token and keep `NAME TOKEN` "
        "in this file (mode 0600); typing NAME at the username prompt later logs in "
        "with the token, no password asked.",
    ),
) -> None:
    """Chat from the terminal (/help lists the commands); with stdin not a terminal,
    run it as a script."""
    from .client import run

    raise typer.Exit(run(host, port, tls=tls, insecure=insecure, raw=raw,
                         color=False if no_color else None, token_file=token_file))


def _resolve(ctx: Any) -> Resolved:
    """The Config of a parsed `serve` command line: flags, then CHATSRV_ variables, then
    the --config file, then defaults. A bad setting: one line and exit 2."""
    explicit = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        if name == "config_file" or source is None:
            continue
        # Compared by name: Typer may vendor its own click (typer._click).
        if source.name == "COMMANDLINE":
            explicit[name] = (value, FLAG)
        elif source.name == "ENVIRONMENT":
            explicit[name] = (value, ENV)
    try:
        return resolve(explicit, ctx.params.get("config_file"))
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


config_app = typer.Typer(
    add_completion=False, no_args_is_help=True,
    help="Check a config file, or show the effective configuration.",
)
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(
    file: Path = typer.Argument(..., help="The TOML file to check."),
) -> None:
    """Check a config file as `serve --config FILE` would (keys, types, values, TLS files)."""
    try:
        resolve({}, file)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{file}: ok")


@config_app.command(
    "show", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def config_show(ctx: typer.Context) -> None:
    """Print the configuration `serve` would run with (same arguments, same CHATSRV_
    variables, same --config), each value with where it came from; secrets redacted."""
    command: Any = typer.main.get_command(app)
    serve_command = command.commands["serve"]
    try:
        serve_ctx = serve_command.make_context("serve", list(ctx.args))
    except Exception as err:  # click's usage errors (Typer may vendor click)
        if not hasattr(err, "format_message"):
            raise
        typer.echo(f"error: {err.format_message()}", err=True)
        raise typer.Exit(2) from None
    typer.echo(show(_resolve(serve_ctx)), nl=False)


app.command()(backup)
app.command()(restore)


def main() -> None:
    app(prog_name="chatsrv")


if __name__ == "__main__":
    main()
