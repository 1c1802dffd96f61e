"""A TCP proxy in front of a real chatsrv that loses or reorders delivery lines.

Only for proving that the Locust scenarios notice deliveries lost or misordered
on their way to a user: the chat server behind it is the real one, the proxy
damages nothing but `[public group ...` / `[private from ...` lines.

    python tests/loadtest/faulty_proxy.py UPSTREAM_PORT [--drop-every N] [--swap-every N]

Prints `listening on 127.0.0.1:PORT` once it accepts connections.
--drop-every N   discards every Nth delivery line (counted over all connections)
--swap-every N   holds every Nth one back and sends it after the next delivery
                 line of the same connection (replies pass in order meanwhile)
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import itertools  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

DELIVERY = (b"[public group ", b"[private from ")


class Faults:
    def __init__(self, drop_every: int, swap_every: int) -> None:
        self.drop_every, self.swap_every = drop_every, swap_every
        self.count = itertools.count(1)

    def fate(self) -> str:
        n = next(self.count)
        if self.drop_every and n % self.drop_every == 0:
            return "drop"
        if self.swap_every and n % self.swap_every == 0:
            return "hold"
        return "pass"


def pump_up(client: socket.socket, server: socket.socket) -> None:
    """Client to server, untouched."""
    try:
        while data := client.recv(65536):
            server.sendall(data)
        server.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def pump_down(server: socket.socket, client: socket.socket, faults: Faults) -> None:
    """Server to client, line by line, with the faults applied to deliveries."""
    buf, held = b"", None
    while data := server.recv(65536):
        *lines, buf = (buf + data).split(b"\n")
        out = []
        for line in lines:
            if line.startswith(DELIVERY):
                fate = faults.fate()
                if fate == "drop":
                    continue
                if fate == "hold" and held is None:
                    held = line
                    continue
                out.append(line)
                if held is not None:
                    out.append(held)
                    held = None
            else:
                out.append(line)
        if out:
            client.sendall(b"\n".join(out) + b"\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("upstream_port", type=int)
    ap.add_argument("--drop-every", type=int, default=0)
    ap.add_argument("--swap-every", type=int, default=0)
    args = ap.parse_args()
    faults = Faults(args.drop_every, args.swap_every)

    def handle(client: socket.socket, _addr) -> None:
        server = socket.create_connection(("127.0.0.1", args.upstream_port))
        up = gevent.spawn(pump_up, client, server)
        try:
            pump_down(server, client, faults)
        except OSError:
            pass
        finally:
            up.kill()
            server.close()
            client.close()

    proxy = StreamServer(("127.0.0.1", 0), handle)
    proxy.start()
    print(f"listening on 127.0.0.1:{proxy.server_port}", flush=True)
    sys.stdout.flush()
    proxy.serve_forever()


if __name__ == "__main__":
    main()
