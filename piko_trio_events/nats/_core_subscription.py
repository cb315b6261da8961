"""Core NATS subscriptions: plain or queue group, at-most-once, nack re-queues
in process.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import trio

from .._message import UUID_HEADER, Delivery, Message
from . import _internals as internals
from ._limits import _CORE_BUFFER, _PENDING_BYTES, _PENDING_MSGS
from ._names import queue_group
from ._subscription import _OPEN, NatsSubscription
from ._wire import _metadata_of, _raw_metadata

if TYPE_CHECKING:
    from nats.aio.subscription import Subscription as NatsSub

    from ._bridge import Job
    from ._connection import _Connection

logger = logging.getLogger("piko_trio_events.nats")


class _CoreSubscription(NatsSubscription):
    """Core NATS: at-most-once; a nack re-queues inside this process.

    The SUB is queued when ``subscribe()`` is called, ahead of any publish
    made after it, so the subscription sees every message published after
    the call (as the router expects).

    On the fast path nats-py's read loop hands each message straight to
    :meth:`_take` (no subscription task in between). The buffer then holds
    ``_CORE_BUFFER`` messages plus what nats-py's pending limits would have
    held (``_PENDING_MSGS`` / ``_PENDING_BYTES``); past that a message is
    dropped and counted, as nats-py counts a slow consumer.
    """

    def __init__(self, conn: _Connection, pattern: str, group: str | None) -> None:
        super().__init__(conn, pattern, group, _CORE_BUFFER)
        nc = conn.nc
        assert nc is not None
        queue = "" if group is None else queue_group(conn.config.queue_group_prefix, group)
        self._overflow_bytes = 0  # payload bytes buffered past _CORE_BUFFER
        fast = conn.fast
        self._subscribing: Job[NatsSub] = self._bridge.submit_inline(
            internals.subscribe,
            nc,
            self.pattern,
            queue,
            _PENDING_MSGS,
            _PENDING_BYTES,
            internals.ReadLoopDispatch(self._take, self._take_raw) if fast else None,
            None if fast else self._inbox.put,
        )
        # First deliveries share one Delivery per subject (str, or bytes as read).
        self._first: dict[str | bytes, Delivery] = {}
        self._handed: dict[int, Message] = {}  # delivered, not yet acked or nacked

    async def _start(self) -> None:
        self._sub = await self._subscribing.wait()

    def _take_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """A message as read, from the connection's read path (fast path)."""
        self._take((subject, data, headers))

    def _take(self, raw: Any) -> None:
        """A message from nats-py's read loop (fast path; asyncio side, never
        waits): a nats-py ``Msg``, or ``(subject, payload, headers)`` as read."""
        inbox = self._inbox
        if len(inbox) < _CORE_BUFFER:
            if self._overflow_bytes:
                self._overflow_bytes = 0
            inbox.put_nowait(raw)
            return
        size = len(raw[1] if type(raw) is tuple else raw.data)
        if (
            len(inbox) >= _CORE_BUFFER + _PENDING_MSGS
            or self._overflow_bytes + size > _PENDING_BYTES
        ):
            conn = self._conn
            conn.dropped += 1
            conn._event("slow_consumer")
            return
        self._overflow_bytes += size
        inbox.put_nowait(raw)

    def _convert(self, raw: Any) -> Message:
        if type(raw) is Message:
            self._received[self.pattern] += 1
            self._redelivered[self.pattern] += 1
            self._handed[id(raw)] = raw
            return raw
        subject: str | bytes
        if type(raw) is tuple:  # as read (the fast path)
            subject, data, raw_headers = raw
            uuid, metadata = _raw_metadata(raw_headers)
        else:  # a nats-py Msg
            headers = raw.headers
            if headers is not None and len(headers) == 1 and UUID_HEADER in headers:
                uuid = headers[UUID_HEADER]
                metadata = {}
            else:
                uuid, metadata = _metadata_of(headers)
            subject, data = raw.subject, raw.data
        delivery = self._first.get(subject)
        if delivery is None:
            if len(self._first) >= 1024:
                self._first.clear()
            topic = subject.decode() if type(subject) is bytes else subject
            delivery = self._first[subject] = Delivery(cast(str, topic))
        self._received[self.pattern] += 1
        msg = Message._received(uuid, data, metadata, delivery, self)
        self._handed[id(msg)] = msg
        return msg

    async def ack_message(self, message: Message) -> None:
        self._handed.pop(id(message), None)
        self._acked[self.pattern] += 1

    async def nack_message(self, message: Message, delay: float | None) -> None:
        self._handed.pop(id(message), None)
        self._nacked[self.pattern] += 1
        if self._state != _OPEN:
            return  # at-most-once: nothing outlives the subscription
        old = message.delivery
        assert old is not None
        attempt = old.attempt + 1
        again = Message._received(
            message.uuid,
            message.payload,
            dict(message.metadata),
            Delivery(old.topic, attempt, True),
            self,
        )
        if delay and self._nursery is not None:
            self._nursery.start_soon(self._requeue_later, again, delay)
        else:
            self._inbox.put_nowait(again)

    async def _requeue_later(self, message: Message, delay: float) -> None:
        await trio.sleep(delay)
        if self._state == _OPEN:
            self._inbox.put_nowait(message)

    async def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # Delivered and never settled: nacked, as on every provider (at-most-once:
        # core NATS has nowhere to redeliver them once the subscription is gone).
        handed, self._handed = self._handed, {}
        for message in handed.values():
            message._mark_nacked()
            self._nacked[self.pattern] += 1
        sub = self._sub
        nc = self._conn.nc
        self._sub = None
        if sub is None or nc is None or nc.is_closed:
            return
        try:
            await self._bridge.call(sub.unsubscribe)
        except Exception as exc:
            logger.debug("unsubscribe failed: %s", self._conn.scrub(str(exc)))
