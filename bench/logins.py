"""The connect and idle workloads: many logins, 50 in progress at a time."""

import time

from bench.clients import Pool, login_steps
from bench.procstat import rss_bytes
from bench.report import percentile
from bench.server import Target

IDLE_BASELINE_WAIT_S = 1.0  # let the fresh server finish starting before the baseline RSS
IDLE_SETTLE_S = 3.0  # same settle time as the Go loadgen before reading RSS


def _logins(pool: Pool, prefix: str, n: int, conc: int) -> tuple[list, dict]:
    conns = pool.login_many((login_steps(f"{prefix}{i}") for i in range(n)), conc)
    failed = [c for c in conns if c.error]
    out = {"conns": n, "concurrency": conc, "logged_in": n - len(failed)}
    out["login_failures"] = len(failed)
    if failed:
        out["error"] = f"{len(failed)} logins failed, first: {failed[0].error}"
    return [c for c in conns if not c.error], out


def run_connect(target: Target, n: int, conc: int, prefix: str) -> dict:
    pool = Pool(target.addr)
    try:
        meter = target.meter()
        t0 = time.monotonic()
        ok, out = _logins(pool, prefix + "c", n, conc)
        out.update(meter.stop())
    finally:
        pool.close()
    # Measured to the "you joined the group General" line, like the Go loadgen's login.
    lat = sorted(c.done_at - c.started for c in ok)
    if ok:
        out["logins_per_s"] = round(len(ok) / (max(c.done_at for c in ok) - t0))
    out["login_p50_ms"] = percentile(lat, 0.50, 1e3)
    out["login_p99_ms"] = percentile(lat, 0.99, 1e3)
    out["login_max_ms"] = percentile(lat, 1.0, 1e3)
    return out


def run_idle(target: Target, n: int, conc: int, prefix: str, ws: bool = False) -> dict:
    """RSS per idle logged-in connection; `ws`: over the web port's WebSocket door."""
    if ws and target.web_addr is None:
        return {"error": "idle-ws needs the server's web port (--web-addr with --addr)"}
    time.sleep(IDLE_BASELINE_WAIT_S)
    before = rss_bytes(target.pid) if target.pid else None
    pool = Pool(target.web_addr if ws else target.addr, ws=ws)  # type: ignore[arg-type]
    try:
        meter = target.meter()
        t0 = time.monotonic()
        ok, out = _logins(pool, prefix + "i", n, conc)
        out["connect_s"] = round(time.monotonic() - t0, 1)
        pool.drain(IDLE_SETTLE_S)
        after = rss_bytes(target.pid) if target.pid else None
        out.update(meter.stop())
        if pool.dropped:
            out["error"] = f"{len(pool.dropped)} idle connections closed by the server"
    finally:
        pool.close()
    if before is not None and after is not None:
        out["rss_before_kb"], out["rss_after_kb"] = before // 1024, after // 1024
        if ok:
            out["bytes_per_conn"] = (after - before) // len(ok)
    return out
