"""Cluster mode: what this node knows of the other nodes' users and groups.

The backplane applies here what other nodes published (through the thin
`Hub.remote_*` delegations it calls). Their users are mirrored (`users`, and
`Group.remote` for their memberships) so `users`, `private` and the notice
limit are decided locally without asking Redis; their public messages go
through the same queues as local ones (`Hub.fanout`).

`unconfirmed` holds the local joins whose event has not come back from Redis
yet: a remote join or leave ordered before it in Redis is not that member's
news (see `notice`). Without a cluster everything here stays empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import protocol as P
from .model import Group, RemoteUser

if TYPE_CHECKING:
    from .hub import Hub

NodeUser = tuple[str, float, str, list[str]]
"""A user in a node's state message: (name, since, peer, group keys)."""


class Mirror:
    """Other nodes' users (`users`: name key -> RemoteUser) and memberships."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.users: dict[str, RemoteUser] = {}
        self.unconfirmed: set[tuple[str, str]] = set()  # (user key, group key)

    # ------------------------------------------------------------ users

    def login(self, node: str, name: str, since: float, peer: str = "") -> None:
        key = P.name_key(name)
        if key in self.hub.users:
            return  # ours (a stale event of a name this node now holds)
        user = self.users.get(key)
        if user is None or user.node != node:
            if user is not None:
                self._forget(user)
            remote = self.users[key] = RemoteUser(name, node, since, peer)
            self.hub.hold_user_skel(remote)

    def logout(self, key: str, node: str) -> None:
        user = self.users.get(key)
        if user is not None and user.node == node:
            self._forget(user)

    def forget(self, key: str) -> None:
        """Drop a mirrored user silently (Redis says the name is this node's now)."""
        user = self.users.get(key)
        if user is not None:
            self._forget(user)

    def _forget(self, user: RemoteUser, notify: bool = False) -> None:
        for gkey in list(user.groups):
            self.leave(user.key, gkey, user.node, notify)
        del self.users[user.key]
        self.hub.forget_user_skel(user)

    # ------------------------------------------------------------ memberships

    def join(self, key: str, gkey: str, node: str, notify: bool = True) -> None:
        user = self.users.get(key)
        group = self.hub.groups.get(gkey)
        if user is None or user.node != node or group is None or key in group.remote:
            return
        group.remote[key] = user.name
        user.groups.add(gkey)
        if notify and group.members:
            self.notice(group, P.joined_notice(user.name, group.name))

    def leave(self, key: str, gkey: str, node: str, notify: bool = True) -> None:
        user = self.users.get(key)
        group = self.hub.groups.get(gkey)
        if user is None or user.node != node or group is None or key not in group.remote:
            return
        if notify and group.members:
            self.notice(group, P.left_notice(user.name, group.name))
        del group.remote[key]
        user.groups.discard(gkey)

    def removed(self, key: str, gkey: str, node: str, actor: str) -> None:
        """`node` removed its member `key` from the group (a kick or ban by `actor`):
        out of it here, and the local members other than the actor hear so."""
        user = self.users.get(key)
        group = self.hub.groups.get(gkey)
        if user is None or user.node != node or group is None or key not in group.remote:
            return
        del group.remote[key]
        user.groups.discard(gkey)
        if group.members:
            hub = self.hub
            data = P.encode(P.removed_notice(user.name, group.name, actor))
            hub.stats.notices += hub.fanout(group, data, hub.users.get(P.name_key(actor)))

    def notice(self, group: Group, line: str) -> None:
        """A notice about another node's user, to the local members who were already
        in the group in Redis's order (their own join came back before this event)."""
        hub = self.hub
        if hub.notice_limit and group.size() > hub.notice_limit:
            return
        if not self.unconfirmed:
            hub.stats.notices += hub.fanout(group, P.encode(line), None)
            return
        data, gkey, n = P.encode(line), group.key, 0
        for member in group.members.values():
            if (member.key, gkey) not in self.unconfirmed:
                hub.send_line(member, data)
                n += 1
        hub.stats.notices += n

    def join_confirmed(self, key: str, gkey: str) -> None:
        """This node's own join event came back from Redis."""
        self.unconfirmed.discard((key, gkey))

    def group_removed(self, group: Group) -> None:
        """`group` was deleted: its remote members and pending joins are out of it."""
        gkey = group.key
        for key in group.remote:
            remote = self.users.get(key)
            if remote is not None:
                remote.groups.discard(gkey)
        group.remote.clear()
        if self.unconfirmed:
            self.unconfirmed.difference_update([p for p in self.unconfirmed if p[1] == gkey])

    # ------------------------------------------------------------ messages

    def public(self, gkey: str, data: bytes, count: int = 1) -> None:
        """`count` public lines of another node, to every local member of the group."""
        hub = self.hub
        group = hub.groups.get(gkey)
        if group is not None and group.members:
            hub.stats.deliveries_public += hub.fanout(group, data, None) * count

    def private(self, key: str, data: bytes) -> bool:
        hub = self.hub
        user = hub.users.get(key)
        if user is None:
            return False
        hub.send_line(user, data)
        hub.stats.deliveries_private += 1
        return True

    # ------------------------------------------------------------ groups and nodes

    def group(self, name: str, created_by: str, created_at: float,
              owner: str | None = None) -> None:
        hub = self.hub
        if P.name_key(name) not in hub.groups:
            group = hub.add_group(name, created_by)
            group.created_at = created_at
            group.owner = owner

    def group_deleted(self, gkey: str) -> None:
        """Another node's administrator deleted a group: as `Hub.remove_group` here."""
        group = self.hub.groups.get(gkey)
        if group is not None:
            self.hub.remove_group(group)

    def node_gone(self, node: str) -> list[str]:
        """A node died (or left): its users leave their groups, with notices here."""
        gone = [u for u in self.users.values() if u.node == node]
        for user in gone:
            self._forget(user, notify=True)
        return [u.name for u in gone]

    def node_state(self, node: str, users: list[NodeUser]) -> None:
        """Replace, silently, what this node knows of `node`'s users and memberships."""
        for user in [u for u in self.users.values() if u.node == node]:
            self._forget(user)
        for name, since, peer, gkeys in users:
            self.login(node, name, since, peer)
            for gkey in gkeys:
                self.join(P.name_key(name), gkey, node, notify=False)
