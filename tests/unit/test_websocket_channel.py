"""WsChannel without sockets: pings after silence, the dead-peer cut-off, and
frames in both directions (wsproto on the other side, in memory)."""

from __future__ import annotations

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Ping, Pong, Request, TextMessage

from chatsrv.net.websocket import PING_DEAD_S, PING_IDLE_S, WsChannel


def pair(max_line: int = 100):
    server = WSConnection(ConnectionType.SERVER)
    client = WSConnection(ConnectionType.CLIENT)
    server.receive_data(client.send(Request(host="x", target="/ws")))
    list(server.events())
    client.receive_data(server.send(AcceptConnection()))
    list(client.events())
    channel = WsChannel(server, None, max_line)
    sent: list[bytes] = []
    dead: list[bool] = []
    channel.send = lambda data: sent.append(channel.encrypt(data))
    channel.on_dead = lambda: dead.append(True)
    return channel, client, sent, dead


def received(client: WSConnection, sent: list[bytes]) -> list:
    client.receive_data(b"".join(sent))
    sent.clear()
    return list(client.events())


def test_silence_gets_one_ping_then_the_cut_off():
    channel, client, sent, dead = pair()
    channel._check()
    assert sent == [] and not dead  # not silent yet
    channel.last_rx -= PING_IDLE_S
    channel._check()
    assert [type(e) for e in received(client, sent)] == [Ping]
    channel._check()
    assert sent == [] and not dead  # one ping, then wait
    channel.last_rx -= PING_DEAD_S
    channel.pinged -= PING_DEAD_S
    channel._check()
    assert dead == [True]


def test_any_frame_answers_the_ping():
    channel, client, sent, dead = pair()
    channel.last_rx -= PING_IDLE_S
    channel._check()
    received(client, sent)
    lines, over = channel.decrypt(client.send(Pong(payload=b"chatsrv")))
    assert (lines, over) == (b"", False) and channel.pinged is None
    channel.last_rx -= PING_DEAD_S
    channel._check()  # silent again: a new ping, not the cut-off
    assert not dead and [type(e) for e in received(client, sent)] == [Ping]


def test_lines_in_both_directions():
    channel, client, sent, dead = pair()
    lines, over = channel.decrypt(client.send(Message(data="ping\npublic General hé")))
    assert (lines, over) == ("ping\npublic General hé\n".encode(), False)
    events = received(client, [channel.encrypt(b"ok: pong\nsecond\n")])
    assert [e.data for e in events if isinstance(e, TextMessage)] == ["ok: pong", "second"]
