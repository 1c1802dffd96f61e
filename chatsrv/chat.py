"""What the terminal client knows about the chat, and what a typed line means (pure).

`ChatState` follows the server's lines (`note`): the user's name, the groups
and users it has seen (for tab completion), the groups the user is in, and the
current conversation (a group after `ok: joined group G` or `/g G`, a user
after `/msg U`). `translate` turns what the user typed into protocol lines:
plain text goes to the current conversation (`public G ...` / `private U
...`), `/` commands do everything else, `/raw LINE` (or `--raw`) sends a line
as typed. `kind` says how to color an incoming line. Accounts: after
`password for <name>:` the next line is a password (`password_for`; the client
reads it without echo), and `keep_in_history` says which typed lines may be
recalled (none before login, never `register` or `password`, whose arguments
are passwords). No I/O here: client.py does the terminal and the socket, and
the unit tests drive this directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PROTOCOL_COMMANDS = ("create", "join", "leave", "groups", "users", "public", "private",
                     "exit", "history", "help", "ping", "register", "password", "token")
# Commands whose arguments are passwords: never kept in the input history.
SECRET_COMMANDS = frozenset({"register", "password"})
PASSWORD_PROMPT = "password for "

# (names, arguments, what it does); the first name is the one /help shows first.
SLASH_COMMANDS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("/help",), "", "this list"),
    (("/join", "/j"), "GROUP", "join GROUP and talk there"),
    (("/g", "/group"), "GROUP", "talk in GROUP (plain text goes there)"),
    (("/msg", "/m", "/query"), "USER [TEXT]", "talk to USER privately (and send TEXT)"),
    (("/leave", "/part"), "[GROUP]", "leave GROUP (default: the current one)"),
    (("/create",), "GROUP", "create GROUP (then /join it)"),
    (("/close",), "", "no current conversation"),
    (("/groups",), "", "every group"),
    (("/users",), "", "every user online"),
    (("/history",), "[GROUP] [N]", "the last N messages of GROUP (default: the current one)"),
    (("/ping",), "", "check the server answers"),
    (("/register",), "PASSWORD", "make your name an account (guests)"),
    (("/password",), "OLD NEW", "change your account's password"),
    (("/token",), "", "a token to log in with instead of the password"),
    (("/raw",), "LINE", "send LINE as typed (a protocol command, see `help`)"),
    (("/quit", "/exit"), "", "leave (Ctrl-D and Ctrl-C too)"),
)
SLASH_NAMES = tuple(name for names, _, _ in SLASH_COMMANDS for name in names)
_GROUP_ARG = frozenset({"/join", "/j", "/g", "/group", "/leave", "/part", "/history",
                        "join", "leave", "history", "public"})
_USER_ARG = frozenset({"/msg", "/m", "/query", "private"})

_PUBLIC = re.compile(r"^\[(?:public|history) group (\S+) (?:at \S+ )?from (\S+)\] (.*)$", re.S)
_PRIVATE = re.compile(r"^\[private from (\S+)\] ")
_NOTICE = re.compile(r"^\* (\S+) (joined|left) the group (\S+)$")
# Moderation notices about the user itself (PROTOCOL.md v2 "Group roles and moderation").
_ABOUT_YOU = re.compile(r"^\* \S+ (invited you to|removed you from|muted you in|unmuted you in"
                        r"|made you a moderator of) (\S+)(?:: .*| for \d+ minutes)?$", re.S)
_DELETED = re.compile(r"^\* group (\S+) was deleted by an administrator$")

# Line kinds, for colors.
PRIVATE, MENTION, NOTICE, ERROR, OK, OTHER = ("private", "mention", "notice", "error", "ok",
                                              "other")
# Notices about the user itself: ALERT when it loses something (removed, muted, its
# group deleted), YOU when it gains something (invited, unmuted, made a moderator).
ALERT, YOU = "alert", "you"


def help_text() -> str:
    rows = [f"  {' '.join(names)} {args}".rstrip() for names, args, _ in SLASH_COMMANDS]
    width = max(map(len, rows)) + 2
    lines = [row.ljust(width) + what for row, (_, _, what) in zip(rows, SLASH_COMMANDS,
                                                                     strict=True)]
    return ("plain text goes to the current conversation (shown in the prompt); "
            "'exit' leaves; a line starting with // sends it with one /\n" + "\n".join(lines))


@dataclass
class Typed:
    """What a typed line does: protocol lines to send, a note for the user, or quit."""

    send: list[str] = field(default_factory=list)
    note: str | None = None
    quit: bool = False


@dataclass
class ChatState:
    raw: bool = False  # --raw: every line is sent as typed
    name: str = ""
    current: tuple[str, str] | None = None  # ("group", G) or ("user", U)
    groups: dict[str, str] = field(default_factory=dict)  # casefolded -> as shown
    users: dict[str, str] = field(default_factory=dict)
    mine: dict[str, str] = field(default_factory=dict)  # groups the user is in
    password_for: str | None = None  # after `password for <name>:`: the next line is one

    # ------------------------------------------------------------ server lines

    def note(self, line: str) -> str:
        """Learn from a server line; its kind (for its color)."""
        if not self.name:
            if line.startswith(PASSWORD_PROMPT) and line.endswith(":"):
                self.password_for = line[len(PASSWORD_PROMPT):-1]
                return OTHER
            if line == "enter a username:":
                self.password_for = None
        if line.startswith("error: "):
            return ERROR
        if line.startswith("connected! welcome "):
            self.password_for = None
            self.name = line.rpartition(" ")[2]
            _add(self.users, self.name)
            return OK
        if line.startswith("you joined the group "):
            _add(self.mine, _add(self.groups, line.rpartition(" ")[2]))
            return OK
        if line.startswith("ok: "):
            return self._ok(line[4:])
        if line.startswith(("groups: ", "users: ")):
            kind, _, names = line.partition(": ")
            table = self.groups if kind == "groups" else self.users
            table.clear()
            for name in names.split():
                _add(table, name)
            return OTHER
        match = _PUBLIC.match(line)
        if match:
            group, sender, text = match.groups()
            _add(self.groups, group)
            _add(self.users, sender)
            return MENTION if self._mentions(sender, text) else OTHER
        match = _PRIVATE.match(line)
        if match:
            _add(self.users, match.group(1))
            return PRIVATE
        match = _NOTICE.match(line)
        if match:
            user, what, group = match.groups()
            _add(self.groups, group)
            if what == "joined":
                _add(self.users, user)
            return NOTICE
        match = _ABOUT_YOU.match(line)
        if match:
            what, group = match.groups()
            if what == "removed you from":
                self._forget(group)
            return ALERT if what in ("removed you from", "muted you in") else YOU
        match = _DELETED.match(line)
        if match:
            self._forget(match.group(1))
            self.groups.pop(match.group(1).casefold(), None)
            return ALERT
        if line.startswith("* "):
            return NOTICE
        return OTHER

    def _forget(self, group: str) -> None:
        """The user is no longer in `group` (left, removed, or the group deleted)."""
        self.mine.pop(group.casefold(), None)
        if self.current is not None and self.current[0] == "group" and \
                self.current[1].casefold() == group.casefold():
            self.current = None

    def _ok(self, rest: str) -> str:
        word, _, name = rest.rpartition(" ")
        if word == "joined group":
            group = _add(self.groups, name)
            _add(self.mine, group)
            if not self.raw:
                self.current = ("group", group)
        elif word == "left group":
            self._forget(name)
        elif word == "created group":
            _add(self.groups, name)
        return OK

    def _mentions(self, sender: str, text: str) -> bool:
        if not self.name or sender.casefold() == self.name.casefold():
            return False
        return re.search(rf"(?<!\w){re.escape(self.name)}(?!\w)", text, re.I) is not None

    # ------------------------------------------------------------ the prompt

    def prompt(self) -> str:
        if self.password_for is not None:
            return "password: "
        if not self.name:
            return "> "
        if self.current is None:
            return f"{self.name}> "
        kind, name = self.current
        return f"{self.name} [{name if kind == 'group' else '@' + name}]> "

    # ------------------------------------------------------------ typed lines

    def keep_in_history(self, text: str) -> bool:
        """Whether a typed line may be recalled later: not a password (at the
        password prompt, in the one-line `name password` login, or as the argument
        of `register` or `password`, also as /register and /raw ...)."""
        if not self.name or self.password_for is not None:
            return False
        words = text.split()
        if words and words[0].casefold() == "/raw":
            words = words[1:]
        return not (words and words[0].casefold().lstrip("/") in SECRET_COMMANDS)

    def translate(self, text: str) -> Typed:
        stripped = text.strip(" \t")
        if stripped.casefold() == "exit":
            return Typed(quit=True)
        if self.password_for is not None:  # the password, sent as typed
            self.password_for = None
            return Typed([text])
        if self.raw or not self.name:  # at the username prompt, lines are names
            return Typed([text])
        if text.startswith("//"):
            return self._say(text[1:])
        if text.startswith("/"):
            return self._slash(text)
        if not stripped:
            return Typed()
        if self.current is None:
            if stripped.split()[0].casefold() in PROTOCOL_COMMANDS:
                return Typed([text])  # a protocol command typed as such
            return Typed(note="no conversation yet: /g GROUP or /msg USER first "
                              "(/help lists the commands)")
        return self._say(text)

    def _say(self, text: str) -> Typed:
        if self.current is None:
            return Typed(note="no conversation: /g GROUP or /msg USER first")
        kind, name = self.current
        return Typed([f"{'public' if kind == 'group' else 'private'} {name} {text}"])

    def _slash(self, text: str) -> Typed:
        word, _, rest = text.partition(" ")
        word = word.casefold()
        args = rest.split()
        group = self.current[1] if self.current and self.current[0] == "group" else None
        if word == "/help":
            return Typed(note=help_text())
        if word in ("/quit", "/exit"):
            return Typed(quit=True)
        if word == "/raw":
            return Typed([rest]) if rest.strip() else Typed(note="usage: /raw LINE")
        if word in ("/groups", "/users", "/ping", "/token"):
            return Typed([word[1:]])
        if word == "/register":
            if len(args) != 1:
                return Typed(note="usage: /register PASSWORD")
            return Typed([f"register {args[0]}"])
        if word == "/password":
            if len(args) != 2:
                return Typed(note="usage: /password OLD NEW")
            return Typed([f"password {args[0]} {args[1]}"])
        if word == "/close":
            self.current = None
            return Typed(note="no current conversation")
        if word in ("/join", "/j", "/create"):
            if len(args) != 1:
                return Typed(note=f"usage: {word} GROUP")
            return Typed([f"{'create' if word == '/create' else 'join'} {args[0]}"])
        if word in ("/g", "/group"):
            if len(args) != 1:
                return Typed(note=f"usage: {word} GROUP")
            self.current = ("group", self.groups.get(args[0].casefold(), args[0]))
            if args[0].casefold() not in self.mine:
                return Typed(note=f"you are not in {args[0]}: /join {args[0]} to talk there")
            return Typed()
        if word in ("/msg", "/m", "/query"):
            if not args:
                return Typed(note=f"usage: {word} USER [TEXT]")
            user = self.users.get(args[0].casefold(), args[0])
            self.current = ("user", user)
            message = rest.strip(" \t")[len(args[0]):].strip(" \t")
            return Typed([f"private {user} {message}"] if message else [])
        if word in ("/leave", "/part"):
            target = args[0] if args else group
            if target is None:
                return Typed(note=f"usage: {word} GROUP")
            return Typed([f"leave {target}"])
        if word == "/history":
            if args and args[-1].isdigit():
                count, args = args[-1], args[:-1]
            else:
                count = ""
            target = args[0] if args else group
            if target is None or len(args) > 1:
                return Typed(note="usage: /history [GROUP] [N]")
            return Typed([f"history {target} {count}".rstrip()])
        return Typed(note=f"unknown command {word}; /help lists them")

    # ------------------------------------------------------------ tab completion

    def completions(self, before_cursor: str) -> list[str]:
        """Candidates for the word being typed (before the cursor)."""
        words = before_cursor.split(" ")
        current = words[-1].casefold()
        if len(words) == 1:
            if current.startswith("/"):
                pool: list[str] = list(SLASH_NAMES)
            elif self.raw or self.current is None:
                pool = list(PROTOCOL_COMMANDS)
            else:
                pool = list(self.users.values())
        elif len(words) == 2 and words[0].casefold() in _GROUP_ARG:
            pool = sorted(self.groups.values(), key=str.casefold)
        elif len(words) == 2 and words[0].casefold() in _USER_ARG:
            pool = sorted(self.users.values(), key=str.casefold)
        else:
            pool = sorted(self.users.values(), key=str.casefold)  # a mention
        return [c for c in pool if c.casefold().startswith(current) and c.casefold() != current]


def _add(table: dict[str, str], name: str) -> str:
    table[name.casefold()] = name
    return name
