"""Per-address limits (chatsrv/core/limits.py) with a fake clock: no sockets, no sleeping."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatsrv.config import Config, ConfigError
from chatsrv.core.limits import (
    LOG_EVERY_S,
    PER_IP,
    RATE,
    AddressLimits,
    client_address,
    parse_networks,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(max_per_ip=0, rate=0.0, exempt="", clock=None) -> AddressLimits:
    return AddressLimits(max_per_ip=max_per_ip, rate=rate, exempt=parse_networks(exempt),
                         clock=clock or Clock())


def test_per_address_cap_refuses_then_admits_after_a_release():
    lim = limits(max_per_ip=3)
    assert [lim.admit("10.0.0.1") for _ in range(4)] == [None, None, None, PER_IP]
    assert lim.admit("10.0.0.2") is None  # another address has its own count
    lim.release("10.0.0.1")
    assert lim.admit("10.0.0.1") is None
    assert lim.admit("10.0.0.1") == PER_IP


def test_rate_allows_a_burst_of_twice_the_rate_then_refills():
    clock = Clock()
    lim = limits(rate=5, clock=clock)
    results = [lim.admit("10.0.0.1") for _ in range(12)]
    assert results == [None] * 10 + [RATE] * 2
    clock.now += 0.1  # half a token
    assert lim.admit("10.0.0.1") == RATE
    clock.now += 0.1
    assert lim.admit("10.0.0.1") is None
    assert lim.admit("10.0.0.1") == RATE


def test_refused_attempts_do_not_spend_tokens():
    clock = Clock()
    lim = limits(rate=1, clock=clock)
    assert [lim.admit("a") for _ in range(3)] == [None, None, RATE]
    for _ in range(100):
        assert lim.admit("a") == RATE
    clock.now += 1.0
    assert lim.admit("a") is None


def test_a_rate_below_one_half_still_admits_one_connection():
    clock = Clock()
    lim = limits(rate=0.1, clock=clock)
    assert [lim.admit("a") for _ in range(2)] == [None, RATE]
    clock.now += 10
    assert lim.admit("a") is None


def test_entry_is_dropped_when_closed_and_the_bucket_is_full():
    clock = Clock()
    lim = limits(max_per_ip=10, rate=5, clock=clock)
    lim.admit("a")
    lim.admit("a")
    lim.release("a")
    assert "a" in lim.entries
    lim.release("a")
    assert "a" in lim.entries  # bucket still refilling: forgetting it would reset the rate
    clock.now += 0.39
    lim.purge()
    assert "a" in lim.entries
    clock.now += 2.0
    lim.purge()
    assert lim.entries == {}


def test_without_a_rate_an_entry_goes_with_its_last_connection():
    lim = limits(max_per_ip=2)
    lim.admit("a")
    lim.release("a")
    assert lim.entries == {}


def test_reused_address_is_not_dropped_by_its_stale_idle_record():
    clock = Clock()
    lim = limits(max_per_ip=5, rate=5, clock=clock)
    lim.admit("a")
    lim.release("a")
    lim.admit("a")  # open again before the sweep
    clock.now += 10
    lim.purge()
    assert lim.entries["a"].count == 1
    lim.release("a")
    clock.now += 10
    lim.purge()
    assert lim.entries == {}


def test_memory_is_bounded_under_a_flood_from_many_addresses():
    """100k addresses connecting once each, a few thousand open at a time: the
    entries never exceed the open ones plus those closed in the last 2 s."""
    clock = Clock()
    lim = limits(max_per_ip=100, rate=20, clock=clock)
    open_keys: list[str] = []
    peak = 0
    for i in range(100_000):
        clock.now += 0.0001  # 10k connections/s
        key = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        assert lim.admit(key) is None
        open_keys.append(key)
        if len(open_keys) > 2000:
            lim.release(open_keys.pop(0))
        peak = max(peak, len(lim.entries))
    assert peak <= 2000 + 2.0 / 0.0001 + 1  # open + those closed in the last 2 s
    for key in open_keys:
        lim.release(key)
    clock.now += 3
    lim.purge()
    assert lim.entries == {} and not lim._idle


def test_exempt_networks_are_never_counted():
    lim = limits(max_per_ip=1, rate=1, exempt="127.0.0.0/8,::1,192.0.2.0/24")
    for host in ("127.0.0.1", "127.9.9.9", "::1", "192.0.2.77", "::ffff:127.0.0.1",
                 "::ffff:192.0.2.1"):
        assert lim.key(host) is None, host
    assert lim.key("10.0.0.1") == "10.0.0.1"
    assert lim.key("::2") == "::/64"


def test_ipv4_mapped_ipv6_counts_as_the_ipv4_address():
    lim = limits(max_per_ip=1)
    assert lim.key("::ffff:10.1.2.3") == "10.1.2.3"
    assert lim.admit(lim.key("10.1.2.3")) is None
    assert lim.admit(lim.key("::ffff:10.1.2.3")) == PER_IP


def test_ipv6_addresses_of_one_slash_64_share_a_count():
    lim = limits(max_per_ip=2)
    a = lim.key("2001:db8:1:2::1")
    b = lim.key("2001:db8:1:2:ffff::9")
    c = lim.key("2001:db8:1:3::1")
    assert a == b == "2001:db8:1:2::/64" and c == "2001:db8:1:3::/64"
    assert lim.key("fe80::1%eth0") == "fe80::/64"
    assert [lim.admit(a), lim.admit(b), lim.admit(a), lim.admit(c)] == [None, None, PER_IP, None]


def test_limits_off_count_nothing():
    lim = limits(max_per_ip=0, rate=0)
    assert lim.key("10.0.0.1") is None


def test_exempt_parsing():
    assert parse_networks("") == ()
    assert parse_networks(" , ") == ()
    nets = parse_networks("127.0.0.0/8, ::1,10.1.2.3,2001:db8::/32,::ffff:172.16.0.0/108")
    assert [str(n) for n in nets] == ["127.0.0.0/8", "::1/128", "10.1.2.3/32", "2001:db8::/32",
                                      "172.16.0.0/12"]
    with pytest.raises(ValueError, match="'10.0.0.0/33'"):
        parse_networks("10.0.0.0/33")
    with pytest.raises(ValueError, match="'localhost'"):
        parse_networks("127.0.0.1,localhost")


def test_config_validates_the_limits():
    assert Config().max_per_ip == 100 and Config().connect_rate == 20
    assert Config().max_unauth == 1000 and Config().exempt == "127.0.0.0/8,::1"
    assert Config(exempt="").exempt_networks == ()
    for bad, words in [({"exempt": "nope"}, "--exempt"), ({"max_per_ip": -1}, "--max-per-ip"),
                       ({"connect_rate": -1}, "--connect-rate"),
                       ({"max_unauth": -1}, "--max-unauth")]:
        with pytest.raises(ConfigError, match=words):
            Config(**bad)


def test_refusals_are_logged_once_a_minute_per_address(caplog):
    clock = Clock()
    lim = limits(max_per_ip=1, clock=clock)
    caplog.set_level(logging.WARNING, "chatsrv.limits")
    lim.admit("a")
    lim.admit("b")
    for _ in range(50):
        lim.admit("a")
        lim.admit("b")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "refusing connections from a: 1 connections open (--max-per-ip 1)" in lines[0]
    clock.now += LOG_EVERY_S
    lim.purge()  # the minute is over: what was held back is summed up
    assert "refused 49 more connections from a (per_ip) in the last minute" in \
        caplog.records[2].getMessage()
    assert len(caplog.records) == 4
    lim.admit("a")
    assert len(caplog.records) == 5 and "refusing connections from a" in \
        caplog.records[4].getMessage()
    assert lim._logged.keys() == {"a"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["admit", "release", "tick"]),
                          st.sampled_from(["a", "b", "c"]),
                          st.floats(0, 1.5)), max_size=60))
def test_counts_match_a_model_and_nothing_leaks(ops):
    clock = Clock()
    lim = limits(max_per_ip=3, rate=2, clock=clock)
    held = {"a": 0, "b": 0, "c": 0}
    for op, key, dt in ops:
        clock.now += dt
        if op == "admit":
            if lim.admit(key) is None:
                held[key] += 1
            else:
                assert held[key] >= 1 or lim.rate  # never refused with none open and rate off
        elif op == "release" and held[key]:
            lim.release(key)
            held[key] -= 1
        else:
            lim.purge()
        assert held[key] <= 3
        for k, n in held.items():
            assert (lim.entries[k].count if k in lim.entries else 0) == n
    for key, n in held.items():
        for _ in range(n):
            lim.release(key)
    clock.now += 5
    lim.purge()
    assert lim.entries == {}


# ---------------------------------------------------------------- X-Forwarded-For

def test_client_address_takes_the_rightmost_untrusted_forwarded_address():
    proxies = parse_networks("127.0.0.1/32,10.0.0.0/8,fd00::/8")
    # The peer is the proxy: the last address it appended is the client.
    assert client_address("127.0.0.1", "203.0.113.7", proxies) == "203.0.113.7"
    # What the client wrote itself (left of it) is not believed.
    assert client_address("127.0.0.1", "1.1.1.1, 203.0.113.7", proxies) == "203.0.113.7"
    # Trusted hops are skipped, right to left (a proxy behind a proxy).
    assert client_address("127.0.0.1", "1.1.1.1, 203.0.113.7, 10.1.2.3", proxies) \
        == "203.0.113.7"
    # Every entry trusted: the leftmost is as far as the chain goes.
    assert client_address("127.0.0.1", "10.0.0.5, 10.0.0.6", proxies) == "10.0.0.5"
    # A garbage entry stops the walk at the last trusted hop.
    assert client_address("127.0.0.1", "203.0.113.7, unknown", proxies) == "127.0.0.1"
    assert client_address("127.0.0.1", "203.0.113.7, unknown, 10.0.0.9", proxies) \
        == "10.0.0.9"
    # Ports, brackets, IPv6 and IPv4-mapped addresses.
    assert client_address("127.0.0.1", "203.0.113.7:5555", proxies) == "203.0.113.7"
    assert client_address("127.0.0.1", "[2001:db8::1]:443", proxies) == "2001:db8::1"
    assert client_address("fd00::1", "2001:db8::2", proxies) == "2001:db8::2"
    assert client_address("::ffff:127.0.0.1", "::ffff:203.0.113.9", proxies) == "203.0.113.9"


def test_client_address_ignores_the_header_of_an_untrusted_peer():
    proxies = parse_networks("10.0.0.0/8")
    assert client_address("198.51.100.1", "203.0.113.7", proxies) == "198.51.100.1"
    assert client_address("10.0.0.1", "", proxies) == "10.0.0.1"  # no header
    assert client_address("10.0.0.1", "203.0.113.7", ()) == "10.0.0.1"  # none trusted


def test_trusted_proxies_is_checked_like_exempt():
    assert Config(trusted_proxies="127.0.0.1/32, ::1").trusted_networks == \
        parse_networks("127.0.0.1/32,::1")
    assert Config().trusted_networks == ()
    with pytest.raises(ConfigError, match="--trusted-proxies: not an address"):
        Config(trusted_proxies="10.0.0.0/8,proxy.example")
