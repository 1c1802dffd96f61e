"""Look-alike names and invisible text (PROTOCOL.md v2), with no I/O and no state.

Two names are the same when their *skeletons* are equal: the name is NFKC'd and
case-folded, its default-ignorable characters (ZWNJ, CGJ, variation selectors,
Hangul fillers, ...) are removed, and every character is replaced by its UTS #39
confusable prototype (Cyrillic `а` -> `a`, fullwidth `ａ` -> `a`, mathematical bold
`𝐚` -> `a`), then case-folded again. The skeleton is computed once per name (at
login, at `create`, when another node announces a name) and kept with the user or
group; nothing here runs per message.

The Unicode data comes from libraries, not from hand-made tables:
- `confusable-homoglyphs` ships UTS #39 `confusables.txt` as JSON. Its file keeps
  each `source ; prototype` line in both directions (source -> [prototype] and
  prototype -> [sources]); `_prototypes` recovers one representative per class
  (see there).
- `precis-i18n` knows the `Default_Ignorable_Code_Point` property.

Message text: `bad_text` is the one check a `public`/`private` line gets (one
compiled regex search, like the C0/C1 check it replaces): C0 except TAB, DEL,
C1, and the characters that fake a line break or reorder the rest of a line
(U+2028, U+2029, U+202A-U+202E, U+2066-U+2069). U+200C and U+200D stay allowed.
"""

from __future__ import annotations

import json
import re
import unicodedata
from importlib import resources

from precis_i18n.unicode import UnicodeData

_UCD = UnicodeData()

# C0 controls except TAB, DEL, C1; line/paragraph separators; bidi embeddings,
# overrides and isolates.
_BAD_TEXT = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

# The JSON renders right-to-left characters between LEFT-TO-RIGHT MARKs (the
# comment column of confusables.txt does); they are not part of the data.
_LRM_RLM = str.maketrans("", "", "\u200e\u200f")


def bad_text(text: str) -> bool:
    """True if a message holds a character the contract counts as a control character."""
    return _BAD_TEXT.search(text) is not None


def is_ignorable(ch: str) -> bool:
    return _UCD.default_ignorable(ord(ch))


def _load_pairs() -> dict[str, list[str]]:
    raw = resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8")
    data: dict[str, list[dict[str, str]]] = json.loads(raw)
    pairs: dict[str, list[str]] = {}
    for key, entries in data.items():
        k = key.translate(_LRM_RLM)
        if k:
            pairs.setdefault(k, []).extend(
                c for c in (e["c"].translate(_LRM_RLM) for e in entries) if c)
    return pairs


def _prototypes() -> dict[str, str]:
    """One character -> the string that stands for its confusable class.

    confusables.txt maps each *source* code point to a *prototype* string, and a
    prototype is never a source. In the both-ways JSON a source is therefore a
    key with exactly one partner; when that partner is a longer string, or has
    other partners too, it is the prototype. The only undecidable case is a
    class of exactly two single characters (x <-> y, both with one partner):
    either may stand for the class, so the smaller code point does. Prototypes
    are then expanded through the same map until nothing changes, so a class
    that was named by its source is also named so inside longer prototypes."""
    pairs = _load_pairs()
    proto: dict[str, str] = {}
    for key, partners in pairs.items():
        if len(key) != 1 or len(set(partners)) != 1:
            continue
        target = partners[0]
        if len(target) != 1 or len(set(pairs.get(target, ()))) > 1:
            proto[key] = target  # key is a source
        elif target < key:
            proto[key] = target  # a two-character class: the smaller one names it
    for _ in range(4):  # prototypes of prototypes (only through the tie-break above)
        changed = False
        for key, value in proto.items():
            expanded = "".join(proto.get(ch, ch) for ch in value)
            if expanded != value:
                proto[key] = expanded
                changed = True
        if not changed:
            break
    return proto


_PROTO = _prototypes()


_TABLE_MAX = len(_PROTO) + 50_000


class _Table(dict[int, "str | None"]):
    """The `str.translate` table of `skeleton`: default-ignorables removed, confusable
    sources to their prototypes. The prototypes are loaded; any other code point
    is added the first time a name holds it (removed if default-ignorable, else
    kept as it is), up to `_TABLE_MAX` entries (a few MB); past that, LookupError,
    which `translate` takes as "keep it" (slower, same result)."""

    def __missing__(self, cp: int) -> str | None:
        value = None if _UCD.default_ignorable(cp) else chr(cp)
        if len(self) < _TABLE_MAX:
            self[cp] = value
        elif value is not None:
            raise LookupError(cp)
        return value


_TABLE = _Table({ord(k): v for k, v in _PROTO.items()})


def skeleton(name: str) -> str:
    """The key under which look-alike names collide (see the module's doc)."""
    # NFKC first (as identifier comparison does, NFKC_Casefold): the fullwidth and
    # mathematical forms that confusables.txt does not list are compatibility
    # variants of the plain letter.
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", name).casefold())
    return unicodedata.normalize("NFD", folded.translate(_TABLE)).casefold()


def invisible(name: str) -> bool:
    """True if a name has nothing visible: only default-ignorable or blank characters
    (the Hangul fillers U+115F, U+1160, U+3164, U+FFA0 are both)."""
    return all(_UCD.default_ignorable(ord(ch)) or ch.isspace() for ch in name)


RESERVED = ("admin",)
"""Names nobody may log in with nor make an account of, nor any look-alike: `admin`
is the administrators' name in notices and the audit log (audit.py ADMIN_ACTOR),
so a user of that name could pass for them (`[private from admin] your password?`)."""

_RESERVED_SKELS = frozenset(skeleton(name) for name in RESERVED)


def reserved(skel: str) -> bool:
    """Whether a name with this skeleton is one of `RESERVED` or looks like one."""
    return skel in _RESERVED_SKELS
