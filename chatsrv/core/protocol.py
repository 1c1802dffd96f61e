"""The wire protocol of PROTOCOL.md v1, with no I/O and no state.

Three jobs live here and nowhere else:
- names: NFC normalisation, validation and the case-insensitive key;
- parsing: a command's arguments against its `Spec` (or a `ProtocolError`
  whose text is the exact `error: ...` reply); the specs themselves live with
  their handlers in the command table (`commands.py`), which splits the word
  off and looks it up;
- formatting: every line kind the server sends, as the one place a reply's
  wording lives.

Like h11, any input either parses or raises `ProtocolError`; nothing else
escapes `commands.parse` (checked by a hypothesis property test).
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ProtocolError
from .names import bad_text, invisible

NAME_MAX = 32
HISTORY_DEFAULT = 20
HISTORY_MAX = 200
SEPARATORS = " \t"
ZWNJ = "\u200c"
NAME_PUNCT = frozenset("_.-" + ZWNJ)

_SEP_RUN = re.compile("[ \t]+")


# ---------------------------------------------------------------- names


def normalize(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def name_key(name: str) -> str:
    """The comparison key: `Alice`, `alice` and `ALICE` are one user."""
    return unicodedata.normalize("NFC", name.casefold())


def name_problem(name: str) -> str | None:
    """Why an NFC name is not valid, or None when it is."""
    if not name:
        return "empty"
    if len(name) > NAME_MAX:
        return f"too long (max {NAME_MAX} characters)"
    first = unicodedata.category(name[0])
    if not (first.startswith("L") or first == "Nd"):
        return "must start with a letter or digit"
    for ch in name[1:]:
        cat = unicodedata.category(ch)
        if not (cat[0] in "LM" or cat == "Nd" or ch in NAME_PUNCT):
            return f"character not allowed: {ch!r}"
    if invisible(name):
        return "only invisible characters"
    return None


# C0 controls except TAB, DEL, C1, and (v2) U+2028/U+2029 and the bidi controls:
# one regex search per message, see core/names.py.
has_control = bad_text


# ---------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Spec:
    """What dispatch checks once, before any handler runs (Ergo-style)."""

    synopsis: str
    min_args: int
    max_args: int
    text: bool = False  # last argument is the verbatim rest of the line


def split_word(text: str) -> tuple[str, str]:
    """Split off the first space/tab separated word; `text` has no leading separator."""
    for i, ch in enumerate(text):
        if ch == " " or ch == "\t":
            return text[:i], text[i:].lstrip(SEPARATORS)
    return text, ""


def is_blank(line: str) -> bool:
    return not line.strip(SEPARATORS)


def parse_args(spec: Spec, rest: str) -> tuple[str, ...]:
    """The arguments of a command (`rest`: the line after its word, without the
    separators after the word), checked against its spec."""
    if spec.text:
        if spec.max_args == 2:  # public, private: the hot path
            target, message = split_word(rest)
            if not target or not message:
                raise ProtocolError(usage(spec))
            return (target, message)
        words: list[str] = []
        while rest and len(words) < spec.max_args - 1:
            word, rest = split_word(rest)
            words.append(word)
        if rest:
            words.append(rest)
        if len(words) < spec.min_args:
            raise ProtocolError(usage(spec))
        return tuple(words)
    rest = rest.rstrip(SEPARATORS)
    args = tuple(_SEP_RUN.split(rest)) if rest else ()
    if not spec.min_args <= len(args) <= spec.max_args:
        raise ProtocolError(usage(spec))
    return args


def unknown_command(word: str) -> str:
    return f"error: unknown command: {word}"


def usage(spec: Spec) -> str:
    return f"error: usage: {spec.synopsis}"


def parse_count(text: str | None) -> int:
    """A history count: ASCII digits only, 1..200 (`05` is 5)."""
    if text is None:
        return HISTORY_DEFAULT
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= HISTORY_MAX:
        raise ProtocolError(f"error: invalid count: {text}")
    return int(text)


# ---------------------------------------------------------------- framing errors

LINE_TOO_LONG = "error: line too long (max {max} bytes)"
INVALID_UTF8 = b"error: invalid UTF-8\n"


def line_too_long(max_line: int) -> bytes:
    return (LINE_TOO_LONG.format(max=max_line) + "\n").encode()


# ---------------------------------------------------------------- server lines
# Every function returns the line without its LF; `encode` adds it.

PROMPT = b"enter a username:\n"
SERVER_FULL = b"error: server full\n"
# Refusals at connect, before the prompt (see limits.py and ChatServer.admit).
TOO_MANY_FROM_ADDRESS = b"error: too many connections from your address\n"
CONNECTING_TOO_FAST = b"error: connecting too fast\n"
SERVER_BUSY = b"error: server busy, try again later\n"
LOGIN_TIMEOUT = b"error: login timeout\n"
SHUTTING_DOWN = b"* server shutting down\n"
KICKED = b"* disconnected by an administrator\n"
# The session lost its name to another connection (a login to its account
# elsewhere, or in a cluster another node kept it through an outage); reason `replaced`.
REPLACED = b"* disconnected: logged in from another connection\n"
BYE = "ok: bye"
# Cluster mode (--redis): a command that needs Redis while it is unreachable.
CLUSTER_UNAVAILABLE = "error: cluster unavailable"
# The actor named when a node removes a member banned while it was cut off from
# Redis (the ban's announcement missed; Redis keeps who banned, not who did it).
UNKNOWN_MODERATOR = "a moderator"
PONG = "ok: pong"


def help_line(words: Iterable[str]) -> str:
    """The `help` reply: the command words in the command table's order."""
    return "ok: commands: " + " ".join(words)


def encode(line: str) -> bytes:
    return (line + "\n").encode()


def welcome(user: str) -> str:
    return f"connected! welcome {user}"


def created(group: str) -> str:
    return f"ok: created group {group}"


def too_many_groups(limit: int) -> str:
    """`create` when the server already has `--max-groups` groups."""
    return f"error: too many groups (max {limit})"


CREATING_TOO_FAST = "error: creating groups too fast, try again later"


def group_deleted(group: str) -> str:
    """What the members of a group an administrator deleted receive (no leave notices)."""
    return f"* group {group} was deleted by an administrator"


GENERAL = "General"
"""The group that always exists and every new user joins."""

CONTROL_CHARS = "error: control characters are not allowed"
HISTORY_DISABLED = "error: history is disabled"
BAD_ANNOUNCEMENT = "error: announcement text must be non-empty, no control characters"


def invalid_group_name(problem: str) -> str:
    return f"error: invalid group name: {problem}"


def group_exists(group: str) -> str:
    """`create` of a name in use (the group as created)."""
    return f"error: group already exists: {group}"


def no_such_group(name: str) -> str:
    return f"error: no such group: {name}"


def not_a_member(group: str) -> str:
    return f"error: not a member of {group}"


def already_member(group: str) -> str:
    return f"error: already a member of {group}"


def no_such_user(name: str) -> str:
    return f"error: no such user: {name}"


def invalid_username(problem: str) -> str:
    return f"error: invalid username: {problem}"


def username_taken(name: str) -> str:
    return f"error: username taken: {name}"


def joined(group: str) -> str:
    return f"ok: joined group {group}"


def left(group: str) -> str:
    return f"ok: left group {group}"


def end_of_history(group: str) -> str:
    return f"ok: end of history {group}"


def storage_failed(group: str) -> str:
    """The store could not commit a new group (disk full, I/O error): nothing was created."""
    return f"error: group not created, storage failed: {group}"


def you_joined(group: str) -> str:
    return f"you joined the group {group}"


def joined_notice(user: str, group: str) -> str:
    return f"* {user} joined the group {group}"


def left_notice(user: str, group: str) -> str:
    return f"* {user} left the group {group}"


def public_prefix(group: str, user: str) -> str:
    return f"[public group {group} from {user}] "


def private_prefix(user: str) -> str:
    return f"[private from {user}] "


def history_line(group: str, at: float, user: str, text: str) -> str:
    return f"[history group {group} at {utc_stamp(at)} from {user}] {text}"


def announcement(text: str) -> str:
    return f"* announcement: {text}"


def utc_stamp(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def listing(kind: str, names: list[str]) -> str:
    """`groups: a b c` / `users: a b c`, sorted case-insensitively."""
    return f"{kind}: " + " ".join(sorted(names, key=name_key))


# Every server line starts with exactly one of these (PROTOCOL.md "Line kinds").
LINE_KINDS = (
    "enter a username:",
    "connected! ",
    "you joined the group ",
    "ok: ",
    "error: ",
    "groups: ",
    "users: ",
    "info: ",
    "[public group ",
    "[private from ",
    "[history group ",
    "* ",
)


# ---------------------------------------------------------------- accounts (v2)

LOGIN_FAILED = "error: login failed"
TOO_MANY_FAILURES = "error: too many failed logins"
DISABLED = "error: accounts are disabled"
NOT_LOGGED_IN = "error: not logged in to an account"
WRONG_PASSWORD = "error: wrong password"
PASSWORD_CHANGED = "ok: password changed"
ACCOUNT_NOT_STORED = "error: account not changed, storage failed"


def suspended_line(name: str) -> str:
    return f"error: account suspended: {name}"


def throttled_line(name: str) -> str:
    return f"error: too many failed logins for {name}, try again later"


def already_registered_line(name: str) -> str:
    return f"error: already registered: {name}"


def invalid_password_line(reason: str) -> str:
    return f"error: invalid password: {reason}"


def password_prompt(name: str) -> str:
    return f"password for {name}:"


def registered_line(name: str) -> str:
    return f"ok: registered {name}"


def token_line(token: str) -> str:
    return f"ok: token {token}"


# ---------------------------------------------------------------- group roles (v2)

ONLY_ACCOUNTS_CREATE = "error: not allowed: only accounts can create groups"
ONLY_ADMINS_CREATE = "error: not allowed: only administrators can create groups"

SETTINGS: dict[str, tuple[str, str]] = {
    "join": ("open", "invite"),
    "post": ("all", "moderators"),
    "history": ("shared", "joined"),
    "visibility": ("public", "private"),
}
"""Each setting's values, the default first (PROTOCOL.md v2 Group roles)."""

MINUTES_MAX = 10080


def info_line(group: str, owner: str | None, moderators: list[str], members: int,
              settings: list[str]) -> str:
    mods = ",".join(moderators) or "-"
    values = " ".join(f"{key} {value}" for key, value in zip(SETTINGS, settings, strict=True))
    return f"info: {group} owner {owner or '-'} moderators {mods} members {members} {values}"


def set_line(key: str, value: str, group: str) -> str:
    return f"ok: set {key} {value} in {group}"


def modded(user: str, group: str) -> str:
    return f"ok: {user} is a moderator of {group}"


def unmodded(user: str, group: str) -> str:
    return f"ok: {user} is not a moderator of {group}"


def modded_notice(actor: str, group: str) -> str:
    return f"* {actor} made you a moderator of {group}"


def invited(user: str, group: str) -> str:
    return f"ok: invited {user} to {group}"


def uninvited(user: str, group: str) -> str:
    return f"ok: uninvited {user} from {group}"


def invited_notice(actor: str, group: str) -> str:
    return f"* {actor} invited you to {group}"


def removed(user: str, group: str) -> str:
    return f"ok: removed {user} from {group}"


def removed_you(actor: str, group: str, reason: str | None) -> str:
    return f"* {actor} removed you from {group}" + (f": {reason}" if reason else "")


def removed_notice(user: str, group: str, actor: str) -> str:
    return f"* {user} was removed from {group} by {actor}"


def banned(user: str, group: str) -> str:
    return f"ok: banned {user} from {group}"


def unbanned(user: str, group: str) -> str:
    return f"ok: unbanned {user} from {group}"


def _for(minutes: int | None) -> str:
    return f" for {minutes} minutes" if minutes is not None else ""


def muted(user: str, group: str, minutes: int | None) -> str:
    return f"ok: muted {user} in {group}{_for(minutes)}"


def unmuted(user: str, group: str) -> str:
    return f"ok: unmuted {user} in {group}"


def muted_notice(actor: str, group: str, minutes: int | None) -> str:
    return f"* {actor} muted you in {group}{_for(minutes)}"


def unmuted_notice(actor: str, group: str) -> str:
    return f"* {actor} unmuted you in {group}"


def invite_only(group: str) -> str:
    return f"error: not allowed: {group} is invite-only"


def banned_from(group: str) -> str:
    return f"error: not allowed: you are banned from {group}"


def only_moderators_post(group: str) -> str:
    return f"error: not allowed: only moderators can post in {group}"


def muted_in(group: str) -> str:
    return f"error: not allowed: you are muted in {group}"


def only_owner(group: str) -> str:
    return f"error: not allowed: only the owner of {group} can do that"


def only_moderator(group: str) -> str:
    return f"error: not allowed: only the owner or a moderator of {group} can do that"


def no_account(user: str) -> str:
    return f"error: not allowed: {user} has no account"


def is_owner(user: str, group: str) -> str:
    return f"error: not allowed: {user} is the owner of {group}"


def is_moderator(user: str, group: str) -> str:
    return f"error: not allowed: {user} is a moderator of {group}"


def not_member_of(user: str, group: str) -> str:
    return f"error: {user} is not a member of {group}"


def invalid_setting(key: str) -> str:
    return f"error: invalid setting: {key}"


def invalid_value(key: str, value: str) -> str:
    return f"error: invalid value for {key}: {value}"


def roles_not_stored(group: str) -> str:
    """The store failed: the change holds on this node until a restart."""
    return f"error: not stored, storage failed: {group}"


def parse_minutes(text: str) -> int:
    """A mute's minutes: ASCII digits only, 1..10080."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MINUTES_MAX:
        raise ProtocolError(f"error: invalid minutes: {text}")
    return int(text)
