"""Fanout: S senders publish into one group that R receivers are members of.

Definitions follow the Go load generator so figures compare: a sender may
send message q while (q - 1) * R - acked < W * R, where `acked` counts its
messages seen by all receivers (so W is the mean number in flight per
receiver); deliveries/s is every delivery counted, including the drain after
sending stops, divided by the time from the start of sending to the last
delivery.

Receivers never parse lines one by one in Python. Every delivery line has
the same length and carries a check character at a fixed column: message q
of sender s has character q % m of an alphabet of m characters that belongs to
s alone. One strided slice of a read gives that column; deleting the other
senders' alphabets (bytes.translate) leaves each sender's characters in
arrival order, which must equal the next ones of its cycle. That confirms in
C, per read, that every line is a delivery, and counts, orders and ties each
one to its sender. Only when it fails is every line of that read parsed, which
tells gaps (lost deliveries), reordering and stray lines (late notices) apart.
Latency comes from one randomly chosen line per SAMPLE_EVERY deliveries.

Over WebSocket (`ws`, the web port) the same holds frame by frame: every
delivery is one text frame of the same length (a 2-byte header, the line
without its LF), so the check column is read with the frame's length as the
stride, 2 bytes further on. Senders send one masked frame per line, as a
browser does. Only a read that fails the check is deframed in Python.
"""

import copy
import os
import random
import select
import time
from dataclasses import dataclass

from bench.clients import (
    MAX_TAIL,
    RECV_SIZE,
    Conn,
    Pool,
    create_step,
    join_step,
    login_steps,
    ws_deframe,
    ws_frame,
    ws_pong,
)
from bench.report import percentile
from bench.server import BenchError, Target

SAMPLE_EVERY = 64
TS_DIGITS = 19  # time.time_ns() has 19 digits until the year 2286
SETTLE_S = 0.5  # let join notices drain before sending, as the Go loadgen does
NO_PROGRESS_S = 2.0
RCVBUF = 1 << 20
CHECK_CHARS = bytes(range(33, 127))  # printable ASCII, space excluded
MAX_SENDERS = len(CHECK_CHARS)  # each sender needs a character of its own


@dataclass
class FanoutSpec:
    receivers: int
    senders: int
    window: int
    duration: float
    payload: int = 64
    conc: int = 50
    drain: float = 10.0
    ws: bool = False  # over the web port's WebSocket door instead of the chat port


class Layout:
    """The delivery line of one run, "[public group <g> from <name>] <payload>".

    Payload: "t=<ns> s=<ss> q=<9 digits> k=<check> " padded with x to `payload`
    bytes; sender names have equal length, so every line has the same length.
    """

    def __init__(self, prefix: str, group: str, senders: int, payload: int):
        self.names = [f"{prefix}s{s:02d}" for s in range(senders)]
        m = len(CHECK_CHARS) // senders
        self.alphabets = [CHECK_CHARS[s * m : (s + 1) * m] for s in range(senders)]
        self.others = [CHECK_CHARS[: s * m] + CHECK_CHARS[(s + 1) * m :] for s in range(senders)]
        head = len(b"[public group %b from %b] " % (group.encode(), self.names[0].encode()))
        self.ts_off = head + len(b"t=")
        self.check_off = head + len(b"t=%b s=00 q=%b k=" % (b"0" * TS_DIGITS, b"0" * 9))
        self.line_len = head + payload + 1
        self.payload_len = payload
        # Each alphabet repeated so that any run of lines fitting in one read is a slice.
        reps = (RECV_SIZE + MAX_TAIL) // self.line_len // m + 2
        self.expected = [a * reps for a in self.alphabets]
        self.markers = [b"from %b] t=" % n.encode() for n in self.names]

    def framed(self) -> "Layout":
        """The same layout for WebSocket frames: each line is a 2-byte header and
        the line without its LF, one byte longer, its columns 2 bytes later."""
        if self.line_len - 1 >= 126:
            raise ValueError("a delivery must fit a 2-byte frame header")
        lay = copy.copy(self)
        lay.line_len += 1
        lay.ts_off += 2
        lay.check_off += 2
        return lay

    def payload(self, s: int, t: int, q: int) -> bytes:
        alphabet = self.alphabets[s]
        core = b"t=%d s=%02d q=%09d k=%c " % (t, s, q, alphabet[q % len(alphabet)])
        return core + b"x" * (self.payload_len - len(core))


class Shared:
    """State that receivers update and senders read (one thread, no locks)."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.acked = [0] * len(layout.names)  # deliveries per sender, summed over receivers
        self.samples: list[int] = []  # latencies in microseconds
        self.last_ns = 0
        self.slow_reads = 0  # reads that had to be parsed line by line


class Receiver:
    __slots__ = ("conn", "tail", "last_q", "delivered", "gaps", "reordered", "other", "acc")

    def __init__(self, conn: Conn, senders: int):
        self.conn = conn
        self.tail = conn.buf  # an unfinished line left over from logging in
        self.last_q = [0] * senders
        self.delivered = 0
        self.gaps = 0  # deliveries skipped in the sequence of a sender
        self.reordered = 0
        self.other = 0  # lines that are not deliveries (late notices)
        self.acc = 0  # deliveries since the last latency sample

    def read(self, buf: bytearray, view: memoryview, what: str) -> int | str:
        """One recv after the unfinished `tail` put back at the start of `buf`: the
        bytes now in `buf` (0: nothing to read yet) or an error."""
        k = len(self.tail)
        if k > MAX_TAIL:
            return f"{what} too long from server"
        if k:
            buf[:k] = self.tail
        try:
            n = self.conn.sock.recv_into(view[k:], RECV_SIZE)
        except BlockingIOError:
            return 0
        except OSError as e:
            return f"recv: {e}"
        return k + n if n else "EOF"

    def on_readable(self, buf: bytearray, view: memoryview, now_ns: int, sh: Shared) -> str | None:
        """Read once and account for the complete lines; returns an error or None."""
        total = self.read(buf, view, "line")
        if not total:
            return None
        if isinstance(total, str):
            return total
        end = buf.rfind(b"\n", 0, total) + 1
        self.tail = bytes(buf[end:total])
        if end:
            self._account(buf, end, now_ns, sh)
        return None

    def _account(self, buf: bytearray, end: int, now_ns: int, sh: Shared) -> None:
        counts = self._fast_count(buf, end, sh.layout)
        if counts is None:
            sh.slow_reads += 1
            got = self._slow_count(buf, end, sh)
        else:
            for s, n in enumerate(counts):
                self.last_q[s] += n
                sh.acked[s] += n
            got = sum(counts)
            self.acc += got
            if self.acc >= SAMPLE_EVERY:
                self._sample(buf, end, now_ns, sh.layout, sh.samples)
        if got:
            self.delivered += got
            sh.last_ns = now_ns

    def _fast_count(self, buf: bytearray, end: int, lay: Layout) -> list[int] | None:
        """Per sender, the deliveries in buf[:end] if they are exactly its next ones."""
        if end % lay.line_len:
            return None
        column = bytes(buf[lay.check_off : end : lay.line_len])
        counts = []
        for s, others in enumerate(lay.others):
            mine = column.translate(None, others) if others else column
            first = (self.last_q[s] + 1) % len(lay.alphabets[s])
            if mine != lay.expected[s][first : first + len(mine)]:
                return None
            counts.append(len(mine))
        return counts if sum(counts) == len(column) else None

    def _slow_count(self, buf: bytearray, end: int, sh: Shared) -> int:
        """Parse every line: tells gaps, reordering and stray lines apart (rare)."""
        got = 0
        for line in bytes(buf[:end]).split(b"\n")[:-1]:
            s, q = _sender_and_seq(line, sh.layout)
            if s is None:
                self.other += 1
                continue
            got += 1
            adv = q - self.last_q[s]
            if adv <= 0:
                self.reordered += 1
                continue
            self.gaps += adv - 1
            self.last_q[s] = q
            sh.acked[s] += adv  # gaps count as acked so that a loss does not stall the window
        return got

    def _sample(self, buf, end: int, now_ns: int, lay: Layout, samples: list[int]) -> None:
        """Latency of random lines of this read, one per SAMPLE_EVERY deliveries."""
        n, self.acc = divmod(self.acc, SAMPLE_EVERY)
        for _ in range(n):
            p = random.randrange(end // lay.line_len) * lay.line_len + lay.ts_off
            samples.append((now_ns - int(buf[p : p + TS_DIGITS])) // 1000)


class WsReceiver(Receiver):
    """A receiver on the WebSocket door: frames instead of lines (see the top)."""

    __slots__ = ("flay",)

    def __init__(self, conn: Conn, senders: int, flay: Layout):
        super().__init__(conn, senders)
        self.tail = conn.raw  # an incomplete frame left over from logging in
        self.flay = flay

    def on_readable(self, buf: bytearray, view: memoryview, now_ns: int, sh: Shared) -> str | None:
        total = self.read(buf, view, "frame")
        if not total:
            return None
        if isinstance(total, str):
            return total
        lay = self.flay
        end = total - total % lay.line_len
        counts = self._fast_count(buf, end, lay) if end else None
        if counts is not None:
            self.tail = bytes(buf[end:total])
            for s, c in enumerate(counts):
                self.last_q[s] += c
                sh.acked[s] += c
            got = sum(counts)
            self.acc += got
            if self.acc >= SAMPLE_EVERY:
                self._sample(buf, end, now_ns, lay, sh.samples)
        else:  # another frame (a notice, a ping) or a gap: deframe and parse
            lines, self.tail, pings = ws_deframe(bytes(buf[:total]))
            for ping in pings:
                ws_pong(self.conn.sock, ping)
            if not lines:
                return None
            sh.slow_reads += 1
            got = self._slow_count(bytearray(lines), len(lines), sh)
        if got:
            self.delivered += got
            sh.last_ns = now_ns
        return None


def _sender_and_seq(line: bytes, lay: Layout) -> tuple[int | None, int]:
    for s, marker in enumerate(lay.markers):
        p = line.find(marker)
        if p >= 0:
            fields = line[p + len(marker) :].split(b" ", 3)
            if len(fields) >= 3 and fields[2].startswith(b"q=") and fields[2][2:].isdigit():
                return s, int(fields[2][2:])
    return None, 0


class Sender:
    __slots__ = ("conn", "idx", "head", "layout", "sent", "pending", "want_out", "error", "ws")

    def __init__(self, conn: Conn, idx: int, group: str, layout: Layout, ws: bool = False):
        self.conn = conn
        self.idx = idx
        self.head = b"public %b " % group.encode()
        self.layout = layout
        self.sent = 0
        self.pending = b""  # bytes the socket did not take yet
        self.want_out = False  # registered for EPOLLOUT because of `pending`
        self.error: str | None = None
        self.ws = ws  # one masked frame per line (one random key per batch)

    def send_batch(self, count: int, ep: select.epoll) -> None:
        t = time.time_ns()
        payload, s, head = self.layout.payload, self.idx, self.head
        first = self.sent + 1
        if self.ws:
            key = os.urandom(4)
            self.pending = b"".join(
                ws_frame(head + payload(s, t, q), key) for q in range(first, first + count)
            )
        else:
            self.pending = b"".join(
                head + payload(s, t, q) + b"\n" for q in range(first, first + count)
            )
        self.sent += count
        self.flush(ep)

    def flush(self, ep: select.epoll) -> None:
        try:
            n = self.conn.sock.send(self.pending)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self.error, self.pending = f"send: {e}", b""
            return
        self.pending = self.pending[n:]
        if self.want_out != bool(self.pending):  # a syscall only when it changes
            self.want_out = bool(self.pending)
            ep.modify(self.conn.fd, select.EPOLLIN | (select.EPOLLOUT if self.pending else 0))

    def on_event(self, ev: int, pool: Pool) -> None:
        if ev & select.EPOLLOUT and self.pending:
            self.flush(pool.ep)
        if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            self._read(pool)

    def _read(self, pool: Pool) -> None:
        # A sender gets nothing back for `public`; anything here is an error or a notice.
        try:
            data = self.conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            data, self.error = b"", f"recv: {e}"
        i = data.find(b"error: ")
        if i >= 0 and self.error is None:
            self.error = data[i:].split(b"\n", 1)[0].decode(errors="replace")
        if not data:
            self.error = self.error or "EOF"
            pool.forget(self.conn)


class Fanout:
    def __init__(self, target: Target, spec: FanoutSpec, prefix: str, group: str):
        self.spec = spec
        self.target = target
        self.prefix = prefix
        self.group = group
        if spec.ws and target.web_addr is None:
            raise BenchError("the WebSocket workloads need the server's web port")
        addr = target.web_addr if spec.ws else target.addr
        self.pool = Pool(addr, rcvbuf=RCVBUF, ws=spec.ws)
        self.layout = Layout(prefix, group, spec.senders, spec.payload)
        self.sh = Shared(self.layout)
        self.out: dict = {
            "receivers": spec.receivers,
            "senders": spec.senders,
            "window": spec.window,
            "duration_s": spec.duration,
            "payload_bytes": spec.payload,
            "transport": "ws" if spec.ws else "tcp",
        }

    def run(self) -> dict:
        try:
            if self._setup():
                self._measure()
        finally:
            self.pool.close()
        return self.out

    def _setup(self) -> bool:
        t0 = time.monotonic()
        spec, p, g, names = self.spec, self.prefix, self.group, self.layout.names
        first = self.pool.login_many([login_steps(f"{p}r0") + [create_step(g), join_step(g)]], 1)
        rest = self.pool.login_many(
            (login_steps(f"{p}r{i}") + [join_step(g)] for i in range(1, spec.receivers)), spec.conc
        )
        senders = self.pool.login_many(
            (login_steps(name) + [join_step(g)] for name in names), spec.conc
        )
        self.pool.drain(SETTLE_S)
        self.out["setup_s"] = round(time.monotonic() - t0, 2)
        failed = [c for c in first + rest + senders if c.error]
        self.out["login_failures"] = len(failed)
        if failed:
            self.out["error"] = f"{len(failed)} logins failed, first: {failed[0].error}"
        alive = [c for c in first + rest if c.error is None]
        if spec.ws:
            flay = self.layout.framed()
            self.receivers = {c.fd: WsReceiver(c, spec.senders, flay) for c in alive}
        else:
            self.receivers = {c.fd: Receiver(c, spec.senders) for c in alive}
        self.all_receivers = list(self.receivers.values())  # kept when one drops
        self.senders = {c.fd: Sender(c, i, g, self.layout, spec.ws)
                        for i, c in enumerate(senders)}
        # Like the Go loadgen: go on without failed receivers, not without a sender.
        return bool(alive) and not any(c.error for c in senders)

    def _measure(self) -> None:
        meter = self.target.meter()
        self.r_active = len(self.receivers)
        t_start = time.monotonic()
        start_ns = time.time_ns()
        self._loop(t_start + self.spec.duration, sending=True)
        send_s = time.monotonic() - t_start
        self.expected = sum(s.sent for s in self.senders.values()) * self.r_active
        self._loop(time.monotonic() + self.spec.drain, sending=False)
        self.out.update(meter.stop())
        self._results(start_ns, send_s)

    def _loop(self, until: float, sending: bool) -> None:
        """The hot loop: one read per ready receiver per round, then refill windows."""
        poll = self.pool.ep.poll
        receivers, sh = self.receivers, self.sh
        buf, view = self.pool.scratch, self.pool.view
        progress, progress_at = -1, time.monotonic()
        while (now := time.monotonic()) < until and receivers:
            if sending:
                self._refill()
            else:
                acked = sum(sh.acked)
                if acked >= self.expected or now - progress_at > NO_PROGRESS_S:
                    return
                if acked != progress:
                    progress, progress_at = acked, now
            events = poll(min(until - now, 0.02), 1024)
            now_ns = time.time_ns()
            for fd, ev in events:
                r = receivers.get(fd)
                if r is None:
                    self._sender_event(fd, ev)
                elif (err := r.on_readable(buf, view, now_ns, sh)) is not None:
                    self._drop(r, err)

    def _refill(self) -> None:
        r, wr, ep = self.r_active, self.spec.window * self.r_active, self.pool.ep
        for s in self.senders.values():
            if s.pending or s.error:
                continue
            budget = wr + self.sh.acked[s.idx] - s.sent * r
            if budget > 0:
                s.send_batch((budget + r - 1) // r, ep)

    def _sender_event(self, fd: int, ev: int) -> None:
        s = self.senders.get(fd)
        if s is not None and s.conn.fd in self.pool.conns:
            s.on_event(ev, self.pool)

    def _drop(self, r: Receiver, err: str) -> None:
        r.conn.error = err
        del self.receivers[r.conn.fd]
        self.pool.forget(r.conn)
        self.pool.dropped.append(r.conn)

    def _results(self, start_ns: int, send_s: float) -> None:
        senders = list(self.senders.values())
        recvs = self.all_receivers
        delivered = sum(r.delivered for r in recvs)
        sent = sum(s.sent for s in senders)
        span = max((self.sh.last_ns - start_ns) / 1e9, send_s)
        samples = sorted(self.sh.samples)
        # Deliveries never seen at the end: a receiver's last sequence short of what was sent.
        tail = sum(s.sent - r.last_q[s.idx] for r in recvs for s in senders)
        self.out.update(
            sent=sent,
            sent_per_s=round(sent / send_s),
            expected=self.expected,
            delivered=delivered,
            lost=self.expected - delivered,
            gaps=sum(r.gaps for r in recvs) + tail,
            reordered=sum(r.reordered for r in recvs),
            other_lines=sum(r.other for r in recvs),
            deliveries_per_s=round(delivered / span),
            span_s=round(span, 3),
            lat_samples=len(samples),
            lat_p50_ms=percentile(samples, 0.50, 1e-3),
            lat_p99_ms=percentile(samples, 0.99, 1e-3),
            lat_max_ms=percentile(samples, 1.0, 1e-3),
            conns_dropped=len(self.pool.dropped),
            slow_reads=self.sh.slow_reads,
        )
        errors = [c.error for c in self.pool.dropped] + [s.error for s in senders if s.error]
        if errors:
            why = f"{len(errors)} connection errors, first: {errors[0]}"
            self.out["error"] = "; ".join(filter(None, [self.out.get("error"), why]))


def run_fanout(target: Target, spec: FanoutSpec, prefix: str, group: str) -> dict:
    return Fanout(target, spec, prefix, group).run()
