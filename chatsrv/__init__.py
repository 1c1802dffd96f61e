"""chatsrv: a line-protocol chat server on gevent (see docs/protocol.md)."""

__version__ = "0.1.0"
