"""systemd's notify protocol (sd_notify(3)), without a dependency.

Under `Type=notify` systemd sets NOTIFY_SOCKET to an AF_UNIX datagram socket
(a path, or an abstract name written with a leading `@`); the service sends
newline-separated `KEY=value` assignments to it: READY=1 once it listens,
RELOADING=1 then READY=1 around a reload, STOPPING=1 when shutting down.
Without NOTIFY_SOCKET (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("chatsrv.sdnotify")


def notify(state: str) -> bool:
    """Send `state` to systemd; True if sent. Never raises."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as err:
        log.warning("could not notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), err)
        return False
    return True


def ready(status: str, main_pid: bool = False) -> bool:
    pid = f"\nMAINPID={os.getpid()}" if main_pid else ""
    return notify(f"READY=1\nSTATUS={status}{pid}")


def reloading() -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1\nSTATUS=shutting down")
