"""Every exception the core raises, in one place.

Two kinds:
- reply errors (`ReplyError` and below): `str(err)` is the whole line the
  client hears (or the admin API returns), without its LF. `ProtocolError` is a
  client's mistake in a command; `GroupExists` and `TooManyGroups` are the two
  `create` refusals the admin API answers with 409 instead of 400;
  `LoginRefused` a username line that cannot log in; `CreateFailed` and
  `DeleteFailed` the store (or Redis) failing an administrator's create or
  delete.
- signals between the core and its adapters, not meant for a client as they
  are: `GroupPending` (the command waits for a commit, see `commits`),
  `GroupTaken` (another node committed the name first; carries its record) and
  `ClusterUnavailable` (Redis cannot be reached).

Plain classes with no imports, so `protocol` (which raises `ProtocolError`
while parsing) and every other module can use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Group


class ReplyError(Exception):
    """The text of the exception is the `error: ...` line to send, without LF."""


class ProtocolError(ReplyError):
    """A client mistake; `str(err)` is the full reply line without LF."""


class GroupExists(ProtocolError):
    """`create` of a name already taken (the admin API answers 409, not 400)."""


class TooManyGroups(ProtocolError):
    """`create` beyond `--max-groups` (the admin API answers 409: delete some first)."""


class LoginRefused(ReplyError):
    """The name cannot be used; the text is the `error: ...` line."""


class CreateFailed(ReplyError):
    """The store could not commit a new group (the text is the `error:` line)."""


class DeleteFailed(ReplyError):
    """The store (or Redis) could not delete a group (the text is the error)."""


class RolesNotStored(ReplyError):
    """An administrator's moderation change the store failed to keep (the admin API
    answers 503); it holds on this node until a restart."""


class GroupPending(Exception):
    """The command names a group whose creation awaits the store: decide it later."""

    def __init__(self, group: Group) -> None:
        super().__init__(group.name)
        self.group = group


class GroupTaken(Exception):
    """Cluster mode: another node created a group of that name first (`args[0]`
    is that group's record)."""


class ClusterUnavailable(Exception):
    """Cluster mode: Redis cannot be reached; the client hears `error: cluster unavailable`."""
