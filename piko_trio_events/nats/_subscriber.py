"""The NATS subscriber: opens core or JetStream subscriptions, owns their tasks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

import trio

from .._abc import StartPosition, validate_subscription
from .._errors import ConfigError, InvalidTopicError, ProviderClosedError
from .._message import Message
from ._core_subscription import _CoreSubscription
from ._jetstream_subscription import _JetStreamSubscription
from ._limits import _CAPACITY
from ._names import topic_root
from ._subscription import _CLOSED, _OPEN, NatsSubscription

if TYPE_CHECKING:
    from ._connection import _Connection

logger = logging.getLogger("piko_trio_events.nats")


class NatsSubscriber:
    """Opens subscriptions on NATS (core or JetStream)."""

    def __init__(self, conn: _Connection) -> None:
        self._nursery: trio.Nursery | None = None  # set once the provider runs
        self._conn = conn
        self._closed = False
        self._open: set[NatsSubscription] = set()

    def subscribe(
        self,
        topic: str,
        group: str | None = None,
        start: StartPosition = None,
        *,
        prefetch: int | None = None,
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[Message]]:
        """Subscribe to ``topic`` (``*`` and ``>`` allowed).

        Under JetStream a named group is a durable consumer (it outlives the
        provider and starts at ``start``, by default the first message the
        stream holds); ``group=None`` is an ephemeral consumer starting with
        new messages. Under core NATS a named group is a queue group and
        ``start`` must be None or ``"new"``. Leaving the block unsubscribes
        and nacks every message delivered and not acked.

        Under JetStream the subscription holds at most ``prefetch`` messages
        unsettled (default 256), buffered or received and not yet acked or
        nacked: the rest of a group's backlog stays on the server for its
        other members. Core NATS has no flow control: there ``prefetch`` is
        checked and unused.
        """
        start, prefetch = validate_subscription(topic, group, start, prefetch)
        conn = self._conn
        if self._closed:
            raise ProviderClosedError(f"cannot subscribe to {topic!r}: the provider is closed")
        if conn.config.jetstream.disabled:
            if start not in (None, "new"):
                raise ConfigError(
                    f"start={start!r}: core NATS cannot replay (enable JetStream for it)"
                )
            subscription: NatsSubscription = _CoreSubscription(conn, topic, group)
        else:
            if topic_root(topic) in ("*", ">"):
                raise InvalidTopicError(
                    f"topic {topic!r}: under JetStream the first token may not be a wildcard"
                )
            subscription = _JetStreamSubscription(
                conn, topic, group, start, _CAPACITY if prefetch is None else prefetch
            )
        return self._run(subscription)

    @asynccontextmanager
    async def _run(self, subscription: NatsSubscription) -> AsyncIterator[NatsSubscription]:
        if self._closed or self._nursery is None:
            raise ProviderClosedError("the provider is closed")
        self._open.add(subscription)
        try:
            await subscription._start()
            # Its background tasks live in the provider's (shielded) nursery, so
            # that this context manager never wraps errors in exception groups.
            await self._nursery.start(self._background, subscription)
            yield subscription
        finally:
            self._open.discard(subscription)
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = min(
                    trio.current_time() + self._conn.config.close_timeout + 1,
                    self._conn.closing_by,
                )
                if subscription._state == _OPEN:
                    subscription._state = _CLOSED
                await subscription._stop()
            subscription._scope.cancel()

    async def _background(
        self, subscription: NatsSubscription, *, task_status: trio.TaskStatus[None]
    ) -> None:
        with subscription._scope:
            try:
                async with trio.open_nursery() as nursery:
                    subscription._nursery = nursery
                    if isinstance(subscription, _JetStreamSubscription):
                        nursery.start_soon(subscription._pull)
                        nursery.start_soon(subscription._keep_in_progress)
                    task_status.started()
                    await trio.sleep_forever()
            except Exception as exc:
                logger.error(
                    "subscription to %r failed: %s",
                    subscription.pattern,
                    self._conn.scrub(f"{type(exc).__name__}: {exc}"),
                    exc_info=logger.isEnabledFor(logging.DEBUG),
                )
                subscription._end()

    def _attach(self, nursery: trio.Nursery) -> None:
        """The provider runs: subscriptions' tasks go to ``nursery`` from now on."""
        self._nursery = nursery

    async def _close_all(self) -> None:
        """End every subscription still open (receivers see EndOfChannel) and
        unsubscribe it now, nacking what it holds, while the connection is up."""
        self._closed = True
        for subscription in list(self._open):
            subscription._end()
            await subscription._stop()
