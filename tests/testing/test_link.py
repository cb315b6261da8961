"""The link proxy: forwards, cuts, cuts one way, stalls, delays and restores.

Each test runs a small TCP server on loopback (no NATS) behind a link. A
check that nothing arrives while a fault holds waits a bounded time: a
non-event has no other witness.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from piko_trio_events.testing import Link, open_link

QUIET = 0.3  # seconds in which a held byte must not arrive


class Peer:
    """The server end: records what it receives, sends what it is told to."""

    def __init__(self) -> None:
        self.received = b""
        self.streams: list[trio.SocketStream] = []
        self._changed = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        self.streams.append(stream)
        self._changed.set()
        self._changed = trio.Event()
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    self.received += data
                    self._changed.set()
                    self._changed = trio.Event()
            except trio.BrokenResourceError:
                pass

    async def wait(self, check: object) -> None:
        assert callable(check)
        while not check():
            await self._changed.wait()


@asynccontextmanager
async def linked() -> AsyncIterator[tuple[Link, Peer]]:
    peer = Peer()
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, peer.handle, 0, host="127.0.0.1"))
        async with open_link(listener.socket.getsockname()[1]) as link:
            yield link, peer
        nursery.cancel_scope.cancel()


async def receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def nothing_arrives(stream: trio.SocketStream) -> bool:
    with trio.move_on_after(QUIET):
        await stream.receive_some(1)
        return False
    return True


async def test_a_link_forwards_both_ways_and_counts_connections() -> None:
    with trio.fail_after(10):
        async with linked() as (link, peer):
            assert link.url == f"nats://127.0.0.1:{link.port}"
            assert link.state == "ok"
            client = await trio.open_tcp_stream("127.0.0.1", link.port)
            async with client:
                await client.send_all(b"ping")
                await peer.wait(lambda: peer.received == b"ping")
                await peer.streams[0].send_all(b"pong")
                assert await receive_exactly(client, 4) == b"pong"
                assert (link.connections, link.live) == (1, 1)


async def test_cut_closes_connections_and_refuses_new_ones_until_restore() -> None:
    with trio.fail_after(10):
        async with linked() as (link, peer):
            client = await trio.open_tcp_stream("127.0.0.1", link.port)
            async with client:
                await client.send_all(b"a")
                await peer.wait(lambda: peer.received == b"a")
                link.cut()
                assert link.state == "cut"
                assert await client.receive_some(10) == b""  # closed by the link
            with pytest.raises(OSError, match=r"refused|connect"):  # nothing listens
                await trio.open_tcp_stream("127.0.0.1", link.port)
            assert link.connections == 1
            link.restore()
            again = await trio.open_tcp_stream("127.0.0.1", link.port)
            async with again:
                await again.send_all(b"b")
                await peer.wait(lambda: peer.received == b"ab")
                assert link.connections == 2


@pytest.mark.parametrize("way", ["upstream", "downstream"])
async def test_a_one_way_cut_holds_that_way_only_and_loses_nothing(way: str) -> None:
    with trio.fail_after(10):
        async with linked() as (link, peer):
            client = await trio.open_tcp_stream("127.0.0.1", link.port)
            async with client:
                await client.send_all(b"0")
                await peer.wait(lambda: peer.received == b"0")
                server = peer.streams[0]
                link.cut(way)  # type: ignore[arg-type]
                assert link.state == f"held {way}"
                await client.send_all(b"1")
                await server.send_all(b"2")
                if way == "upstream":
                    # The other way flows; this way is held.
                    assert await receive_exactly(client, 1) == b"2"
                    with trio.move_on_after(QUIET):
                        await peer.wait(lambda: peer.received != b"0")
                    assert peer.received == b"0"
                else:
                    await peer.wait(lambda: peer.received == b"01")
                    assert await nothing_arrives(client)
                assert link.live == 1  # the connection stays open
                link.restore()
                if way == "upstream":
                    await peer.wait(lambda: peer.received == b"01")
                else:
                    assert await receive_exactly(client, 1) == b"2"


async def test_stall_holds_both_ways_with_the_connection_open() -> None:
    with trio.fail_after(10):
        async with linked() as (link, peer):
            client = await trio.open_tcp_stream("127.0.0.1", link.port)
            async with client:
                await client.send_all(b"0")
                await peer.wait(lambda: peer.received == b"0")
                link.stall()
                await client.send_all(b"1")
                await peer.streams[0].send_all(b"2")
                assert await nothing_arrives(client)
                assert peer.received == b"0"
                assert link.live == 1
                link.restore()
                assert await receive_exactly(client, 1) == b"2"
                await peer.wait(lambda: peer.received == b"01")


async def test_delay_adds_latency_in_order_and_zero_ends_it() -> None:
    delay = 0.25
    with trio.fail_after(10):
        async with linked() as (link, peer):
            client = await trio.open_tcp_stream("127.0.0.1", link.port)
            async with client:
                link.delay(delay, "upstream")
                assert link.state == f"upstream delayed {delay:g}s"
                started = trio.current_time()
                for i in range(5):
                    await client.send_all(b"%d" % i)
                await peer.wait(lambda: len(peer.received) == 5)
                elapsed = trio.current_time() - started
                assert peer.received == b"01234"
                assert delay <= elapsed < delay + 1.0
                link.delay(0)
                started = trio.current_time()
                await client.send_all(b"5")
                await peer.wait(lambda: len(peer.received) == 6)
                assert trio.current_time() - started < delay


async def test_bad_arguments_raise_value_error() -> None:
    link = Link(1)
    with pytest.raises(ValueError, match="direction"):
        link.cut("sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seconds"):
        link.delay(-1)
    with pytest.raises(ValueError, match="seconds"):
        link.delay(float("nan"))
    await trio.lowlevel.checkpoint()


async def test_an_end_that_breaks_mid_stream_ends_the_connection_not_the_link() -> None:
    with trio.fail_after(10):
        async with linked() as (link, peer):
            for _ in range(3):
                client = await trio.open_tcp_stream("127.0.0.1", link.port)
                await client.send_all(b"x")
                await peer.wait(lambda: peer.streams and peer.received)
                # The peer keeps sending while the client vanishes (RST): the
                # link's write to the client breaks.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await client.aclose()
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    for _ in range(200):
                        await peer.streams[-1].send_all(b"y" * 65536)
                while True:  # polls the link's connection count
                    if not link.live:
                        break
                    await trio.sleep(0.01)
                peer.received = b""
            assert link.connections == 3


async def test_an_error_in_the_block_comes_out_as_itself() -> None:
    async def fail_inside() -> None:
        async with open_link(1) as link:
            client = await trio.open_tcp_stream("127.0.0.1", link.port)  # refused beyond
            async with client:
                raise KeyError("mine")

    with trio.fail_after(10), pytest.raises(KeyError, match="mine"):
        await fail_inside()


async def test_a_cut_restored_at_once_listens_again_on_the_same_port() -> None:
    with trio.fail_after(10):
        async with linked() as (link, peer):
            port = link.port
            for i in range(20):
                link.cut()
                link.restore()
                client = await trio.open_tcp_stream("127.0.0.1", port)
                async with client:
                    mark = b"%d," % i
                    await client.send_all(mark)
                    await peer.wait(lambda mark=mark: peer.received.endswith(mark))
            assert link.port == port
