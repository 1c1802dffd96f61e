"""Terminal client for chatsrv (`chatsrv connect`).

Design
------
Everything network-related runs on one asyncio event loop with an asyncio stream, so the
reading and writing halves of a (possibly TLS) connection are never driven from two
threads at once. No gevent here: the client is plain stdlib asyncio plus prompt_toolkit.

A `Connection` owns the stream. Its `pump` task reads server lines until the server
closes, hands each line to an output function, and records what the protocol tells us:
how many `enter a username:` prompts came, whether `connected! ` was seen (and after how
many prompts), the `ok: pong` count, and whether `ok: bye` arrived.

Interactive mode (stdin is a TTY)
    prompt_toolkit's `prompt_async` edits the input line while `patch_stdout` makes the
    pump's prints appear above it, so incoming lines never garble what is being typed.
    chat.py's `ChatState` gives the comforts: a current conversation (after `join G`,
    `/g G` or `/msg U`, shown in the prompt) that plain text goes to, `/` commands
    (`/help`), `/raw LINE` or `--raw` for protocol lines as typed, tab completion of
    commands and of the group and user names it has seen (it asks `groups` and `users`
    once at login, replies not shown), and incoming lines colored by kind (private,
    mentions of the user's name, notices, errors; notices about the user itself, such
    as `* ta removed you from class`, in bold reverse video; `--no-color` or NO_COLOR:
    none). A group the user was removed from (or that was deleted) is forgotten: it
    is no longer the current conversation.
    Server text is printed with every control character replaced, so only the
    client's own colors reach the terminal.
    Accounts: after `password for <name>:` the line is read without echo (prompt_toolkit's
    is_password, switched on even if the prompt was already shown), and the input
    history (up arrow, in memory) keeps nothing typed before login and no `register`
    or `password` line.
    Each prompt races the pump: when the server closes, the prompt is cancelled.
    `exit`, Ctrl-D and Ctrl-C all end the session the same way: once logged in, `exit`
    is sent and the client waits (at most BYE_TIMEOUT) for `ok: bye` and the close.
    At the username prompt they just close the connection: sending `exit` there would
    log in a user called "exit", which nobody typing it means.

Script mode (stdin is not a TTY)
    Stdin is read in bytes by a daemon thread and each line is sent exactly as read (a
    last line without LF gets one, since the server would drop it). Every server line is
    written to stdout as received and flushed. After stdin's EOF the client drains
    deterministically instead of guessing with a quiet period:
      1. It waits until it knows whether the lines it sent were usernames or commands.
         The server answers every line at the username prompt with either
         `connected! ` or a new prompt, so after n lines either `connected! ` was seen
         or n + 1 prompts were. (If no line at all arrives for LOGIN_REPLY_TIMEOUT
         seconds meanwhile, the server is not speaking the protocol; exit 1.)
      2. Not logged in: nothing is pending; close.
         A command `exit` was sent after login: wait for the server to close.
         Otherwise: send one `ping` and wait for its `ok: pong` (counting the pings the
         script itself sent), which the server sends after every earlier reply; that
         last `ok: pong` is not printed. There is deliberately no time limit on this
         wait: with the server's rate limit a long script can legitimately be silent
         for a while, and a dead server closes the connection anyway.

    Login lines are counted as answered by `connected! `, `password for <name>:` or a
    new `enter a username:`, so a script that logs in with a password drains the same way.

--token-file FILE (both modes)
    After a password login (the password prompt, or the one-line `name password`) the
    client sends `token` itself, hides the `ok: token ...` reply and keeps `NAME TOKEN`
    in FILE (mode 0600, written to a temporary file and renamed). Later, when NAME is
    entered at the username prompt, the client sends `NAME TOKEN` instead (no password
    asked). A refused token: a note (interactive, then the password login as usual) or,
    in script mode, `error: the token in FILE was refused ...` and exit 1 before the
    script's next line could be taken for a username. In script mode with FILE, login
    lines go one at a time (each answered first) and the client's `token` is answered
    before the script's commands are sent.

Exit codes
    0  a normal end: the server said `ok: bye` and closed; the user quit (`exit`,
       Ctrl-D or Ctrl-C at the prompt); or, in script mode, stdin ended and every reply
       was drained (logged in or not) before the client closed the connection itself.
    1  connect failed (one line on stderr: `error: cannot connect to HOST:PORT: ...`);
       the server closed the connection without `ok: bye`, in either mode and even
       after stdin's EOF, since replies may then be missing (stderr says
       `connection closed by server`, plus the last `error: `/`* ` line that explains
       it, e.g. `* server shutting down`); the server did not answer the login lines;
       or stdout was closed under a script (e.g. piped into `head`).
    130 Ctrl-C (SIGINT) outside the prompt, e.g. while a script is running.
    No traceback is ever printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import ssl
import sys
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path

from .chat import ALERT, ERROR, MENTION, NOTICE, OK, PRIVATE, YOU, ChatState

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50000
CONNECT_TIMEOUT = 10.0  # seconds for TCP connect plus TLS handshake
BYE_TIMEOUT = 5.0  # how long a quitting client waits for `ok: bye` and the close
LOGIN_REPLY_TIMEOUT = 10.0  # silence that means the server will not answer login lines
READ_LIMIT = 1 << 20  # far above any line the server sends; guards against a runaway one
STDIN_CHUNK = 1 << 16

PROMPT = b"enter a username:"
PASSWORD_PROMPT = b"password for "  # `password for <name>:` (PROTOCOL.md v2, Accounts)
TOKEN_REPLY = b"ok: token "
WELCOME = b"connected! "
BYE = b"ok: bye"
PONG = b"ok: pong"
# Join/leave notices are not reasons for a close, so they are never quoted as one.
_MEMBERSHIP_NOTICE = re.compile(rb"^\* \S+ (joined|left) the group \S+$")

Emit = Callable[[bytes], None]


def _name_key(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


class TokenFile:
    """--token-file: after a password login the client asks for `token` and keeps
    `<name> <token>` in the file (mode 0600, replaced atomically); when that name is
    typed at the username prompt later, it sends `<name> <token>` (the one-line
    login) instead, so no password is asked. A refused token is not offered again
    in the session; the next password login replaces it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved = self._load()
        self.using = False  # the last login line sent carried the saved token
        self.password_login = False  # the last login line sent was (or had) a password
        self.requested = False  # `token` sent after login, its reply not yet seen
        self.refused = False
        self.event: str | None = None  # a note for the user (saved, refused)

    def _load(self) -> tuple[str, str] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            print(f"error: cannot read the token file {self.path}: "
                  f"{getattr(exc, 'strerror', None) or exc}", file=sys.stderr, flush=True)
            return None
        parts = text.split()
        if len(parts) != 2:
            print(f"error: token file {self.path} ignored: not one line `NAME TOKEN`",
                  file=sys.stderr, flush=True)
            return None
        return parts[0], parts[1]

    def login_line(self, line: str, password_prompt: bool) -> str:
        """What to send for `line`, entered while not logged in."""
        self.using = False
        if password_prompt or " " in line.strip(" \t"):  # a password, or `name password`
            self.password_login = True
            return line
        self.password_login = False
        saved = self.saved
        if saved and not self.refused and _name_key(line.strip(" \t")) == _name_key(saved[0]):
            self.using = True
            return f"{saved[0]} {saved[1]}"
        return line

    def save(self, name: str, token: str) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # also when an old temporary file was wider
                os.write(fd, f"{name} {token}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            self.event = f"error: cannot save the token to {self.path}: {exc.strerror or exc}"
            return
        self.saved = (name, token)
        self.refused = False
        self.event = f"token saved to {self.path}"


class Connection:
    """A server connection plus what the client learned from the lines it has read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 tokens: TokenFile | None = None) -> None:
        self.reader = reader
        self.writer = writer
        self.tokens = tokens
        self.prompts = 0  # `enter a username:` lines seen
        self.prompts_at_login: int | None = None  # prompts seen when `connected! ` came
        self.password_prompts = 0  # `password for <name>:` lines seen
        self.password_prompts_at_login = 0
        self.password_wanted = False  # the last login-phase line was `password for ...:`
        self.on_hidden: Callable[[], None] | None = None  # after a line not emitted
        self.name = ""
        self.pongs = 0
        self.saw_bye = False
        self.closed = False
        self.last_line = b""
        self.stdout_gone = False  # script output pipe closed: stop quietly, exit 1
        self._changed = asyncio.Condition()

    @property
    def logged_in(self) -> bool:
        return self.prompts_at_login is not None

    @property
    def answers(self) -> int:
        """Login-phase lines the server has answered: each gets one of `connected! `,
        `password for <name>:` or a new `enter a username:` (the first one is not an
        answer)."""
        return (max(self.prompts - 1, 0) + self.password_prompts
                + (1 if self.logged_in else 0))

    @property
    def first_command(self) -> int:
        """Once logged in: how many sent lines the login took (the rest are commands)."""
        return (self.prompts_at_login or 0) + self.password_prompts_at_login

    async def pump(self, emit: Emit) -> None:
        """Read server lines until the server closes, noting and emitting each one."""
        try:
            while True:
                try:
                    line = await self.reader.readline()
                except (OSError, ValueError):  # reset, TLS error, or a line over READ_LIMIT
                    break
                if not line:
                    break
                # Lines end with LF; a last fragment before the close is shown anyway,
                # since it can only help explain the close.
                line = line.rstrip(b"\n").removesuffix(b"\r")
                if self._note(line):
                    emit(line)
                elif self.on_hidden is not None:
                    self.on_hidden()
                async with self._changed:
                    self._changed.notify_all()
        finally:
            self.closed = True
            async with self._changed:
                self._changed.notify_all()

    def _note(self, line: bytes) -> bool:
        """Learn from a server line; False for the reply to the client's own `token`."""
        self.last_line = line
        tokens = self.tokens
        if line == PROMPT:
            self.prompts += 1
            self.password_wanted = False
        elif not self.logged_in and line.startswith(PASSWORD_PROMPT) and line.endswith(b":"):
            self.password_prompts += 1
            self.password_wanted = True
        elif line.startswith(WELCOME) and not self.logged_in:
            self.prompts_at_login = self.prompts
            self.password_prompts_at_login = self.password_prompts
            self.password_wanted = False
            self.name = line.rpartition(b" ")[2].decode("utf-8", "replace")
            if tokens is not None and tokens.password_login:
                tokens.requested = True  # answered before anything sent after this
                self.writer.write(b"token\n")
        elif tokens is not None and tokens.requested and line.startswith(
                (TOKEN_REPLY, b"error: ")):
            tokens.requested = False
            if line.startswith(TOKEN_REPLY):
                tokens.save(self.name, line[len(TOKEN_REPLY):].decode("ascii", "replace"))
                return False
        elif (tokens is not None and tokens.using and not self.logged_in
              and line.startswith(b"error: ")):
            tokens.using = False
            tokens.refused = True
            tokens.event = (f"the token in {tokens.path} was refused ({line.decode('utf-8', 'replace')}); "
                            "log in with the password")
        elif line == PONG:
            self.pongs += 1
        elif line == BYE:
            self.saw_bye = True
        return True

    async def wait_until(self, done: Callable[[], bool], idle: float | None = None) -> bool:
        """Wait until done() holds. False if the server closed first, or if idle seconds
        passed without a line (when idle is given)."""
        async with self._changed:
            while not done():
                if self.closed:
                    return False
                try:
                    await asyncio.wait_for(self._changed.wait(), idle)
                except asyncio.TimeoutError:
                    return False
            return True

    async def send(self, data: bytes) -> bool:
        """Send raw bytes; False if the connection is gone (the pump reports why)."""
        if self.closed:
            return False
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (OSError, RuntimeError):  # RuntimeError: transport already closing
            return False
        return True

    def close_reason(self) -> str:
        """The stderr line for a close the client did not ask for."""
        last = self.last_line
        if last.startswith(b"error: ") or (
            last.startswith(b"* ") and not _MEMBERSHIP_NOTICE.match(last)
        ):
            return "connection closed by server: " + last.decode("utf-8", "replace")
        return "connection closed by server"

    def ended_code(self) -> int:
        """Exit code once the server has closed: 0 after `ok: bye`, else 1 and why."""
        if self.saw_bye:
            return 0
        if not self.stdout_gone:
            print(self.close_reason(), file=sys.stderr, flush=True)
        return 1

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass  # closing anyway; a failed TLS goodbye changes nothing for the user


# --- connecting -----------------------------------------------------------------


def _tls_context(insecure: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if insecure:  # self-signed test servers: encrypt, but trust any certificate
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _connect(host: str, port: int, tls: bool, insecure: bool,
                   tokens: TokenFile | None = None) -> Connection:
    ctx = _tls_context(insecure) if tls else None
    opening = asyncio.open_connection(host, port, ssl=ctx, limit=READ_LIMIT)
    reader, writer = await asyncio.wait_for(opening, CONNECT_TIMEOUT)
    return Connection(reader, writer, tokens)


def _reason(exc: BaseException) -> str:
    """A short human reason for a failed connect (never a traceback)."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    if isinstance(exc, OSError) and exc.errno:
        # asyncio's own text is "Connect call failed ('127.0.0.1', 1)"; the errno says why.
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


# --- script mode ----------------------------------------------------------------


class _SentLog:
    """Which sent lines could be `exit` or `ping` commands, by position, so that once
    the login line is known we know what the server will still answer."""

    def __init__(self) -> None:
        self.count = 0
        self.exits: list[int] = []
        self.pings: list[int] = []

    def add(self, line: bytes) -> None:
        word = _command_word(line)
        if word == "exit":
            self.exits.append(self.count)
        elif word == "ping":
            self.pings.append(self.count)
        self.count += 1

    def exit_after(self, first_command: int) -> bool:
        return any(i >= first_command for i in self.exits)

    def pings_after(self, first_command: int) -> int:
        return sum(1 for i in self.pings if i >= first_command)


def _command_word(line: bytes) -> str | None:
    """The line as a lone command word the way the server reads it, else None."""
    try:
        text = line.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = text.strip(" \t").casefold()
    return text if text in ("exit", "ping") else None


def _stdin_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
    """Daemon thread: feed stdin chunks into queue, then None at EOF.

    os.read on the fd, not sys.stdin.buffer: a thread still blocked inside the buffered
    reader at interpreter exit makes Python abort ("could not acquire lock")."""
    while True:
        try:
            chunk = os.read(sys.stdin.fileno(), STDIN_CHUNK)
        except OSError:
            chunk = b""
        put = queue.put(chunk or None)
        try:  # a bounded queue, so a huge or endless stdin cannot fill memory
            asyncio.run_coroutine_threadsafe(put, loop).result()
        except Exception:  # loop closed or put cancelled: the session is over
            put.close()  # never scheduled: no "coroutine was never awaited" on stderr
            return
        if not chunk:
            return


async def _stdin_lines(queue: asyncio.Queue):
    """Yield stdin lines (with LF) from the chunk queue; a last line gets an LF."""
    pending = b""
    while (chunk := await queue.get()) is not None:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending + b"\n"


class _ScriptOutput:
    """Write each server line to stdout as received, except the drain's own `ok: pong`."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.hidden_pong = 0  # which `ok: pong` answers the drain ping; 0 = none yet

    def __call__(self, line: bytes) -> None:
        conn = self.conn
        if conn.stdout_gone or (line == PONG and conn.pongs == self.hidden_pong):
            return
        try:
            sys.stdout.buffer.write(line + b"\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # Nobody reads any more: stop. Point fd 1 at devnull so the interpreter's
            # final flush does not complain.
            conn.stdout_gone = True
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            conn.writer.transport.abort()


class _Stop(Exception):
    """Script mode cannot go on: the exit code (the reason is already on stderr)."""

    def __init__(self, code: int) -> None:
        self.code = code


async def _token_turn(conn: Connection, sent: _SentLog) -> None:
    """With --token-file, before the next stdin line: every line sent so far
    answered while logging in, and once logged in the client's own `token`
    answered, so the client knows what the line is (a name, a password, a
    command) and its `token` comes before the script's commands."""
    tokens = conn.tokens
    assert tokens is not None
    answered = await conn.wait_until(
        lambda: (not tokens.requested) if conn.logged_in else conn.answers >= sent.count,
        idle=LOGIN_REPLY_TIMEOUT,
    )
    if not answered and not conn.closed:
        print("error: no reply from server", file=sys.stderr, flush=True)
        raise _Stop(1)
    if tokens.refused and not conn.logged_in:
        print(f"error: {tokens.event}", file=sys.stderr, flush=True)
        raise _Stop(1)


async def _send_stdin(conn: Connection, pump: asyncio.Task, sent: _SentLog) -> bool:
    """Send stdin lines until EOF (True) or until the server closes first (False).
    With --token-file, lines go one at a time while logging in (see _token_turn)
    and a saved account's name becomes `<name> <token>`."""
    queue: asyncio.Queue = asyncio.Queue(maxsize=16)
    loop = asyncio.get_running_loop()
    threading.Thread(target=_stdin_reader, args=(loop, queue), daemon=True).start()
    lines = _stdin_lines(queue)
    while True:
        step = asyncio.ensure_future(anext(lines))
        await asyncio.wait({step, pump}, return_when=asyncio.FIRST_COMPLETED)
        if not step.done():  # the server closed while we waited for input
            step.cancel()
            return False
        try:
            line = step.result()
        except StopAsyncIteration:
            return True
        tokens = conn.tokens
        if tokens is not None:
            await _token_turn(conn, sent)
            if not conn.logged_in and not conn.closed:
                typed = line.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8", "replace")
                line = tokens.login_line(typed, conn.password_wanted).encode() + b"\n"
        if not await conn.send(line):
            return False
        sent.add(line)


async def _drain(conn: Connection, sent: _SentLog, output: _ScriptOutput) -> int:
    """After stdin's EOF: wait until every reply is printed (see the module docstring)."""
    answered = await conn.wait_until(
        lambda: conn.logged_in or conn.answers >= sent.count, idle=LOGIN_REPLY_TIMEOUT
    )
    if conn.closed:
        return conn.ended_code()
    if not answered:
        print("error: no reply from server", file=sys.stderr, flush=True)
        return 1
    tokens = conn.tokens
    if not conn.logged_in:
        if tokens is not None and tokens.refused:
            print(f"error: {tokens.event}", file=sys.stderr, flush=True)
            return 1
        return 0  # at the username (or password) prompt: nothing is pending
    if tokens is not None:
        await _token_turn(conn, sent)  # the token saved before the client closes
    first_command = conn.first_command
    if sent.exit_after(first_command):
        await conn.wait_until(lambda: False)  # `ok: bye` and the close are coming
        return conn.ended_code()
    output.hidden_pong = sent.pings_after(first_command) + 1
    if await conn.send(b"ping\n") and await conn.wait_until(
        lambda: conn.pongs >= output.hidden_pong
    ):
        return 0
    return conn.ended_code()


async def _script(conn: Connection) -> int:
    output = _ScriptOutput(conn)
    pump = asyncio.create_task(conn.pump(output))
    sent = _SentLog()
    try:
        if not await _send_stdin(conn, pump, sent):
            await pump  # print everything up to the close
            return 1 if conn.stdout_gone else conn.ended_code()
        code = await _drain(conn, sent, output)
    except _Stop as stop:
        return stop.code
    return 1 if conn.stdout_gone else code


# --- interactive mode -----------------------------------------------------------


# Colors by line kind (chat.py `kind`): ANSI SGR parameters.
COLORS = {PRIVATE: "35", MENTION: "1;33", NOTICE: "36", ERROR: "31", OK: "32",
          ALERT: "1;7;31", YOU: "1;7;33"}  # notices about the user: bold, reverse video
NOTE_COLOR = "2"  # the client's own notes (/help, usage) are dim
# What the client asks at login, to complete names with; their replies are not shown.
HIDDEN_QUERIES = (b"groups: ", b"users: ")


def use_color(flag: bool | None, environ=os.environ) -> bool:
    """--color/--no-color if given; otherwise color unless NO_COLOR is set (no-color.org)."""
    if flag is not None:
        return flag
    return not environ.get("NO_COLOR")


def _clean(text: str) -> str:
    """The text with every control character (a hostile server's escape sequences
    included) made visible and harmless: the terminal gets only what we color."""
    return "".join(c if c.isprintable() or c == "\t" else "\ufffd" for c in text)


def _paint(text: str, color: str | None, on: bool) -> str:
    return f"\x1b[{color}m{text}\x1b[0m" if on and color else text


class _Screen:
    """Interactive output: each server line noted in the chat state and printed in
    its color above the prompt; the login's own `groups`/`users` replies hidden."""

    def __init__(self, conn: Connection, chat: ChatState, color: bool) -> None:
        self.conn = conn
        self.chat = chat
        self.color = color
        self.hidden = {prefix: 0 for prefix in HIDDEN_QUERIES}
        conn.on_hidden = self.token_event

    def __call__(self, line: bytes) -> None:
        text = _clean(line.decode("utf-8", "replace"))
        was_logged_in = bool(self.chat.name)
        kind = self.chat.note(text)
        for prefix in HIDDEN_QUERIES:
            if self.hidden[prefix] and line.startswith(prefix):
                self.hidden[prefix] -= 1
                return
        print(_paint(text, COLORS.get(kind), self.color), flush=True)
        self.token_event()
        if not was_logged_in and self.chat.name:
            # Names for tab completion (the replies come in order, before any the
            # user asks for, so the first of each kind is ours).
            for prefix in HIDDEN_QUERIES:
                self.hidden[prefix] += 1
            self.conn.writer.write(b"groups\nusers\n")

    def token_event(self) -> None:
        """--token-file's news: refused (after its error line), or saved."""
        tokens = self.conn.tokens
        if tokens is not None and tokens.event:
            self.note(tokens.event)
            tokens.event = None

    def note(self, text: str) -> None:
        print(_paint(_clean(text) if "\n" not in text else text, NOTE_COLOR, self.color),
              flush=True)


async def _quit(conn: Connection, pump: asyncio.Task) -> int:
    """The user wants out: say `exit` if logged in and give `ok: bye` a moment."""
    if conn.logged_in and await conn.send(b"exit\n"):
        try:
            await asyncio.wait_for(asyncio.shield(pump), BYE_TIMEOUT)
        except asyncio.TimeoutError:
            pass  # the user asked to leave; do not hang on a mute server
    return 0


_QUIT = object()  # what _ask returns for Ctrl-D and Ctrl-C


async def _prompt(session, conn: Connection, chat: ChatState):
    """One input line, or _QUIT for Ctrl-D (EOFError) and Ctrl-C (KeyboardInterrupt).

    Both are caught inside this coroutine on purpose: a KeyboardInterrupt escaping a
    task is re-raised by asyncio out of the whole event loop."""
    try:
        # handle_sigint=False: inside the prompt the terminal is raw and Ctrl-C is
        # a key (bound to KeyboardInterrupt); a SIGINT can only come between two
        # prompts, and _interactive's own handler takes it (see there).
        # is_password: after `password for <name>:` (also when it arrives while
        # this prompt is shown: the filter is read at every redraw) nothing typed
        # is echoed.
        from prompt_toolkit.filters import Condition

        return await session.prompt_async(
            chat.prompt, handle_sigint=False,
            is_password=Condition(lambda: chat.password_for is not None))
    except (EOFError, KeyboardInterrupt):
        return _QUIT


async def _ask(session, conn: Connection, chat: ChatState, pump: asyncio.Task,
               interrupted: asyncio.Future):
    """What the user typed, _QUIT, or None when the server closed meanwhile."""
    prompt = asyncio.ensure_future(_prompt(session, conn, chat))
    await asyncio.wait({prompt, pump, interrupted}, return_when=asyncio.FIRST_COMPLETED)
    if not prompt.done():
        prompt.cancel()  # lets prompt_toolkit restore the terminal
        await asyncio.gather(prompt, return_exceptions=True)
        return _QUIT if interrupted.done() else None
    return prompt.result()


def _completer(chat: ChatState):
    """prompt_toolkit completion from the chat state: commands, then group or user
    names where the command takes one, user names in messages (mentions)."""
    from prompt_toolkit.completion import Completer, Completion

    class ChatCompleter(Completer):
        def get_completions(self, document, complete_event):
            word = document.get_word_before_cursor(WORD=True)
            for candidate in chat.completions(document.text_before_cursor):
                yield Completion(candidate, start_position=-len(word))

    return ChatCompleter()


def _history(keep: Callable[[str], bool]):
    """The input history (up arrow), in memory only, without the lines `keep` refuses
    (passwords: see ChatState.keep_in_history). prompt_toolkit appends every accepted
    line, the password prompt's too, so the filter is here."""
    from prompt_toolkit.history import InMemoryHistory

    class ChatHistory(InMemoryHistory):
        def append_string(self, string: str) -> None:
            if keep(string):
                super().append_string(string)

    return ChatHistory()


async def _interactive(conn: Connection, raw: bool = False, color: bool = True) -> int:
    from prompt_toolkit import PromptSession  # only interactive runs pay for the import
    from prompt_toolkit.patch_stdout import patch_stdout

    chat = ChatState(raw=raw)
    screen = _Screen(conn, chat, color)
    session: PromptSession[str] = PromptSession(completer=_completer(chat),
                                                complete_while_typing=False,
                                                history=_history(chat.keep_in_history))
    # Between two prompts (a line just entered, the next prompt not yet drawn) the
    # terminal is in cooked mode and Ctrl-C is a SIGINT, not a key: it must mean
    # the same as inside the prompt (say `exit`), not cancel the program midway.
    loop = asyncio.get_running_loop()
    interrupted: asyncio.Future[None] = loop.create_future()

    def on_sigint() -> None:
        if not interrupted.done():
            interrupted.set_result(None)

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        # raw=True: lines reach the terminal as printed, colors included; _Screen has
        # already made every control character of the server's text harmless.
        with patch_stdout(raw=True):
            pump = asyncio.create_task(conn.pump(screen))
            while True:
                text = await _ask(session, conn, chat, pump, interrupted)
                if text is None:
                    return conn.ended_code()
                if text is _QUIT:
                    return await _quit(conn, pump)
                password = chat.password_for is not None
                typed = chat.translate(text)
                if typed.note:
                    screen.note(typed.note)
                if typed.quit:
                    return await _quit(conn, pump)
                if conn.tokens is not None and not chat.name and typed.send:
                    typed.send = [conn.tokens.login_line(typed.send[0], password)]
                for line in typed.send:
                    # Pasted newlines become separate lines, which is what they mean.
                    await conn.send(line.encode("utf-8", "replace") + b"\n")
    finally:
        loop.remove_signal_handler(signal.SIGINT)


# --- entry points ---------------------------------------------------------------


async def _session(host: str, port: int, tls: bool, insecure: bool, raw: bool = False,
                   color: bool = True, token_file: Path | None = None) -> int:
    tokens = TokenFile(token_file) if token_file is not None else None
    try:
        conn = await _connect(host, port, tls, insecure, tokens)
    except (OSError, asyncio.TimeoutError, ValueError, OverflowError) as exc:
        # ValueError/OverflowError: a malformed host name or a port outside 0..65535.
        print(f"error: cannot connect to {host}:{port}: {_reason(exc)}", file=sys.stderr)
        return 1
    try:
        if sys.stdin.isatty():
            return await _interactive(conn, raw, color)
        return await _script(conn)
    finally:
        await conn.close()


def run(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, tls: bool = False,
    insecure: bool = False, raw: bool = False, color: bool | None = None,
    token_file: Path | None = None,
) -> int:
    """Run the client until the session ends; returns the process exit code.
    `raw`: interactive lines are sent as typed; `color`: None = unless NO_COLOR;
    `token_file`: see TokenFile."""
    try:
        return asyncio.run(_session(host, port, tls, insecure, raw, use_color(color),
                                    token_file))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the contract is "no traceback ever"; say what broke
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """`python -m chatsrv.client [HOST] [PORT] [--tls] [--insecure] [--raw] [--no-color]
    [--token-file FILE]`."""
    parser = argparse.ArgumentParser(prog="chatsrv.client", description="chatsrv client")
    parser.add_argument("host", nargs="?", default=DEFAULT_HOST)
    parser.add_argument("port", nargs="?", type=int, default=DEFAULT_PORT)
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument(
        "--insecure", action="store_true", help="with --tls: do not verify the certificate"
    )
    parser.add_argument("--raw", action="store_true",
                        help="send every typed line as is (protocol commands)")
    parser.add_argument("--no-color", dest="color", action="store_false", default=None,
                        help="no colors (also with NO_COLOR set)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="keep a login token here (mode 0600) after a password login "
                        "and use it when that name is typed again")
    args = parser.parse_args(argv)
    return run(args.host, args.port, tls=args.tls, insecure=args.insecure, raw=args.raw,
               color=args.color, token_file=args.token_file)


if __name__ == "__main__":
    raise SystemExit(main())
