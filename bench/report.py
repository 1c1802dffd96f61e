"""Percentiles and the one-line summaries printed per workload."""

import math


def percentile(sorted_values: list, p: float, scale: float = 1.0) -> float | None:
    """Nearest-rank percentile of an ascending list, times `scale`; None if empty."""
    if not sorted_values:
        return None
    i = min(max(math.ceil(p * len(sorted_values)) - 1, 0), len(sorted_values) - 1)
    return round(sorted_values[i] * scale, 3)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}"
    return str(v)


def _cpu(r: dict) -> str:
    g = r.get
    return (
        f"cpu srv {_fmt(g('server_cpu_pct'))}% drv {_fmt(g('driver_cpu_pct'))}%"
        f" other {_fmt(g('other_cpu_pct'))}%"
    )


def _fanout(r: dict) -> str:
    g = r.get
    if "deliveries_per_s" not in r:
        return f"R={g('receivers')} S={g('senders')} W={g('window')}"
    lost = f"lost {_fmt(g('lost'))}"
    for key in ("gaps", "reordered", "other_lines"):
        if g(key):
            lost += f" {key} {_fmt(g(key))}"
    return (
        f"R={g('receivers')} S={g('senders')} W={g('window')} {g('duration_s'):g}s"
        f" | sent {_fmt(g('sent'))} ({_fmt(g('sent_per_s'))}/s)"
        f" | {_fmt(g('deliveries_per_s'))} deliveries/s | {lost}"
        f" | lat p50 {_fmt(g('lat_p50_ms'))} p99 {_fmt(g('lat_p99_ms'))}"
        f" max {_fmt(g('lat_max_ms'))} ms | {_cpu(r)} | dropped {_fmt(g('conns_dropped'))}"
    )


def _connect(r: dict) -> str:
    g = r.get
    return (
        f"N={g('conns')} conc={g('concurrency')} | ok {_fmt(g('logged_in'))}"
        f" fail {_fmt(g('login_failures'))} | {_fmt(g('logins_per_s'))} logins/s"
        f" | login p50 {_fmt(g('login_p50_ms'))} p99 {_fmt(g('login_p99_ms'))}"
        f" max {_fmt(g('login_max_ms'))} ms | {_cpu(r)}"
    )


def _idle(r: dict) -> str:
    g = r.get
    return (
        f"C={g('conns')} | logged in {_fmt(g('logged_in'))} fail {_fmt(g('login_failures'))}"
        f" in {_fmt(g('connect_s'))}s | rss {_fmt(g('rss_before_kb'))} kB ->"
        f" {_fmt(g('rss_after_kb'))} kB | {_fmt(g('bytes_per_conn'))} bytes/conn | {_cpu(r)}"
    )


def _logins(r: dict) -> str:
    parts = []
    for phase in ("password", "token"):
        p = r.get(phase) or {}
        g = p.get
        parts.append(
            f"{phase} {_fmt(g('ok'))}/{_fmt(g('logins'))} {_fmt(g('per_s'))}/s"
            f" p50 {_fmt(g('p50_ms'))} p99 {_fmt(g('p99_ms'))} ms"
            f" worst ping {_fmt(g('probe_worst_ms'))} ms"
        )
    return f"conc={r.get('concurrency')} | " + " | ".join(parts) + f" | {_cpu(r)}"


_BODIES = {"fanout": _fanout, "connect": _connect, "idle": _idle, "idle-ws": _idle, "logins": _logins}


def summary(r: dict) -> str:
    """One line: workload name, its figures, then any error."""
    line = f"{r['workload']:<11} {_BODIES[r['mode']](r)}"
    if r.get("error"):
        line += f" | ERROR {r['error']}"
    if r.get("server_problem"):
        line += f" | SERVER {r['server_problem']}"
    return line
