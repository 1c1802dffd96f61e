"""core/names.py: UTS #39 skeletons, invisible names, the message text check."""

from __future__ import annotations

import pytest

from chatsrv.core import protocol as P
from chatsrv.core.names import bad_text, invisible, skeleton

ALICES = [
    "alice",
    "Alice",
    "\u0430lice",  # Cyrillic a
    "alice\u200c",  # ZWNJ
    "alice\u034f",  # combining grapheme joiner
    "alice\ufe0f",  # variation selector 16
    "\uff41\uff4c\uff49\uff43\uff45",  # fullwidth
    "\U0001d41a\U0001d425\U0001d422\U0001d41c\U0001d41e",  # mathematical bold
]


@pytest.mark.parametrize("name", ALICES, ids=[n.encode("unicode_escape").decode() for n in ALICES])
def test_look_alikes_share_the_skeleton_of_alice(name):
    assert skeleton(name) == skeleton("alice")


@pytest.mark.parametrize("a,b", [("alice", "bob"), ("alice", "alicia"), ("dev", "dew"),
                                 ("\u0639\u0644\u06cc", "\u0639\u0644\u0645")])
def test_different_names_keep_different_skeletons(a, b):
    assert skeleton(a) != skeleton(b)


def test_persian_and_arabic_yeh_are_one_name():
    # علی with Persian yeh and with Arabic yeh look the same.
    assert skeleton("\u0639\u0644\u06cc") == skeleton("\u0639\u0644\u064a")


@pytest.mark.parametrize("name", ["\u3164", "\u3164\u3164", "\u115f\u1160", "\uffa0"])
def test_hangul_fillers_alone_are_invisible_and_invalid(name):
    assert invisible(name)
    assert P.name_problem(name) == "only invisible characters"


@pytest.mark.parametrize("name", ["alice", "\u3164a", "\u0645\u200c\u06cc"])
def test_a_name_with_something_visible_is_valid(name):
    assert not invisible(name)
    assert P.name_problem(name) is None


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u202a", "\u202e", "\u2066", "\u2069",
                                  "\x00", "\x1b", "\x7f", "\x85"])
def test_bad_text(char):
    assert bad_text(f"hi{char}there")
    assert P.has_control(f"hi{char}there")


def test_zwnj_zwj_and_tab_stay_allowed():
    assert not bad_text("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 \U0001f469\u200d\U0001f4bb\tx")


def test_skeleton_is_the_same_once_its_table_is_full(monkeypatch):
    from chatsrv.core import names

    want = {n: skeleton(n) for n in ["\u0dc3\u0dd2\u0d82\u0dc4\u0dbd", "a\u2060b", "\u0430lice"]}
    monkeypatch.setattr(names, "_TABLE_MAX", 0)
    for cp in [cp for cp in names._TABLE if chr(cp) not in names._PROTO]:
        del names._TABLE[cp]  # only the prototypes left, and nothing more may be cached
    assert {n: skeleton(n) for n in want} == want
    assert skeleton("\U00010400x") == skeleton("\U00010428X")  # Deseret: case folded
    assert all(chr(cp) in names._PROTO for cp in names._TABLE)
