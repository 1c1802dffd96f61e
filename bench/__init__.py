"""Benchmark suite for chatsrv: `python -m bench` (see docs/benchmarks.md).

Each workload starts a fresh server process (or uses `--addr`), drives it from
one epoll loop in this process and prints one summary line. Figures use the
same definitions as the Go load generator in the shared cross-check folder, so
the two can be compared side by side.
"""
