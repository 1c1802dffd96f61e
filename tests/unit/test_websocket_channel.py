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


def test_frames_split_anywhere_mixed_with_control_frames_and_fragments():
    """The fast path (whole masked text frames) and wsproto (the rest) keep one
    ordered stream, however the bytes are cut."""
    channel, client, sent, dead = pair(max_line=4096)
    stream = b"".join([
        client.send(Message(data="one")),
        client.send(Ping(payload=b"p")),
        client.send(Message(data="tw", message_finished=False)),
        client.send(Message(data="o", message_finished=True)),
        client.send(Message(data="x" * 300)),  # a 2-byte extended length
        client.send(Message(data="hé\nthree")),
    ])
    for step in (1, 2, 3, 7, len(stream)):
        channel, client2, sent, dead = pair(max_line=4096)
        got = b""
        for i in range(0, len(stream), step):
            lines, over = channel.decrypt(stream[i:i + step])
            assert not over
            got += lines
        assert got == b"one\ntwo\n" + b"x" * 300 + "\nhé\nthree\n".encode()
        assert b"".join(sent).startswith(b"\x8a\x01p")  # the pong, in order


def test_bad_frames_still_close_with_their_codes():
    from wsproto.events import CloseConnection

    def close_code(data: bytes, max_line: int = 100) -> int:
        channel, client, sent, dead = pair(max_line)
        over = False
        for i in range(0, len(data), 5):  # in pieces: an incomplete frame too
            over = channel.decrypt(data[i:i + 5])[1]
            if over:
                break
        assert over and channel.end_reason == "error"
        events = received(client, sent)
        return next(e.code for e in events if isinstance(e, CloseConnection))

    _, client, _, _ = pair()
    masked = client.send(Message(data="ok"))
    key = masked[2:6]
    bad = bytes(b ^ key[i % 4] for i, b in enumerate(b"\xff\xfe"))
    assert close_code(bytes((0x81, 0x82)) + key + bad) == 1007  # invalid UTF-8
    assert close_code(client.send(Message(data="y" * 500))) == 1009  # over --max-line
    assert close_code(client.send(Message(data=b"\x00"))) == 1003  # binary
    assert close_code(bytes((0x81, 0x02)) + b"hi") == 1002  # not masked


def test_the_opening_handshake_is_checked_and_answered_as_rfc_6455_says():
    from chatsrv.net.websocket import Head, accept_key, handshake_problem
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC's example

    def head(**changes: str) -> Head:
        headers = {"Host": "x", "Upgrade": "websocket", "Connection": "keep-alive, Upgrade",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                   "Sec-WebSocket-Version": "13", **changes}
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if v)
        return Head(f"GET /ws HTTP/1.1\r\n{lines}\r\n".encode())

    assert handshake_problem(head()) is None
    assert handshake_problem(head(Upgrade="h2c")) == "no Upgrade: websocket"
    assert handshake_problem(head(Connection="close")) == "no Connection: upgrade"
    assert handshake_problem(head(**{"Sec-WebSocket-Version": "8"})) is not None
    assert handshake_problem(head(**{"Sec-WebSocket-Key": "short"})) == "bad Sec-WebSocket-Key"
    assert handshake_problem(head(**{"Sec-WebSocket-Key": ""})) == "bad Sec-WebSocket-Key"
