"""`--history-memory` over a real server: `history` answers in full from memory and
the store, in order, at the seam, and after a restart."""

from __future__ import annotations

import re
import signal
import time

from test_persistence import history

BUDGET_MIB = 0.05  # 52,428 bytes: about 125 entries of 200 characters (414 bytes each)
MEMORY = re.compile(r"^chatsrv_history_memory_bytes (\S+)$", re.M)


def memory_bytes(server) -> float:
    return float(MEMORY.search(server.api.metrics()).group(1))


def test_history_beyond_the_memory_budget_comes_from_the_store(make_http_server, login, tmp_path):
    options = dict(rate_limit=0, history_memory=BUDGET_MIB, data_dir=tmp_path / "data")
    server = make_http_server(**options)
    alice = login(server, "alice")
    bob = login(server, "bob")
    sent = [f"{i:04d} " + "x" * 195 for i in range(300)]
    for text in sent:
        alice.send(f"public General {text}")
    alice.sync()
    # Memory holds about 125 of them once the writer has committed and trimmed.
    deadline = time.monotonic() + 10
    while memory_bytes(server) > BUDGET_MIB * 2**20:
        assert time.monotonic() < deadline, "history memory never came back under budget"
        time.sleep(0.05)
    bob.sync()  # past the deliveries
    assert [text for _, _, text in history(bob, "General")] == sent[-200:]
    # Messages not written yet (the newest) and the store's part meet without a gap.
    for i in range(300, 305):
        sent.append(f"{i:04d} fresh")
        alice.send(f"public General {sent[-1]}")
    alice.sync()
    bob.sync()
    assert [text for _, _, text in history(bob, "General")] == sent[-200:]
    assert [text for _, _, text in history(bob, "General", 3)] == sent[-3:]
    assert server.stop(signal.SIGTERM) == 0

    again = make_http_server(**options)
    carol = login(again, "carol")
    assert memory_bytes(again) <= BUDGET_MIB * 2**20  # start-up loads only what fits
    assert [text for _, _, text in history(carol, "General")] == sent[-200:]


def test_history_memory_option_is_validated(make_server, tmp_path):
    from test_persistence import serve_fails

    code, output = serve_fails(tmp_path, "--history-memory", "0")
    assert code == 2 and "--history-memory must be more than 0" in output
    code, output = serve_fails(tmp_path, "--history-memory", "lots")
    assert code == 2
