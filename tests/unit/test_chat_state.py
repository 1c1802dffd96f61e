"""The terminal client's chat state (chatsrv/chat.py): what typed lines mean, what
server lines teach it, how they are colored, what Tab offers."""

from __future__ import annotations

from chatsrv.chat import ERROR, MENTION, NOTICE, OK, OTHER, PRIVATE, ChatState, help_text
from chatsrv.client import _clean, use_color


def logged_in(**kw) -> ChatState:
    chat = ChatState(**kw)
    chat.note("connected! welcome alice")
    chat.note("you joined the group General")
    return chat


def test_before_login_lines_are_usernames():
    chat = ChatState()
    assert chat.translate("/join x").send == ["/join x"]
    assert chat.translate("exit").quit  # at the prompt: just close, as before
    assert chat.prompt() == "> "


def test_plain_text_goes_to_the_current_conversation():
    chat = logged_in()
    assert chat.prompt() == "alice> "
    typed = chat.translate("hello")
    assert typed.send == [] and typed.note.startswith("no conversation yet")
    assert chat.translate("users").send == ["users"]  # a protocol command as typed
    assert chat.translate("join Physics").send == ["join Physics"]
    assert chat.note("ok: joined group Physics") == OK  # after `join G` ...
    assert chat.current == ("group", "Physics")
    assert chat.prompt() == "alice [Physics]> "
    assert chat.translate("users are here").send == ["public Physics users are here"]
    assert chat.translate("/msg Bob hi there").send == ["private Bob hi there"]
    assert chat.prompt() == "alice [@Bob]> "
    assert chat.translate("more").send == ["private Bob more"]
    assert chat.translate("//slash").send == ["private Bob /slash"]
    assert chat.translate("/g general").send == []  # the name as the server showed it
    assert chat.current == ("group", "General")
    assert chat.translate("/g Nope").note == "you are not in Nope: /join Nope to talk there"
    assert chat.translate("/leave").send == ["leave Nope"]
    chat.note("ok: left group Nope")
    assert chat.current is None
    assert chat.translate("exit").quit and chat.translate("/quit").quit


def test_slash_commands():
    chat = logged_in()
    assert chat.translate("/help").note == help_text()
    assert chat.translate("/j Physics").send == ["join Physics"]
    assert chat.translate("/create Physics").send == ["create Physics"]
    assert chat.translate("/create").note == "usage: /create GROUP"
    assert chat.translate("/groups").send == ["groups"]
    assert chat.translate("/raw private bob x").send == ["private bob x"]
    assert chat.translate("/raw").note == "usage: /raw LINE"
    assert chat.translate("/history").note == "usage: /history [GROUP] [N]"
    chat.translate("/g General")
    assert chat.translate("/history").send == ["history General"]
    assert chat.translate("/history 5").send == ["history General 5"]
    assert chat.translate("/history Physics 5").send == ["history Physics 5"]
    assert chat.translate("/msg").note == "usage: /msg USER [TEXT]"
    assert chat.translate("/close").note == "no current conversation"
    assert chat.translate("/what").note == "unknown command /what; /help lists them"
    assert "/msg /m /query USER [TEXT]" in help_text()


def test_raw_mode_sends_everything_as_typed():
    chat = logged_in(raw=True)
    assert chat.translate("/g General").send == ["/g General"]
    chat.note("ok: joined group Physics")
    assert chat.current is None
    assert chat.translate("hello").send == ["hello"]
    assert chat.translate("exit").quit


def test_line_kinds_and_what_they_teach():
    chat = logged_in()
    assert chat.note("[private from bob] hi") == PRIVATE
    assert chat.note("[public group Physics from bob] hey Alice!") == MENTION
    assert chat.note("[public group Physics from bob] malice aforethought") == OTHER
    assert chat.note("[public group Physics from alice] alice here") == OTHER  # oneself
    assert chat.note("[history group Physics at 2026-01-01T00:00:00Z from carol] alice?") \
        == MENTION
    assert chat.note("* dave joined the group Chem") == NOTICE
    assert chat.note("* server shutting down") == NOTICE
    assert chat.note("error: no such group: X") == ERROR
    assert chat.note("ok: created group Bio") == OK
    assert set(chat.users) == {"alice", "bob", "carol", "dave"}
    assert set(chat.groups) == {"general", "physics", "chem", "bio"}
    chat.note("groups: General Zoo")
    assert list(chat.groups.values()) == ["General", "Zoo"]


def test_completions():
    chat = logged_in()
    chat.note("groups: General Physics Philosophy")
    chat.note("users: alice Bob bea")
    assert chat.completions("/jo") == ["/join"]
    assert chat.completions("/") [:3] == ["/help", "/join", "/j"]
    assert chat.completions("jo") == ["join"]
    assert chat.completions("/join Ph") == ["Philosophy", "Physics"]
    assert chat.completions("join ph") == ["Philosophy", "Physics"]
    assert chat.completions("/msg b") == ["bea", "Bob"]
    assert chat.completions("private B") == ["bea", "Bob"]
    chat.translate("/g General")
    assert chat.completions("b") == ["Bob", "bea"]  # in a conversation: mentions
    assert chat.completions("hello b") == ["bea", "Bob"]


def test_colors_and_cleaning():
    assert use_color(None, {}) and not use_color(None, {"NO_COLOR": "1"})
    assert use_color(None, {"NO_COLOR": ""})  # set but empty: colors (no-color.org)
    assert not use_color(False, {}) and use_color(True, {"NO_COLOR": "1"})
    assert _clean("a\x1b[2Jb\x07c\td") == "a\ufffd[2Jb\ufffdc\td"


def test_password_prompt_and_what_history_keeps():
    chat = ChatState()
    assert not chat.keep_in_history("alice")  # nothing before login
    chat.note("enter a username:")
    chat.note("password for alice:")
    assert chat.password_for == "alice" and chat.prompt() == "password: "
    assert not chat.keep_in_history("correct-horse")
    assert chat.translate("correct-horse").send == ["correct-horse"]  # sent as typed
    assert chat.password_for is None
    chat.note("error: login failed")
    chat.note("enter a username:")
    chat.note("password for alice:")
    chat.note("enter a username:")  # a login timeout or refusal: the prompt again
    assert chat.password_for is None and chat.prompt() == "> "
    assert not chat.keep_in_history("alice correct-horse")  # the one-line form
    chat.note("connected! welcome alice")
    chat.note("password for bob: is what I forgot")  # after login: just a line
    assert chat.password_for is None
    assert chat.keep_in_history("ping")
    for secret in ("register pw-123456", "password old-pass1 new-pass1", "/register pw-123456",
                   "/password a b", "/raw register pw-123456", "  PASSWORD x y"):
        assert not chat.keep_in_history(secret), secret
    assert chat.keep_in_history("token")


def test_account_slash_commands():
    chat = logged_in()
    assert chat.translate("/register pw-123456").send == ["register pw-123456"]
    assert chat.translate("/register").note == "usage: /register PASSWORD"
    assert chat.translate("/password old-pass1 new-pass1").send == [
        "password old-pass1 new-pass1"]
    assert chat.translate("/password only-one").note == "usage: /password OLD NEW"
    assert chat.translate("/token").send == ["token"]
    assert chat.translate("token").send == ["token"]  # the protocol command as typed
    assert "/register PASSWORD" in help_text()


def test_notices_about_you_stand_out_and_a_removal_forgets_the_group():
    from chatsrv.chat import ALERT, YOU

    chat = logged_in()
    chat.note("ok: joined group class")
    assert chat.current == ("group", "class") and "class" in chat.mine
    assert chat.note("* ta invited you to lab") == YOU
    assert chat.note("* teach made you a moderator of class") == YOU
    assert chat.note("* ta muted you in class for 10 minutes") == ALERT
    assert chat.note("* ta unmuted you in class") == YOU
    assert chat.note("* bob was removed from class by ta") == NOTICE  # about someone else
    assert chat.note("* ta removed you from class: talking: twice") == ALERT
    assert "class" not in chat.mine and chat.current is None
    assert chat.prompt() == "alice> "
    assert chat.translate("/g class").note == "you are not in class: /join class to talk there"
    chat.note("ok: joined group Lab")
    assert chat.note("* group Lab was deleted by an administrator") == ALERT
    assert "lab" not in chat.mine and "lab" not in chat.groups and chat.current is None
