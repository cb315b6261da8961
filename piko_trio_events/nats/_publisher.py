"""The NATS publisher: core NATS (handed to the outgoing batch) and JetStream
(stored, acks pipelined).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from .._errors import InvalidTopicError, ProviderClosedError, PublishError, StreamNotFoundError
from .._message import Message, validate_metadata
from .._topics import validate_topic
from ._connection import _no_jetstream
from ._limits import _PUBLISH_ACK_TIMEOUT, _YIELD_EVERY
from ._wire import _check_message, _encode

if TYPE_CHECKING:
    from ._connection import _Connection

#: The ``retry_after`` of a transient :class:`PublishError` (seconds): the
#: first step of the router's backoff (see ``_router._MAX_PUBLISH_BACKOFF``).
_TRANSIENT_RETRY_AFTER = 0.1


def _transient(exc: BaseException) -> float | None:
    """The ``retry_after`` of a failed stream provisioning: None when the server
    refused the request for good (an API error with a 4xx code)."""
    code = getattr(exc, "code", None)
    if isinstance(code, int) and not isinstance(code, bool) and 0 < code < 500:
        return None
    return _TRANSIENT_RETRY_AFTER


class NatsPublisher:
    """Publishes to NATS subjects (core) or JetStream streams.

    Core NATS: ``publish`` returns once the messages are handed to the
    connection's outgoing batch; it is a cancellation point every call and
    yields to the scheduler once per batch. JetStream: ``publish`` returns
    once every message is stored (the acks of one call are pipelined); a
    call cancelled mid-batch first finishes or fails the batch in flight
    (bounded by ``close_timeout``). A publish that cannot complete raises
    :class:`PublishError` with the number of unconfirmed messages.
    """

    def __init__(self, connection: _Connection) -> None:
        self._conn = connection
        self._bridge = connection.bridge
        jetstream = connection.config.jetstream
        self._jetstream = not jetstream.disabled
        self._track_id = jetstream.track_message_id
        self._published = connection.metrics.published
        self._calls = 0
        self._closed = False
        self._prefixes: dict[str, bytes] = {}
        self._max_payload = 1024 * 1024  # the server's, once connected

    async def publish(self, topic: str, *messages: Message) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        validate_topic(topic)
        if self._closed:
            raise ProviderClosedError(f"cannot publish to {topic!r}: the provider is closed")
        if self._jetstream:
            await self._publish_js(topic, messages)
            return
        prefix = self._prefixes.get(topic)
        if prefix is None:
            prefix = self._prefixes[topic] = b"HPUB " + topic.encode() + b" "
        track = self._track_id
        limit = self._max_payload
        # Check and encode every message before queueing any: all or nothing.
        encoded = []
        size = 0
        for msg in messages:
            if type(msg) is not Message:
                _check_message(msg)
            if msg.metadata:
                validate_metadata(msg.metadata)
            command = _encode(prefix, msg, track, limit)
            size += len(command)
            encoded.append(command)
        if encoded:
            self._published[topic] += len(encoded)
            # After a quiet spell straight to the socket (latency), else queued
            # and written together with what follows closely (throughput).
            full = self._conn.send(encoded, size)
        else:
            full = self._bridge.full
        if full:
            await self._bridge.wait_space()
        else:
            self._calls += 1
            if self._calls >= _YIELD_EVERY:
                self._calls = 0
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def _publish_js(self, topic: str, messages: tuple[Message, ...]) -> None:
        if not messages:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        conn = self._conn
        for msg in messages:  # refuse bad input before provisioning a stream for it
            if type(msg) is not Message:
                _check_message(msg)
            if msg.metadata:
                validate_metadata(msg.metadata)
        if conn.config.jetstream.auto_provision:
            try:
                await conn.stream_for(topic)
            except (StreamNotFoundError, InvalidTopicError, ProviderClosedError):
                raise
            except Exception as exc:
                missing = _no_jetstream(conn, exc)
                why = missing or conn.scrub(str(exc) or type(exc).__name__)
                raise PublishError(
                    f"{len(messages)} of {len(messages)} message(s) to {topic!r} are "
                    f"unconfirmed: no stream for it could be provisioned: {why}",
                    unconfirmed=len(messages),
                    retry_after=None if missing is not None else _transient(exc),
                ) from exc
        # The message id is qualified by the topic: a copy of a message (same
        # uuid) published to another topic of the same stream is stored too,
        # a republish to the same topic once.
        track = topic.encode() + b":" if self._track_id else False
        subject = b"HPUB " + topic.encode() + b" "
        limit = self._max_payload
        waiter = conn.replies.expect(len(messages))
        try:
            encoded = [
                _encode(subject + waiter.reply(i) + b" ", msg, track, limit)
                for i, msg in enumerate(messages)
            ]
        except BaseException:
            conn.replies.forget(waiter)  # nothing of the call was sent
            raise
        conn.send(encoded, sum(map(len, encoded)))
        # Finish or fail the batch in flight, even if cancelled meanwhile.
        await waiter.wait(
            min(_PUBLISH_ACK_TIMEOUT, conn.config.close_timeout + 1.0), conn.closing_by
        )
        if waiter.remaining:
            conn.replies.forget(waiter)
        failed = waiter.unconfirmed
        stored = len(messages) - failed
        if stored:
            self._published[topic] += stored
        await trio.lowlevel.checkpoint_if_cancelled()
        if failed:
            if waiter.no_stream:
                conn.streams.clear()
                missing = _no_jetstream(conn)
                if missing is not None:
                    raise PublishError(
                        f"{failed} of {len(messages)} message(s) to {topic!r} are "
                        f"unconfirmed: {missing}",
                        unconfirmed=failed,
                    )
                if not conn.config.jetstream.auto_provision:
                    raise StreamNotFoundError(
                        f"no JetStream stream holds topic {topic!r} (auto_provision is off)"
                    )
            # Transient unless the server refused a message for good: no answer
            # in time (the connection down, the server busy), "no responders"
            # (the stream's leader moving), or a 5xx error (a full stream).
            reason = waiter.reason or "timed out waiting for the server's acks"
            raise PublishError(
                f"{failed} of {len(messages)} message(s) to {topic!r} are unconfirmed: "
                f"{conn.scrub(reason)}",
                unconfirmed=failed,
                retry_after=None if waiter.refused else _TRANSIENT_RETRY_AFTER,
            )

    def _connected(self, max_payload: int) -> None:
        """The connection is up: messages are checked against the server's limit."""
        self._max_payload = max_payload

    async def _close(self) -> None:
        """The drain's publisher step: refuse new publishes, flush what was
        published before, while the connection is up."""
        self._closed = True
        nc = self._conn.nc
        if nc is not None and not nc.is_closed and self._conn.connected:
            await self._bridge.call(nc.flush)

    async def flush(self) -> None:
        """Return once everything published before has reached the server."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        nc = self._conn.nc
        assert nc is not None
        try:
            await self._bridge.call(nc.flush)
        except Exception as exc:
            raise PublishError(
                f"flush failed: {self._conn.scrub(str(exc) or type(exc).__name__)}",
                unconfirmed=0,
            ) from exc
