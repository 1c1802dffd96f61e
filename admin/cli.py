"""`chatsrv-admin`: see and steer a running chatsrv through its HTTP admin API.

Tables for people, `--json` for scripts. Exit codes: 0 ok, 1 not found or
refused (also: not ready, for `health`), 2 usage (also: no token), 3 server
unreachable. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from .api import NOT_OK, USAGE, AdminClient, AdminError

DEFAULT_URL = "http://127.0.0.1:9150"
TOKEN_FILE = "admin.token"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Administer a running chatsrv: users, groups, kicks, announcements, live stats.",
)


@dataclass
class Options:
    url: str
    token: str | None
    token_problem: str | None
    json: bool
    timeout: float

    def client(self) -> AdminClient:
        if self.token is None and self.token_problem:
            raise AdminError(self.token_problem, USAGE)
        return AdminClient(self.url, self.token, self.timeout)


JsonFlag = typer.Option(False, "--json", help="Print the server's JSON (one object a line).")


@app.callback()
def options(
    ctx: typer.Context,
    url: str = typer.Option(DEFAULT_URL, envvar="CHATSRV_ADMIN_URL",
                            help="chatsrv's HTTP endpoint (its --http-host/--http-port)."),
    token: str | None = typer.Option(  # noqa: UP007 - Typer needs Optional
        None, envvar="CHATSRV_ADMIN_TOKEN", show_default=False,
        help="Admin bearer token. Prefer the CHATSRV_ADMIN_TOKEN variable or --token-file: "
             "a command line shows in `ps` (default: read from DATA_DIR/admin.token).",
    ),
    token_file: Path | None = typer.Option(  # noqa: UP007
        None, envvar="CHATSRV_ADMIN_TOKEN_FILE", show_default=False,
        help="A file holding the admin token (default: DATA_DIR/admin.token).",
    ),
    data_dir: Path = typer.Option(Path("./chatsrv-data"), envvar="CHATSRV_DATA_DIR",
                                  help="The server's --data-dir, for its admin.token."),
    json_out: bool = JsonFlag,
    timeout: float = typer.Option(
        30.0, help="Seconds to wait for the server (an account change hashes a password, "
                   "which a busy server runs at low priority)."),
) -> None:
    if not url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"{url!r} is not an http:// or https:// URL", param_hint="--url")
    problem = None
    source = ctx.get_parameter_source("token")
    if token is not None and getattr(source, "name", "") == "COMMANDLINE":
        typer.echo("warning: --token on the command line is visible to other users (ps, "
                   "shell history); use CHATSRV_ADMIN_TOKEN or --token-file", err=True)
    if token is None:
        token, problem = _token_from(token_file or data_dir / TOKEN_FILE)
    ctx.obj = Options(url, token, problem, json_out, timeout)


def _token_from(path: Path) -> tuple[str | None, str | None]:
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None, (f"no admin token: {path} does not exist; pass --token, set "
                      "CHATSRV_ADMIN_TOKEN, or give the server's --data-dir")
    except OSError as err:
        return None, f"cannot read the admin token in {path}: {err.strerror}"
    return (token, None) if token else (None, f"{path} is empty")


def _guarded(fn: Callable) -> Callable:
    """`fn` with its AdminErrors turned into one line and an exit code."""

    @wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AdminError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(err.code) from None

    return run


def command(fn: Callable) -> Callable:
    """Register `fn` as a command whose AdminErrors become one line and an exit code."""
    return app.command()(_guarded(fn))


def _opts(ctx: typer.Context, json_out: bool) -> Options:
    opts: Options = ctx.obj
    if json_out:
        opts.json = True
    return opts


def _print_json(payload: dict) -> None:
    typer.echo(json.dumps(payload, ensure_ascii=False))


console = Console(highlight=False)


# ---------------------------------------------------------------- commands


@command
def users(ctx: typer.Context, json_out: bool = JsonFlag) -> None:
    """Logged-in users: node (in a cluster), address, connected since, groups, bytes, sendq."""
    opts = _opts(ctx, json_out)
    payload = opts.client().users()
    if opts.json:
        return _print_json(payload)
    table = Table(title=_plural(len(payload["users"]), "user"), title_justify="left")
    cluster = any(u.get("node") for u in payload["users"])
    for column in ("user", *(("node",) if cluster else ()), "peer", "connected for", "groups"):
        table.add_column(column)
    for column in ("in", "out", "sendq"):
        table.add_column(column, justify="right")
    for u in payload["users"]:
        # Users of other nodes: their byte counts live on their own node.
        sizes = [_size(u[k]) if u.get(k) is not None else "-"
                 for k in ("bytes_in", "bytes_out", "sendq_bytes")]
        node = (Text(u.get("node") or "-"),) if cluster else ()
        table.add_row(Text(u["name"]), *node, u["peer"], _age(u["connected_at"]),
                      Text(" ".join(u["groups"])), *sizes)
    console.print(table)


groups_app = typer.Typer(
    add_completion=False, pretty_exceptions_enable=False, invoke_without_command=True,
    help="Every group with its member count; `groups delete NAME` deletes one.",
)
app.add_typer(groups_app, name="groups")


@groups_app.callback()
@_guarded
def groups(ctx: typer.Context, json_out: bool = JsonFlag) -> None:
    """Every group with its member count; `groups delete NAME` deletes one."""
    if ctx.invoked_subcommand is None:
        _list_groups(_opts(ctx, json_out))


@groups_app.command()
@_guarded
def delete(ctx: typer.Context, name: str = typer.Argument(..., help="Group to delete."),
           json_out: bool = JsonFlag) -> None:
    """Delete a group and its history, on every node. Its members receive
    `* group NAME was deleted by an administrator`; General cannot be deleted."""
    opts = _opts(ctx, json_out)
    opts.client().delete_group(name)
    if opts.json:
        return _print_json({"deleted": name})
    console.print(Text(f"deleted group {name}"))


def _list_groups(opts: Options) -> None:
    payload = opts.client().groups()
    if opts.json:
        return _print_json(payload)
    table = Table(title=_plural(len(payload["groups"]), "group"), title_justify="left")
    table.add_column("group")
    table.add_column("members", justify="right")
    table.add_column("created (UTC)")
    table.add_column("by")
    for g in payload["groups"]:
        table.add_row(Text(g["name"]), str(g["members"]), g["created_at"].replace("T", " "),
                      Text(g["created_by"] or "-"))
    console.print(table)


accounts_app = typer.Typer(
    add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
    help="Accounts (--accounts optional|required): list, add, import a class from CSV, "
    "delete, reset a password, suspend, unsuspend.",
)
app.add_typer(accounts_app, name="accounts")

PasswordOption = typer.Option(
    None, "--password", show_default=False,
    help="The password (8-256 characters, no spaces); default: the server generates one "
    "and prints it once.",
)


@accounts_app.command("list")
@_guarded
def accounts_list(ctx: typer.Context, json_out: bool = JsonFlag) -> None:
    """Every account: created, last login, suspended."""
    opts = _opts(ctx, json_out)
    payload = opts.client().accounts()
    if opts.json:
        return _print_json(payload)
    table = Table(title=_plural(len(payload["accounts"]), "account"), title_justify="left")
    for column in ("account", "created (UTC)", "last login", "suspended"):
        table.add_column(column)
    for a in payload["accounts"]:
        table.add_row(Text(a["name"]), a["created_at"].replace("T", " "),
                      _since(a["last_login"]) if a["last_login"] else "never",
                      "yes" if a["suspended"] else "")
    console.print(table)


@accounts_app.command("add")
@_guarded
def accounts_add(ctx: typer.Context, name: str = typer.Argument(..., help="Account name."),
                 password: str | None = PasswordOption,  # noqa: UP007
                 json_out: bool = JsonFlag) -> None:
    """Create an account; prints the generated password when none was given."""
    opts = _opts(ctx, json_out)
    payload = opts.client().add_account(name, password)
    if opts.json:
        return _print_json(payload)
    console.print(Text(f"created account {payload['name']}"))
    _show_generated(payload)


@accounts_app.command("import")
def accounts_import(ctx: typer.Context,
                    file: Path = typer.Argument(..., help="CSV with a header row: a `name` "
                                                "column and an optional `password` column.")
                    ) -> None:
    """Create every account of a CSV that does not exist yet (a class in one command).

    Prints `name,password` CSV of the created accounts on stdout (generated
    passwords included: hand them out, then forget them); accounts that exist
    or fail are reported on stderr, and the exit code is 1 if any row failed."""
    opts: Options = ctx.obj
    try:
        rows = list(csv.DictReader(io.StringIO(file.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeError, csv.Error) as err:
        typer.echo(f"error: cannot read {file}: {err}", err=True)
        raise typer.Exit(USAGE) from None
    if rows and "name" not in rows[0]:
        typer.echo(f"error: {file} has no `name` column (header row: name[,password])", err=True)
        raise typer.Exit(USAGE)
    try:
        client = opts.client()
    except AdminError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.code) from None
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["name", "password"])
    failed = 0
    for number, row in enumerate(rows, start=2):
        name = (row.get("name") or "").strip()
        password = (row.get("password") or "").strip() or None
        try:
            payload = client.add_account(name, password)
        except AdminError as err:
            if err.status is None:  # the server is gone: the rest would fail the same way
                typer.echo(f"error: {err}", err=True)
                raise typer.Exit(err.code) from None
            exists = err.status == 409
            failed += not exists
            typer.echo(f"{'skipped' if exists else 'error'}: line {number}: {name}: {err}",
                       err=True)
            continue
        out.writerow([payload["name"], payload.get("password", password or "")])
        sys.stdout.flush()
    if failed:
        raise typer.Exit(NOT_OK)


@accounts_app.command("delete")
@_guarded
def accounts_delete(ctx: typer.Context, name: str = typer.Argument(..., help="Account name."),
                    json_out: bool = JsonFlag) -> None:
    """Delete an account; its session ends (`* disconnected by an administrator`)."""
    opts = _opts(ctx, json_out)
    opts.client().delete_account(name)
    if opts.json:
        return _print_json({"deleted": name})
    console.print(Text(f"deleted account {name}"))


@accounts_app.command("reset")
@_guarded
def accounts_reset(ctx: typer.Context, name: str = typer.Argument(..., help="Account name."),
                   password: str | None = PasswordOption,  # noqa: UP007
                   json_out: bool = JsonFlag) -> None:
    """Set a new password (generated unless given); every token of the account stops working."""
    opts = _opts(ctx, json_out)
    payload = opts.client().reset_account(name, password)
    if opts.json:
        return _print_json(payload)
    console.print(Text(f"new password set for {payload['name']}"))
    _show_generated(payload)


def _show_generated(payload: dict) -> None:
    """The password the server generated (the one answer it appears in), once."""
    if "password" in payload:
        console.print(Text(f"password: {payload['password']}"))


@accounts_app.command("suspend")
@_guarded
def accounts_suspend(ctx: typer.Context, name: str = typer.Argument(..., help="Account name."),
                     json_out: bool = JsonFlag) -> None:
    """Suspend an account: its session ends, logins and tokens are refused."""
    _set_suspended(ctx, name, json_out, True)


@accounts_app.command("unsuspend")
@_guarded
def accounts_unsuspend(ctx: typer.Context,
                       name: str = typer.Argument(..., help="Account name."),
                       json_out: bool = JsonFlag) -> None:
    """Allow logins again (tokens minted before the suspension stay void)."""
    _set_suspended(ctx, name, json_out, False)


def _set_suspended(ctx: typer.Context, name: str, json_out: bool, suspend: bool) -> None:
    opts = _opts(ctx, json_out)
    payload = opts.client().suspend_account(name, suspend)
    if opts.json:
        return _print_json(payload)
    console.print(Text(f"{'suspended' if suspend else 'unsuspended'} account {payload['name']}"))


class _GroupCommands(TyperGroup):
    """`group NAME` shows a group; `group ACTION NAME ...` changes one (a group
    named like an action: `group show NAME`)."""

    def parse_args(self, ctx, args):  # noqa: ANN001, ANN201 (click's signature)
        first = next((a for a in args if not a.startswith("-")), None)
        if first is not None and first not in self.commands:
            args = ["show", *args]
        return super().parse_args(ctx, args)


group_app = typer.Typer(
    cls=_GroupCommands, add_completion=False, pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="One group: `group NAME` shows its members, owner, moderators, settings, "
    "invitations, bans and mutes; `group ACTION NAME USER` moderates it as `admin` (mod, "
    "unmod, invite, uninvite, kick, ban, unban, mute, unmute); `group set NAME KEY VALUE`; "
    "`group delete NAME`.",
)
app.add_typer(group_app, name="group")

GroupArg = typer.Argument(..., help="Group name.")
UserArg = typer.Argument(..., help="User or account name (need not be online).")


@group_app.command("show")
@_guarded
def group_show(ctx: typer.Context, name: str = GroupArg, json_out: bool = JsonFlag) -> None:
    """One group: members, owner, moderators, settings, invitations, bans, mutes."""
    opts = _opts(ctx, json_out)
    payload = opts.client().group(name)
    if opts.json:
        return _print_json(payload)
    _show_group(payload)


def _show_group(payload: dict) -> None:
    members = payload["members"]
    console.print(Text(f"group {payload['name']}: {_plural(len(members), 'member')}, "
                       f"created {_since(payload['created_at'])}"
                       + (f" by {payload['created_by']}" if payload["created_by"] else "")))
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    settings = payload.get("settings", {})
    mutes = [m["user"] + (f" (until {m['until'].replace('T', ' ')})" if m["until"]
                          else " (until unmuted)") for m in payload.get("mutes", [])]
    for key, value in (
        ("owner", payload.get("owner") or "- (administrators only)"),
        ("moderators", ", ".join(payload.get("moderators", [])) or "-"),
        ("settings", " ".join(f"{k} {v}" for k, v in settings.items()) or "-"),
        ("invited", ", ".join(payload.get("invitations", [])) or "-"),
        ("banned", ", ".join(payload.get("bans", [])) or "-"),
        ("muted", ", ".join(mutes) or "-"),
        ("members", ", ".join(members) or "-"),
    ):
        table.add_row(key, Text(value))
    console.print(table)


def _moderate(ctx: typer.Context, action: str, name: str, user: str, json_out: bool, *,
              minutes: int | None = None, reason: str | None = None) -> None:
    opts = _opts(ctx, json_out)
    payload = opts.client().moderate(name, action, user, minutes=minutes, reason=reason)
    if opts.json:
        return _print_json(payload)
    console.print(Text(payload["reply"]))


def _simple(action: str, doc: str) -> None:
    def run(ctx: typer.Context, name: str = GroupArg, user: str = UserArg,
            json_out: bool = JsonFlag) -> None:
        _moderate(ctx, action, name, user, json_out)

    run.__doc__ = doc
    group_app.command(action)(_guarded(run))


for _action, _doc in (
    ("mod", "Make an account a moderator (it is told, if online)."),
    ("unmod", "Take an account's moderator role away."),
    ("invite", "Invite an account (to an invite-only or private group; it is told)."),
    ("uninvite", "Withdraw an invitation."),
    ("unban", "Let a banned user join again."),
    ("unmute", "Let a muted user post again (it is told)."),
):
    _simple(_action, _doc)

ReasonOption = typer.Option(None, "--reason", "-r", show_default=False,
                            help="Told to the user: `* admin removed you from NAME: REASON`.")


@group_app.command("kick")
@_guarded
def group_kick(ctx: typer.Context, name: str = GroupArg, user: str = UserArg,
               reason: str | None = ReasonOption,  # noqa: UP007
               json_out: bool = JsonFlag) -> None:
    """Remove a member from the group (it may join again unless banned)."""
    _moderate(ctx, "kick", name, user, json_out, reason=reason)


@group_app.command("ban")
@_guarded
def group_ban(ctx: typer.Context, name: str = GroupArg, user: str = UserArg,
              reason: str | None = ReasonOption,  # noqa: UP007
              json_out: bool = JsonFlag) -> None:
    """Ban a user: removed if a member, cannot join until unbanned."""
    _moderate(ctx, "ban", name, user, json_out, reason=reason)


@group_app.command("mute")
@_guarded
def group_mute(ctx: typer.Context, name: str = GroupArg, user: str = UserArg,
               minutes: int | None = typer.Option(  # noqa: UP007
                   None, "--minutes", "-m", show_default=False,
                   help="1 to 10080; default: until unmuted."),
               json_out: bool = JsonFlag) -> None:
    """Mute a user in the group (it may read, not post); it is told."""
    _moderate(ctx, "mute", name, user, json_out, minutes=minutes)


@group_app.command("set")
@_guarded
def group_set(ctx: typer.Context, name: str = GroupArg,
              pairs: list[str] = typer.Argument(..., metavar="KEY VALUE...", help=(
                  "Settings to change: join open|invite, post all|moderators, "
                  "history shared|joined, visibility public|private.")),
              json_out: bool = JsonFlag) -> None:
    """Change settings, e.g. `group set class join invite visibility private`."""
    if len(pairs) % 2:
        raise AdminError("settings come in pairs: KEY VALUE [KEY VALUE ...]", USAGE)
    opts = _opts(ctx, json_out)
    payload = opts.client().settings(name, dict(zip(pairs[::2], pairs[1::2], strict=True)))
    if opts.json:
        return _print_json(payload)
    for reply in payload["replies"]:
        console.print(Text(reply))


@group_app.command("delete")
@_guarded
def group_delete(ctx: typer.Context, name: str = GroupArg, json_out: bool = JsonFlag) -> None:
    """Delete a group and its history (as `groups delete NAME`)."""
    delete(ctx, name, json_out)


@command
def audit(ctx: typer.Context,
          limit: int = typer.Option(50, "--limit", "-n", min=1, max=1000,
                                    help="How many entries (newest first)."),
          group: str | None = typer.Option(  # noqa: UP007
              None, "--group", "-g", show_default=False, help="Only this group's entries."),
          json_out: bool = JsonFlag) -> None:
    """The audit log: moderation by users and administrators, administrators' account
    changes; newest first."""
    opts = _opts(ctx, json_out)
    payload = opts.client().audit(limit, group)
    if opts.json:
        return _print_json(payload)
    entries = payload["entries"]
    table = Table(title=_plural(len(entries), "audit entry").replace("entrys", "entries"),
                  title_justify="left")
    for column in ("at (UTC)", "actor", "action", "group", "target", "detail"):
        table.add_column(column)
    for e in entries:
        table.add_row(e["at"].replace("T", " "), Text(e["actor"]), e["action"],
                      Text(e["group"] or "-"), Text(e["target"] or "-"), Text(e["detail"] or ""))
    console.print(table)


@command
def create(ctx: typer.Context, name: str = typer.Argument(..., help="New group name."),
           json_out: bool = JsonFlag) -> None:
    """Create a group (nobody is joined to it)."""
    opts = _opts(ctx, json_out)
    payload = opts.client().create(name)
    if opts.json:
        return _print_json(payload)
    console.print(Text(f"created group {payload['name']}"))


@command
def kick(ctx: typer.Context, user: str = typer.Argument(..., help="User to disconnect."),
         json_out: bool = JsonFlag) -> None:
    """Disconnect a user (`* disconnected by an administrator`); the name is free at once."""
    opts = _opts(ctx, json_out)
    payload = opts.client().kick(user)
    if opts.json:
        return _print_json(payload)
    console.print(Text(f"kicked {payload['kicked']}"))


@command
def announce(
    ctx: typer.Context,
    text: str = typer.Argument(..., help="The announcement (quote it)."),
    group: str | None = typer.Option(  # noqa: UP007
        None, "--group", "-g", help="Only this group's members (default: everyone)."
    ),
    json_out: bool = JsonFlag,
) -> None:
    """Send `* announcement: TEXT` to everyone, or to one group's members."""
    opts = _opts(ctx, json_out)
    payload = opts.client().announce(text, group)
    if opts.json:
        return _print_json(payload)
    where = f"group {payload['group']}" if payload.get("group") else "everyone"
    console.print(Text(f"announced to {where}: {_plural(payload['delivered'], 'receiver')}"))


@command
def stats(ctx: typer.Context, json_out: bool = JsonFlag) -> None:
    """Uptime, users, groups, messages and deliveries so far."""
    opts = _opts(ctx, json_out)
    payload = opts.client().stats()
    if opts.json:
        return _print_json(payload)
    table = Table(show_header=False, title="chatsrv " + payload["version"], title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("uptime", _duration(payload["uptime_seconds"])),
        ("users", payload["users"]),
        ("groups", payload["groups"]),
        ("connections active", payload["connections"]["active"]),
        ("connections total", payload["connections"]["total"]),
        ("connections rejected", payload["connections"]["rejected"]),
        ("messages public", payload["messages"]["public"]),
        ("messages private", payload["messages"]["private"]),
        ("deliveries public", payload["deliveries"]["public"]),
        ("deliveries private", payload["deliveries"]["private"]),
        ("announcements", payload["announcements"]),
        *((f"disconnects {reason}", n) for reason, n in payload["disconnects"].items()),
    ]
    for key, value in rows:
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)


@command
def reload(ctx: typer.Context, json_out: bool = JsonFlag) -> None:
    """Re-read the server's config file (as SIGHUP): print what changed and what needs a
    restart. An invalid file changes nothing: its error, exit 1."""
    opts = _opts(ctx, json_out)
    payload = opts.client().reload()
    if opts.json:
        return _print_json(payload)
    changed, restart = payload.get("changed", []), payload.get("restart_needed", [])
    console.print(Text("reloaded: " + ("; ".join(changed) if changed else "nothing changed")))
    if restart:
        console.print(Text("needs a restart (not applied): " + "; ".join(restart)))


@command
def health(ctx: typer.Context, json_out: bool = JsonFlag) -> None:
    """Is the server alive and ready? Exit 0 ready, 1 not ready, 3 unreachable."""
    opts = _opts(ctx, json_out)
    client = AdminClient(opts.url, opts.token, opts.timeout)  # no token needed
    _, alive = client.alive()
    status, ready = client.health()
    if opts.json:
        _print_json({"alive": alive.get("status") == "ok", "ready": status == 200,
                     "status": ready.get("status")})
    else:
        console.print(f"alive; {'ready' if status == 200 else 'not ready'} "
                      f"({ready.get('status', '?')})")
    if status != 200:
        raise typer.Exit(NOT_OK)


@command
def top(
    ctx: typer.Context,
    interval: float = typer.Option(1.0, min=0.1, help="Seconds between refreshes."),
    iterations: int = typer.Option(
        0, min=0, help="Stop after this many refreshes (0 = until Ctrl-C)."
    ),
    once: bool = typer.Option(False, "--once", help="One refresh (rates over one interval)."),
    json_out: bool = JsonFlag,
) -> None:
    """A live view: users, groups, msgs/s and deliveries/s, refreshed every second."""
    opts = _opts(ctx, json_out)
    client = opts.client()
    limit = 1 if once else iterations
    try:
        if console.is_terminal and not opts.json:
            _top_live(client, interval, limit)
        else:
            _top_lines(client, interval, limit, opts.json)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one leaves top


def _samples(client: AdminClient, interval: float, limit: int):
    """Yield (stats, msgs/s, deliveries/s) every `interval`, rates from the server's uptime."""
    before = client.stats()
    count = 0
    while not limit or count < limit:
        time.sleep(interval)
        now = client.stats()
        elapsed = max(now["uptime_seconds"] - before["uptime_seconds"], 1e-6)
        msgs = (_total(now, "messages") - _total(before, "messages")) / elapsed
        deliveries = (_total(now, "deliveries") - _total(before, "deliveries")) / elapsed
        yield now, msgs, deliveries
        before = now
        count += 1


def _top_live(client: AdminClient, interval: float, limit: int) -> None:
    from rich.live import Live

    with Live(_top_table(client.stats(), None, None), console=console,
              auto_refresh=False) as live:
        for now, msgs, deliveries in _samples(client, interval, limit):
            live.update(_top_table(now, msgs, deliveries), refresh=True)


def _top_lines(client: AdminClient, interval: float, limit: int, as_json: bool) -> None:
    if not as_json:
        typer.echo(f"{'time':8}  {'users':>8}  {'groups':>7}  {'msgs/s':>10}  "
                   f"{'deliveries/s':>13}  {'conns':>7}")
    for now, msgs, deliveries in _samples(client, interval, limit):
        if as_json:
            _print_json({"time": time.time(), "users": now["users"], "groups": now["groups"],
                         "connections": now["connections"]["active"],
                         "messages_per_second": round(msgs, 3),
                         "deliveries_per_second": round(deliveries, 3)})
        else:
            typer.echo(f"{time.strftime('%H:%M:%S')}  {now['users']:>8}  {now['groups']:>7}  "
                       f"{msgs:>10.1f}  {deliveries:>13.1f}  "
                       f"{now['connections']['active']:>7}")
        sys.stdout.flush()


def _top_table(now: dict, msgs: float | None, deliveries: float | None) -> Table:
    table = Table(title=f"chatsrv {now['version']}, up {_duration(now['uptime_seconds'])}  "
                        "(Ctrl-C to quit)", title_justify="left")
    for column in ("users", "groups", "connections", "msgs/s", "deliveries/s"):
        table.add_column(column, justify="right")
    table.add_row(f"{now['users']:,}", f"{now['groups']:,}",
                  f"{now['connections']['active']:,}", _rate(msgs), _rate(deliveries))
    return table


# ---------------------------------------------------------------- formatting


def _rate(value: float | None) -> str:
    return "…" if value is None else f"{value:,.1f}"


def _total(stats: dict, key: str) -> int:
    return sum(stats[key].values())


def _since(stamp: str) -> str:
    return f"{stamp} ({_age(stamp)} ago)"


def _age(stamp: str) -> str:
    """How long ago a server time stamp (`YYYY-MM-DDTHH:MM:SSZ`, UTC) was."""
    try:
        at = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return stamp
    return _duration(max(time.time() - at, 0))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---------------------------------------------------------------- entry point


def main() -> None:
    """The console script: usage errors and surprises become one line, never a traceback."""
    try:
        code = app(prog_name="chatsrv-admin", standalone_mode=False)
    except Exception as err:
        code = _failure(err)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


def _failure(err: Exception) -> int:
    """Print one line for an exception that left the command; its exit code.

    Click's exceptions are matched by shape, not class: Typer may use its own
    vendored copy of click."""
    kind = type(err).__name__
    if kind == "NoArgsIsHelpError":  # the help is already printed
        return USAGE
    if kind == "Abort":  # Ctrl-C
        return 130
    exit_code = getattr(err, "exit_code", None)
    if hasattr(err, "format_message") and isinstance(exit_code, int):
        ctx = getattr(err, "ctx", None)
        where = ctx.command_path if ctx is not None else "chatsrv-admin"
        typer.echo(f"error: {err.format_message()} (see: {where} --help)", err=True)
        return exit_code
    typer.echo(f"error: unexpected {kind}: {err}", err=True)  # a bug, still no traceback
    return NOT_OK
