"""A deliberately small chat server that can drop or reorder deliveries.

Only for proving that the Locust scenarios notice a server that loses or
misorders messages; it speaks just the part of PROTOCOL.md they use.

    python tests/loadtest/fake_server.py PORT [--drop-every N] [--swap-every N]
"""

from __future__ import annotations

import argparse
import itertools


class Hub:
    def __init__(self, drop_every: int, swap_every: int) -> None:
        self.users: dict[str, Session] = {}
        self.groups: dict[str, set[str]] = {"general": set()}
        self.names: dict[str, str] = {"general": "General"}
        self.drop_every, self.swap_every = drop_every, swap_every
        self.count = itertools.count(1)

    def deliver(self, to: Session, line: str) -> None:
        n = next(self.count)
        if self.drop_every and n % self.drop_every == 0:
            return  # the fault under test: a lost delivery
        if self.swap_every and n % self.swap_every == 0 and to.held is None:
            to.held = line  # the fault under test: sent after the next one
            return
        to.send(line)
        if to.held is not None:
            held, to.held = to.held, None
            to.send(held)


class Session:
    def __init__(self, hub: Hub, sock) -> None:
        self.hub, self.sock, self.name, self.held = hub, sock, "", None

    def send(self, line: str) -> None:
        try:
            self.sock.sendall((line + "\n").encode())
        except OSError:
            pass

    def run(self) -> None:
        stream = self.sock.makefile("r", encoding="utf-8", newline="\n")
        self.send("enter a username:")
        for raw in stream:
            if not self.name:
                self.login(raw.strip())
            elif not self.command(raw.rstrip("\r\n")):
                break
        self.logout()

    def login(self, name: str) -> None:
        if not name or name.casefold() in self.hub.users:
            self.send(f"error: username taken: {name}")
            self.send("enter a username:")
            return
        self.name = name
        self.hub.users[name.casefold()] = self
        self.hub.groups["general"].add(name.casefold())
        self.send(f"connected! welcome {name}")
        self.send("you joined the group General")

    def logout(self) -> None:
        if self.name:
            self.hub.users.pop(self.name.casefold(), None)
            for members in self.hub.groups.values():
                members.discard(self.name.casefold())
        self.sock.close()

    def command(self, line: str) -> bool:
        word, _, rest = line.strip().partition(" ")
        handler = getattr(self, "do_" + word.lower(), None)
        if handler is None:
            self.send(f"error: unknown command: {word}")
            return True
        return handler(rest.strip()) is not False

    def do_ping(self, _rest: str) -> None:
        self.send("ok: pong")

    def do_exit(self, _rest: str) -> bool:
        self.send("ok: bye")
        return False

    def do_groups(self, _rest: str) -> None:
        self.send("groups: " + " ".join(sorted(self.hub.names.values(), key=str.casefold)))

    def do_create(self, group: str) -> None:
        if group.casefold() in self.hub.groups:
            self.send(f"error: group already exists: {group}")
            return
        self.hub.groups[group.casefold()] = set()
        self.hub.names[group.casefold()] = group
        self.send(f"ok: created group {group}")

    def do_join(self, group: str) -> None:
        members = self.hub.groups.get(group.casefold())
        if members is None:
            self.send(f"error: no such group: {group}")
            return
        members.add(self.name.casefold())
        self.send(f"ok: joined group {self.hub.names[group.casefold()]}")

    def do_public(self, rest: str) -> None:
        group, _, text = rest.partition(" ")
        members = self.hub.groups.get(group.casefold(), set())
        line = f"[public group {self.hub.names.get(group.casefold())} from {self.name}] {text}"
        for member in sorted(members - {self.name.casefold()}):
            if member in self.hub.users:
                self.hub.deliver(self.hub.users[member], line)

    def do_private(self, rest: str) -> None:
        user, _, text = rest.partition(" ")
        to = self.hub.users.get(user.casefold())
        if to is None:
            self.send(f"error: no such user: {user}")
            return
        self.hub.deliver(to, f"[private from {self.name}] {text}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--drop-every", type=int, default=0)
    ap.add_argument("--swap-every", type=int, default=0)
    args = ap.parse_args()
    from gevent import monkey

    monkey.patch_all()
    from gevent.server import StreamServer

    hub = Hub(args.drop_every, args.swap_every)
    server = StreamServer(("127.0.0.1", args.port), lambda sock, _addr: Session(hub, sock).run())
    server.serve_forever()


if __name__ == "__main__":
    main()
