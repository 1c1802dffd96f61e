"""The sans-I/O core: plain Python, no sockets, no gevent, no threads, no clock
of its own (mypy strict; import-linter keeps I/O libraries and the layers above
out, see pyproject.toml).

- `protocol`: names, argument parsing, every reply's wording;
- `errors`: every exception (the reply family and the adapters' signals);
- `model`: `User`, `RemoteUser`, `Group`, history `Entry`, the `Conn` Protocol;
- `commands`: the command table (word -> spec + handler function);
- `hub`: membership, fan-out, login/logout, `Hub.handle`, history in memory;
- `commits`: groups awaiting the store, the commands and reads waiting on it,
  and the typed results the store writer reports back;
- `mirror`: other nodes' users and memberships (cluster mode);
- `framing`: bytes to lines; `events`: the typed events for the backplane;
- `limits`, `ratelimit`, `createrate`, `histogram`: the pure parts of the
  limits and metrics.

docs/architecture.md shows how a `public` travels through them.
"""
