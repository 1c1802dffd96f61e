"""The network layer: the only code that waits on sockets, through gevent's
public API (`loop.io` watchers, `Hub.wait`, `gevent.spawn`, timers). Being
built up piece by piece (issue "core / net / adapters"); so far the acceptor.
"""
