"""The sans-I/O core: plain Python, no sockets, no gevent, no clock of its own.

Being built up piece by piece (see docs/architecture in the restructure issue);
so far the line framing (`framing`) and the typed events the hub records
for the backplane (`events`) live here.
"""
