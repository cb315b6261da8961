"""Request/reply on NATS: the transport behind ``piko_trio_events.cqrs``.

One core NATS inbox subscription per bus, ``_INBOX.<nuid>.*``, serves all
its concurrent requests; request ``n`` names ``_INBOX.<nuid>.n`` as its reply
address (in metadata, which every subscription delivers, and on core NATS
also as the message's reply subject). Replies are core NATS messages on
both core NATS and JetStream: nothing is stored, and a reply to a request
that gave up finds no waiter and is dropped.

On core NATS a request is published with that reply subject, so that when
no subscription matches its topic the server answers at once with a
``503`` status on the reply subject (nats-py asks the server for these "no
responders" answers when it connects); the bus turns it into
``NoResponderError``. Under JetStream the stream stores every request, so
there is no such answer: a request nobody serves ends at its timeout.

On the fast path replies are taken from nats-py's read loop as bytes (as
the provider's own subscriptions are), and handed to the bus at once: no
task, no queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from .._errors import ProviderClosedError
from .._message import Message, validate_metadata
from .._topics import validate_topic

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from .._request_transport import Deliver
    from ._connection import _Connection
    from ._publisher import NatsPublisher

__all__ = ["NatsRequests"]

#: The longest the inbox's SUB may take to be queued (it only buffers a command).
_SUBSCRIBE_LIMIT = 5.0


class NatsRequests:
    """The request transport of one bus on a NATS provider."""

    def __init__(self, conn: _Connection, publisher: NatsPublisher) -> None:
        self._conn = conn
        self._publisher = publisher
        self._prefix = ""
        self._deliver: Deliver | None = None

    async def open_inbox(self, deliver: Deliver) -> None:
        from . import _internals as internals
        from ._limits import _PENDING_BYTES, _PENDING_MSGS

        conn = self._conn
        nc = conn.nc
        if nc is None or conn.closed or self._publisher._closed:
            raise ProviderClosedError("cannot open a reply inbox: the provider is closed")
        self._prefix = nc.new_inbox()
        self._deliver = deliver
        fast = conn.fast
        # Queued in order with publishes: a request sent after this cannot overtake it.
        job = conn.bridge.submit_inline(
            internals.subscribe,
            nc,
            self._prefix + ".*",
            "",
            _PENDING_MSGS,
            _PENDING_BYTES,
            internals.ReadLoopDispatch(self._on_msg, self._on_raw) if fast else None,
            None if fast else self._on_msg_async,
        )
        # Shielded: a request cancelled now must not leave the subscription unknown.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + _SUBSCRIBE_LIMIT):
            await job.wait()

    def reply_to(self, token: str) -> str:
        return f"{self._prefix}.{token}"

    async def send_request(self, topic: str, message: Message, reply_to: str) -> None:
        publisher = self._publisher
        if publisher._jetstream:  # stored: the reply address travels in the metadata
            await publisher.publish(topic, message)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        validate_topic(topic)
        self._send(b"HPUB %b %b " % (topic.encode(), reply_to.encode()), message, topic)
        publisher._published[topic] += 1
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_reply(self, reply_to: str, message: Message) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        validate_topic(reply_to)
        self._send(b"HPUB %b " % reply_to.encode(), message, reply_to)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _send(self, prefix: bytes, message: Message, topic: str) -> None:
        """A core publish (never JetStream: an inbox has no stream)."""
        from ._wire import _encode

        if self._publisher._closed or self._conn.nc is None:
            raise ProviderClosedError(f"cannot publish to {topic!r}: the provider is closed")
        if message.metadata:
            validate_metadata(message.metadata)
        command = _encode(prefix, message, False, self._publisher._max_payload)
        self._conn.send([command], len(command))

    # -- replies (nats-py's read loop: never blocks) ------------------------------------

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        from ._wire import _raw_metadata

        token = subject[len(self._prefix) + 1 :].decode()
        # An inline status: "NATS/1.0 503\r\n..." (a space after the version).
        if headers and headers[8:9] == b" " and headers[9:12] == b"503":
            self._hand_over(token, None)
            return
        uuid, metadata = _raw_metadata(headers)
        self._hand_over(token, Message(data, metadata, uuid=uuid))

    def _on_msg(self, msg: Msg) -> None:
        from ._wire import _metadata_of

        token = msg.subject[len(self._prefix) + 1 :]
        headers = dict(msg.headers) if msg.headers else None
        if headers is not None and headers.get("Status") == "503":
            self._hand_over(token, None)
            return
        uuid, metadata = _metadata_of(headers)
        metadata.pop("Status", None)
        metadata.pop("Description", None)
        self._hand_over(token, Message(msg.data, metadata, uuid=uuid))

    async def _on_msg_async(self, msg: Msg) -> None:
        self._on_msg(msg)

    def _hand_over(self, token: str, reply: Message | None) -> None:
        deliver = self._deliver
        if deliver is not None:
            deliver(token, reply)
