"""Group roles and moderation across two nodes on a real Redis (PROTOCOL.md v2:
"cluster-wide (every node enforces them within 1 s)"), and after the nodes restart.

Accounts are seeded in Redis before the nodes start. What one node changes
reaches the other through Redis: the tests wait for the condition (polling a
command), never for a fixed time.
"""

from __future__ import annotations

import signal
import threading
import time

from conftest import free_port
from rediskit import redis_server  # noqa: F401 - the fixture

from chatsrv import passwords
from chatsrv.backplane.store import RedisStore
from chatsrv.core.accounts import Account

TOKEN = "cluster-roles-admin-token"


def seed(redis, *names: str) -> None:
    store = RedisStore(redis.url)
    phc = passwords.hash_password("pw-" + "x" * 8)  # one hash: argon2 is slow on purpose
    for name in names:
        assert store.add_account(Account(name, phc, time.time()))
    store.close()


def node(make_server, redis, i: int, **options):
    return make_server(redis=redis.url, node_id=f"node{i}", rate_limit=0, node_ttl=2.0,
                       accounts="optional", **options)


def enter(connect, server, name: str):
    """Log in `name`: an account (seeded) unless it starts with `g` (a guest)."""
    client = connect(server)
    client.expect("enter a username:")
    client.send(name if name.startswith("g") else f"{name} pw-xxxxxxxx")
    client.expect(f"connected! welcome {name}", "you joined the group General")
    client.name = name
    return client


def until(client, line: str) -> list[str]:
    return client.read_until(lambda got: got == line)


def answer(client, command: str) -> str:
    """The reply to `command`: the next line that is no chat line or notice."""
    client.send(command)
    return client.read_until(lambda x: not x.startswith(("* ", "[")))[-1]


def eventually(client, command: str, want: str, wait: float = 10.0) -> None:
    """Send `command` until it answers `want` (the other node's change travels
    through Redis); `wait` bounds a broken server, it is no timing assertion."""
    deadline = time.monotonic() + wait
    while (got := answer(client, command)) != want:
        assert time.monotonic() < deadline, f"{command!r}: last reply {got!r}"
        time.sleep(0.02)


def posts(client, group: str) -> bool:
    """Whether a `public` to `group` is taken (it has no reply: a ping follows)."""
    client.send(f"public {group} can I talk?")
    return not [x for x in answer_lines(client, "ping") if x.startswith("error:")]


def answer_lines(client, command: str) -> list[str]:
    client.send(command)
    return client.read_until(lambda x: x == "ok: pong")


def redis_hash(redis, key: str) -> dict[str, str]:
    raw = redis.command("HGETALL", key).decode()
    parts = [p for p in raw.split("\r\n") if p and p[0] not in "*$"]
    return dict(zip(parts[::2], parts[1::2], strict=True))


def test_roles_hold_on_both_nodes_and_after_a_restart(redis_server, make_server,  # noqa: F811
                                                       connect):
    seed(redis_server, "teach", "ta", "stud", "kid")
    a, b = node(make_server, redis_server, 0), node(make_server, redis_server, 1)
    teach, stud = enter(connect, a, "teach"), enter(connect, a, "stud")
    ta, kid, geve = (enter(connect, b, n) for n in ("ta", "kid", "geve"))
    assert answer(teach, "create class") == "ok: created group class"
    assert answer(teach, "join class") == "ok: joined group class"
    # The owner is known on the other node; a member there joins while it is open.
    eventually(kid, "info class", "info: class owner teach moderators - members 1 join open "
                                  "post all history shared visibility public")
    assert answer(kid, "join class") == "ok: joined group class"

    # mod on A: the target on B hears it and has the powers there at once.
    teach.send("mod class ta")
    until(teach, "ok: ta is a moderator of class")
    until(ta, "* teach made you a moderator of class")
    # invite on B reaches its target on A.
    assert answer(ta, "invite class stud") == "ok: invited stud to class"
    until(stud, "* ta invited you to class")
    assert answer(ta, "invite class kid") == "ok: invited kid to class"
    until(kid, "* ta invited you to class")
    assert answer(teach, "set class join invite") == "ok: set join invite in class"
    eventually(geve, "info class", "info: class owner teach moderators ta members 2 join "
                                   "invite post all history shared visibility public")
    assert answer(geve, "join class") == "error: not allowed: class is invite-only"
    assert answer(stud, "join class") == "ok: joined group class"  # invited, on A
    assert answer(ta, "join class") == "ok: joined group class"  # a moderator, on B

    # mute on B silences on A (the notice comes once A applied it).
    assert answer(ta, "mute class stud 10") == "ok: muted stud in class for 10 minutes"
    until(stud, "* ta muted you in class for 10 minutes")
    assert answer(stud, "public class hello") == "error: not allowed: you are muted in class"

    # A ban on A removes the member on B (invited, so the ban decides): told
    # there, every other member once, the actor nothing.
    assert answer(teach, "ban class kid spamming") == "ok: banned kid from class"
    until(kid, "* teach removed you from class: spamming")
    until(ta, "* kid was removed from class by teach")
    until(stud, "* kid was removed from class by teach")
    assert answer(kid, "public class still here?") == "error: not a member of class"
    assert answer(kid, "join class") == "error: not allowed: you are banned from class"
    assert answer(teach, "info class") == ("info: class owner teach moderators ta members 3 "
                                           "join invite post all history shared visibility "
                                           "public")
    # Private on A: hidden on B from those who may not see it.
    assert answer(teach, "set class visibility private") == "ok: set visibility private in class"
    eventually(geve, "info class", "error: no such group: class")
    assert answer(geve, "groups") == "groups: General"
    assert answer(ta, "groups") == "groups: class General"
    for client in (teach, ta, stud):
        client.sync()  # no second removal notice came
    for client in (teach, ta, stud, kid, geve):
        client.no_line(0.05)

    # The banned user comes back on the other node: still banned there.
    kid.send("exit")
    until(kid, "ok: bye")
    kid = enter(connect, a, "kid")
    assert answer(kid, "join class") == "error: not allowed: you are banned from class"

    # A timed mute acknowledged just before the kill -9 of both nodes.
    assert answer(teach, "mute class ta 10") == "ok: muted ta in class for 10 minutes"
    # A timed mute whose end Redis holds: stud's ends in 3 s (as if set 597 min ago).
    redis_server.command("HSET", "chatsrv:roles:class", "mute:stud", repr(time.time() + 3))
    # Both nodes killed and restarted: everything is loaded back from Redis.
    for server in (a, b):
        server.stop(signal.SIGKILL)
    a, b = node(make_server, redis_server, 0), node(make_server, redis_server, 1)
    kid, stud, geve = enter(connect, b, "kid"), enter(connect, a, "stud"), enter(connect, b,
                                                                                   "geve")
    assert answer(kid, "join class") == "error: not allowed: you are banned from class"
    assert answer(geve, "join class") == "error: no such group: class"
    assert answer(stud, "join class") == "ok: joined group class"  # still invited
    # The mute ends on its own, without an `unmute`.
    deadline = time.monotonic() + 20
    while not posts(stud, "class"):
        assert time.monotonic() < deadline, "the timed mute did not end"
        time.sleep(0.05)
    ta = enter(connect, a, "ta")
    assert answer(ta, "info class") == ("info: class owner teach moderators ta members 1 "
                                        "join invite post all history shared visibility "
                                        "private")
    assert answer(ta, "join class") == "ok: joined group class"
    assert answer(ta, "public class hi") == "error: not allowed: you are muted in class"


def test_kick_on_another_node_races_the_victims_messages(redis_server, make_server,  # noqa: F811
                                                         connect):
    """The guarantee: a victim's messages reach every member before the removal
    notice, and none reaches the actor after its `ok: removed`."""
    seed(redis_server, "teach")
    a, b = node(make_server, redis_server, 0), node(make_server, redis_server, 1)
    teach, gdave = enter(connect, a, "teach"), enter(connect, a, "gdave")
    gbob, gcarol = enter(connect, b, "gbob"), enter(connect, b, "gcarol")
    assert answer(teach, "create room") == "ok: created group room"
    for client in (teach, gdave, gbob, gcarol):
        eventually(client, "join room", "ok: joined group room")
    for client in (teach, gdave, gbob, gcarol):
        client.sync()
    count = 1000
    flood = "".join(f"public room m{i:04d}\n" for i in range(count)).encode()
    sender = threading.Thread(target=gbob.send, args=(flood,))
    sender.start()
    # Under way: the kick races the rest.
    early = gcarol.read_until(lambda x: x == "[public group room from gbob] m0010")
    teach.send("kick room gbob flooding")
    before = until(teach, "ok: removed gbob from room")
    sender.join()
    after = answer_lines(teach, "ping")
    assert not [x for x in after if "from gbob" in x], after
    chat = [x for x in before if x.startswith("[public group room from gbob]")]
    n = len(chat)
    assert chat == [f"[public group room from gbob] m{i:04d}" for i in range(n)]
    # The victim: told once; its later messages refused on its node.
    lines = gbob.read_until(lambda x: x == "* teach removed you from room: flooding")
    lines += answer_lines(gbob, "ping")
    assert lines.count("error: not a member of room") == count - n
    # Every other member, on either node: the same messages, then the notice, once.
    for member, heard in ((gdave, []), (gcarol, early)):
        heard += member.read_until(lambda x: x == "* gbob was removed from room by teach")
        heard += answer_lines(member, "ping")
        assert [x for x in heard if "gbob" in x] == [
            *chat, "* gbob was removed from room by teach"]
    for member in (gdave, gcarol, teach):
        member.no_line(0.05)


def test_concurrent_changes_from_two_nodes_are_all_kept(redis_server, make_server,  # noqa: F811
                                                        connect):
    seed(redis_server, "teach", "ta")
    http = free_port()
    a = node(make_server, redis_server, 0, http_port=http, admin_token=TOKEN)
    b = node(make_server, redis_server, 1)
    teach, ta = enter(connect, a, "teach"), enter(connect, b, "ta")
    assert answer(teach, "create class") == "ok: created group class"
    teach.send("mod class ta")
    until(teach, "ok: ta is a moderator of class")
    until(ta, "* teach made you a moderator of class")
    # The same moment, one group: 30 bans from A, 30 mutes from B, pipelined.
    bans = "".join(f"ban class gu{i}\n" for i in range(30)).encode()
    mutes = "".join(f"mute class gv{i}\n" for i in range(30)).encode()
    threads = [threading.Thread(target=teach.send, args=(bans,)),
               threading.Thread(target=ta.send, args=(mutes,))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    until(teach, "ok: banned gu29 from class")
    until(ta, "ok: muted gv29 in class")
    fields = redis_hash(redis_server, "chatsrv:roles:class")
    assert {f"ban:gu{i}" for i in range(30)} | {f"mute:gv{i}" for i in range(30)} <= set(fields)
    assert fields["v"] == "61"  # one version per change: the mod, 30 bans, 30 mutes
    # Both nodes hold them all, and so does a node started later.
    c = node(make_server, redis_server, 2)
    for server, name in ((a, "gu3"), (b, "gu17"), (c, "gu29")):
        assert answer(enter(connect, server, name), "join class") == (
            "error: not allowed: you are banned from class")
    for server, name in ((a, "gv29"), (c, "gv0")):
        muted = enter(connect, server, name)
        assert answer(muted, "join class") == "ok: joined group class"
        assert answer(muted, "public class hi") == "error: not allowed: you are muted in class"

    # Deleting the group (admin API) drops its roles in Redis.
    import urllib.request
    request = urllib.request.Request(f"http://127.0.0.1:{http}/api/v1/groups/class",
                                     method="DELETE",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204
    assert redis_server.command("EXISTS", "chatsrv:roles:class") == b":0\r\n"


def test_redis_down_a_role_change_answers_an_error_and_changes_nothing(  # noqa: F811
        redis_server, make_server, connect):  # noqa: F811
    seed(redis_server, "teach")
    a = node(make_server, redis_server, 0)
    teach, gus = enter(connect, a, "teach"), enter(connect, a, "gus")
    assert answer(teach, "create class") == "ok: created group class"
    assert answer(gus, "join class") == "ok: joined group class"
    redis_server.stop()
    for line in ("set class join invite", "ban class gus", "mute class gus 5",
                 "invite class teach", "unban class gus", "mod class teach"):
        assert answer(teach, line) == "error: cluster unavailable"
    assert posts(gus, "class")  # not muted, not removed
    assert answer(teach, "info class") == ("info: class owner teach moderators - members 1 "
                                           "join open post all history shared visibility "
                                           "public")
