"""What core and JetStream subscriptions share: a trio ReceiveChannel of messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import trio

from .._message import Message
from ._limits import _CAPACITY

if TYPE_CHECKING:
    from nats.aio.subscription import Subscription as NatsSub

    from ._connection import _Connection


_OPEN: Final = 0

_CLOSED: Final = 1

_ENDED: Final = 2


class NatsSubscription(trio.abc.ReceiveChannel[Message]):
    """One subscription: a trio ReceiveChannel of received messages.

    Closing it (leaving the ``subscribe`` block) unsubscribes; under
    JetStream every message delivered here and not acked is nacked.
    """

    system = "nats"  # (as an Acker: telemetry's messaging.system)

    def __init__(
        self, conn: _Connection, pattern: str, group: str | None, buffer: int = _CAPACITY
    ) -> None:
        from ._bridge import Inbox

        self._conn = conn
        self._bridge = conn.bridge
        self.pattern = pattern
        self.group = group
        self._inbox: Inbox[Any] = Inbox(conn.bridge.loop, buffer)
        self._state = _OPEN
        self._sub: NatsSub | None = None
        self._nursery: trio.Nursery | None = None
        self._scope = trio.CancelScope()
        self._stopped = False
        metrics = conn.metrics
        self._received = metrics.received
        self._acked = metrics.acked
        self._nacked = metrics.nacked
        self._redelivered = metrics.redelivered

    def _convert(self, raw: Any) -> Message | None:
        """The message for ``raw``, or None to drop it (never handed out)."""
        raise NotImplementedError

    def _on_reconnect(self) -> None:
        """The connection came back (called by the reconnect watcher)."""

    def receive_nowait(self) -> Message:
        if self._state != _OPEN:
            raise trio.EndOfChannel if self._state == _ENDED else trio.ClosedResourceError
        while True:
            msg = self._convert(self._inbox.get_nowait())
            if msg is not None:
                return msg

    async def receive(self) -> Message:
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            if self._state != _OPEN:
                if self._state == _ENDED:
                    raise trio.EndOfChannel
                raise trio.ClosedResourceError("this subscription was closed")
            try:
                raw = self._inbox.get_nowait()
            except trio.WouldBlock:
                await self._inbox.wait()
                waited = True
                continue
            msg = self._convert(raw)
            if msg is None:  # (dropped: see _JetStreamSubscription._convert)
                continue
            if not waited:  # (a wait was a schedule point already: no second round)
                await trio.lowlevel.cancel_shielded_checkpoint()
            return msg

    async def aclose(self) -> None:
        if self._state == _OPEN:
            self._state = _CLOSED
            self._inbox.close()
        await trio.lowlevel.checkpoint()

    def _end(self) -> None:
        """The provider is closing: receivers see EndOfChannel."""
        if self._state == _OPEN:
            self._state = _ENDED
            self._inbox.close()

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError
