"""CPU time and resident memory of processes, read from /proc."""

import os
import time
import urllib.request

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of all threads of `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def rss_bytes(pid: int) -> int | None:
    """VmRSS of `pid` in bytes, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def busy_seconds(cpus: set[int] | None) -> float:
    """Non-idle time of the given CPUs (all CPUs if None), from /proc/stat."""
    names = {b"cpu"} if cpus is None else {b"cpu%d" % c for c in cpus}
    total = 0
    with open("/proc/stat", "rb") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] in names:
                # user nice system idle iowait irq softirq steal: all but idle and iowait.
                total += sum(int(x) for x in fields[1:4]) + sum(int(x) for x in fields[6:9])
    return total / _TICKS_PER_S


class CpuMeter:
    """CPU use over one interval, in % of one core: the server, this driver, and
    everything else on the CPUs they run on (a noisy neighbour shows up there)."""

    def __init__(self, server_pid: int | None, cpus: set[int] | None = None):
        self.server_pid = server_pid
        self.cpus = cpus
        self.t0 = time.monotonic()
        self.server0 = cpu_seconds(server_pid) if server_pid else None
        self.self0 = cpu_seconds(os.getpid())
        self.busy0 = busy_seconds(cpus)

    def stop(self) -> dict:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        server = _pct(self.server0, self.server_pid, elapsed)
        me = _pct(self.self0, os.getpid(), elapsed)
        busy = 100 * (busy_seconds(self.cpus) - self.busy0) / elapsed
        other = busy - (server or 0) - (me or 0)
        return {"server_cpu_pct": server, "driver_cpu_pct": me, "other_cpu_pct": round(other, 1)}


def _pct(start: float | None, pid: int | None, elapsed: float) -> float | None:
    if start is None or not pid:
        return None
    end = cpu_seconds(pid)
    return None if end is None else round(100 * (end - start) / elapsed, 1)


def metric_value(http_url: str, name: str, **labels) -> float:
    """One sample from a server's /metrics, by exact name and labels (in exposition order)."""
    with urllib.request.urlopen(http_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                   if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    raise KeyError(want)
