"""A TCP link proxy on loopback, to cut, stall, delay and half-partition a link.

``open_link(target_port)`` listens on a free loopback port and forwards every
connection made to it to ``target_port``; what passes can be cut, held back
in one direction or both, or delayed, and restored, while the two ends keep
running. Point a client (or a nats-server route) at ``link.url`` instead of
the server's own address, and the link is yours to break::

    async with open_nats_server() as server, open_link(server.port) as link:
        async with open_nats_provider(NatsConfig(url=link.url)) as provider:
            link.cut()        # the provider sees its connection drop
            ...
            link.restore()    # and reconnects through the link

Everything runs in a nursery that the ``async with`` block owns.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal, TypeAlias

import trio

from .._errors import ConfigError
from .._util import single_error

__all__ = ["Direction", "Link", "open_link"]

#: Which way bytes travel through a link: ``"upstream"`` from the connecting
#: side (a client, a soliciting route) to the target, ``"downstream"`` back.
Direction: TypeAlias = Literal["both", "upstream", "downstream"]

_CHUNK = 65536
#: Chunks read ahead in one direction while it is held or delayed; past that the
#: link stops reading and TCP flow control holds the sender, as a full network would.
_READ_AHEAD = 64


def _ways(direction: Direction) -> tuple[str, ...]:
    if direction == "both":
        return ("upstream", "downstream")
    if direction in ("upstream", "downstream"):
        return (direction,)
    raise ConfigError(f"direction must be 'both', 'upstream' or 'downstream', not {direction!r}")


class _Way:
    """The state of one direction of a link: held or not, and its delay."""

    def __init__(self) -> None:
        self.held = False
        self.delay = 0.0
        self._changed = trio.Event()

    def set(self, *, held: bool | None = None, delay: float | None = None) -> None:
        if held is not None:
            self.held = held
        if delay is not None:
            self.delay = delay
        self._changed.set()
        self._changed = trio.Event()

    async def wait_open(self) -> None:
        while self.held:
            await self._changed.wait()

    async def wait_until(self, when: float) -> None:
        """Sleep until ``when`` (trio time), or until the delay changes."""
        if when > trio.current_time():
            with trio.move_on_at(when):
                await self._changed.wait()


class Link:
    """A TCP proxy between a listening loopback port and a target; see :func:`open_link`.

    Faults act on the connections that pass now and on those made later,
    until :meth:`restore`:

    - :meth:`cut` (both ways): every connection is closed and the link stops
      listening, so new ones are refused: a partition both ends notice at once.
    - ``cut("upstream")`` / ``cut("downstream")``: a one-way partition. Bytes
      in that direction are held, not lost (TCP would retransmit them); they
      arrive after :meth:`restore`, unless an end gave up on the connection
      first (a ping timeout). The other direction flows.
    - :meth:`stall` (both ways, or one): bytes are held, connections stay
      open: a silent partition, or a stalled link.
    - :meth:`delay`: every chunk arrives ``seconds`` after it was read, in order.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = "127.0.0.1"
        self.port = 0
        #: Connections accepted and forwarded to the target since the link opened.
        self.connections = 0
        self._refusing = False
        self._ways = {"upstream": _Way(), "downstream": _Way()}
        self._live: set[trio.CancelScope] = set()
        self._nursery: trio.Nursery | None = None
        self._serving: trio.CancelScope | None = None
        self._listening: trio.socket.SocketType | None = None

    def _listen(self) -> None:
        """Listen on ``port`` (a free one when 0) and serve, at once: a client
        that connects right after this returns waits in the backlog."""
        assert self._nursery is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        listening = trio.socket.from_stdlib_socket(sock)
        listener = trio.SocketListener(listening)
        scope = trio.CancelScope()
        self._serving, self._listening = scope, listening

        async def serve() -> None:
            # A cut closes the socket under the accept: ClosedResourceError.
            with scope, contextlib.suppress(trio.ClosedResourceError):
                await trio.serve_listeners(self._handle, [listener])

        self._nursery.start_soon(serve)

    def _stop_listening(self) -> None:
        """Close the listening socket now (a restore may listen again at once)."""
        if self._serving is not None:
            self._serving.cancel()
            self._serving = None
        if self._listening is not None:
            self._listening.close()
            self._listening = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``: where to point a NATS client or route."""
        return f"nats://{self.host}:{self.port}"

    @property
    def live(self) -> int:
        """How many connections pass through the link now."""
        return len(self._live)

    @property
    def state(self) -> str:
        """What is done to the link now, for logs: ``"ok"``, ``"cut"``, ``"held up"``, ..."""
        if self._refusing:
            return "cut"
        parts = []
        for name, way in self._ways.items():
            if way.held:
                parts.append(f"held {name}")
            if way.delay:
                parts.append(f"{name} delayed {way.delay:g}s")
        return ", ".join(parts) or "ok"

    def cut(self, direction: Direction = "both") -> None:
        """Partition the link: both ways (connections closed, new ones refused)
        or one way (bytes that way held until :meth:`restore`)."""
        ways = _ways(direction)
        if len(ways) == 2:
            self._refusing = True
            self._stop_listening()
            for scope in list(self._live):
                scope.cancel()
        else:
            self._ways[ways[0]].set(held=True)

    def stall(self, direction: Direction = "both") -> None:
        """Hold the bytes going ``direction``; connections stay open."""
        for way in _ways(direction):
            self._ways[way].set(held=True)

    def delay(self, seconds: float, direction: Direction = "both") -> None:
        """Deliver every chunk ``seconds`` after it was read (0 ends the delay)."""
        if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0):
            raise ConfigError(f"seconds must be a finite number >= 0, not {seconds!r}")
        for way in _ways(direction):
            self._ways[way].set(delay=float(seconds))

    def restore(self) -> None:
        """End every fault: connections are accepted, held bytes flow, no delay.

        After a cut the link listens again on the same port (``OSError`` if
        something else took it meanwhile)."""
        if self._refusing and self._nursery is not None:
            self._listen()
        self._refusing = False
        for way in self._ways.values():
            way.set(held=False, delay=0.0)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self._refusing:
                return
            try:
                target = await trio.open_tcp_stream(self.target_host, self.target_port)
            except OSError:
                return
            async with target:
                if self._refusing:  # cut while connecting
                    return
                with trio.CancelScope() as scope:
                    self._live.add(scope)
                    self.connections += 1
                    try:
                        async with trio.open_nursery() as nursery:
                            for source, sink, way in (
                                (client, target, self._ways["upstream"]),
                                (target, client, self._ways["downstream"]),
                            ):
                                nursery.start_soon(
                                    self._pipe, source, sink, way, nursery.cancel_scope
                                )
                    finally:
                        self._live.discard(scope)

    @staticmethod
    async def _pipe(
        source: trio.SocketStream, sink: trio.SocketStream, way: _Way, link: trio.CancelScope
    ) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes]](_READ_AHEAD)

        async def read() -> None:
            async with send:
                try:
                    while data := await source.receive_some(_CHUNK):
                        await send.send((trio.current_time(), data))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

        async def write() -> None:
            async with receive:
                try:
                    async for read_at, data in receive:
                        await way.wait_open()
                        while read_at + way.delay > trio.current_time():
                            await way.wait_until(read_at + way.delay)
                        await way.wait_open()
                        await sink.send_all(data)
                    await sink.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(write)
        # One end closed or broke: a proxied TCP connection then ends as a whole.
        link.cancel()

    def __repr__(self) -> str:
        return f"<Link 127.0.0.1:{self.port} -> {self.target_host}:{self.target_port} {self.state}>"


@asynccontextmanager
async def open_link(
    target_port: int, *, target_host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Link]:
    """Run a :class:`Link` to ``target_host:target_port`` for the block.

    Args:
        target_port: where connections are forwarded (a server's port).
        target_host: the target's address; loopback by default.
        port: the loopback port to listen on; a free one when 0.

    Yields the link once it accepts connections. Leaving the block closes
    every connection through it and stops listening.
    """
    link = Link(target_port, target_host)
    link.port = port
    with single_error():  # an error of the block comes out as itself, not in a group
        async with trio.open_nursery() as nursery:
            link._nursery = nursery
            link._listen()
            try:
                yield link
            finally:
                link._nursery = None
                nursery.cancel_scope.cancel()
