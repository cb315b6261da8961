"""The in-memory provider: Watermill's GoChannel, made trio-native.

Every subscription group (a named group, or each private subscription) has a
bounded queue. ``publish`` puts each message into the queue of every group
whose pattern matches the topic, waiting while one is full (backpressure).
Members of a group take from its queue in turn (competing consumers). A
message is delivered to one member at a time, tracked until it is acked; a
nack puts it back into its group's queue (after a delay, if asked), and so
does closing the member that holds it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, TypeAlias

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from .._abc import StartPosition, validate_subscription
from .._config import MemoryConfig
from .._errors import ConfigError, ProviderClosedError, PublishError
from .._lifecycle import DrainStep, run_provider
from .._message import Delivery, Message, checked_payload, validate_metadata
from .._metrics import ProviderMetrics, provider_metrics
from .._provider_base import ProviderBase
from .._router import Router
from .._topics import is_wildcard, topic_matches, validate_topic
from ._queue import GroupQueue

__all__ = [
    "MemoryProvider",
    "MemoryPublisher",
    "MemorySubscriber",
    "MemorySubscription",
    "Undelivered",
    "open_memory_provider",
]

logger = logging.getLogger("piko_trio_events.memory")

# What a queue holds for one message and one group, as a tuple for speed:
# (uuid, payload, metadata or None, topic, deliveries so far, ack waiter or None,
#  history sequence or None, stored at or None).
_Env: TypeAlias = tuple[
    "str | Message",  # the uuid, or the published message that will make it if asked
    bytes,
    "dict[str, str] | None",
    str,
    int,
    "_AckWaiter | None",
    "int | None",
    "datetime | None",
]
_UUID: Final = 0
_PAYLOAD: Final = 1
_METADATA: Final = 2
_TOPIC: Final = 3
_ATTEMPT: Final = 4
_WAITER: Final = 5
_SEQ: Final = 6
_STAMP: Final = 7


@dataclass(frozen=True, slots=True)
class Undelivered:
    """A message that was still waiting for a group when the provider closed."""

    pattern: str
    group: str | None
    message: Message
    attempts: int


class _AckWaiter:
    """Counts the acks a ``block_publish_until_ack`` publish waits for."""

    __slots__ = ("event", "failed", "remaining")

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.failed = 0
        self.event = trio.Event()

    def done(self, *, failed: bool = False) -> None:
        self.remaining -= 1
        if failed:
            self.failed += 1
        if self.remaining <= 0:
            self.event.set()


class _Group:
    __slots__ = ("members", "name", "pattern", "queue", "removed", "start")

    def __init__(self, pattern: str, name: str | None, start: StartPosition, capacity: int) -> None:
        self.pattern = pattern
        self.name = name
        self.start = start
        self.queue: GroupQueue[_Env] = GroupQueue(capacity)
        self.members = 0
        self.removed = False


_OPEN: Final = 0
_CLOSED: Final = 1  # closed by its owner: ClosedResourceError
_ENDED: Final = 2  # ended by the provider: EndOfChannel


class _Broker:
    """The state that the publisher, the subscriber and the scheduler share."""

    def __init__(self, config: MemoryConfig, metrics: ProviderMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.groups: dict[tuple[str, str], _Group] = {}
        self.private: set[_Group] = set()
        self.subscriptions: set[MemorySubscription] = set()
        self.targets: dict[str, tuple[_Group, ...]] = {}
        # per topic, oldest first; None unless persistent
        self.history: dict[str, deque[_Env]] | None = {} if config.persistent else None
        self.sequence = 0
        self.closed = False
        self.publishing_closed = False
        self._delayed: list[tuple[float, int, _Group, _Env]] = []
        self._counter = itertools.count()
        self._wakeup = trio.Event()
        self._scheduler_scope = trio.CancelScope(shield=True)
        self.undelivered: list[Undelivered] = []

    # -- routing -----------------------------------------------------------------------

    def targets_of(self, topic: str) -> tuple[_Group, ...]:
        targets = self.targets.get(topic)
        if targets is None:
            every = itertools.chain(self.groups.values(), self.private)
            targets = tuple(g for g in every if topic_matches(g.pattern, topic))
            self.targets[topic] = targets
        return targets

    def add_group(self, group: _Group) -> None:
        if group.name is None:
            self.private.add(group)
        else:
            self.groups[(group.pattern, group.name)] = group
        if is_wildcard(group.pattern):
            self.targets.clear()
        else:
            cached = self.targets.get(group.pattern)
            if cached is not None:
                self.targets[group.pattern] = (*cached, group)
        history = self.history
        if history is not None and group.start != "new":
            start = group.start
            matching = [h for topic, h in history.items() if topic_matches(group.pattern, topic)]
            for env in heapq.merge(*matching, key=_sequence_of):
                if isinstance(start, int) and env[_SEQ] is not None and env[_SEQ] < start:
                    continue
                if isinstance(start, datetime) and env[_STAMP] is not None:
                    stamp = env[_STAMP]
                    if stamp < (start if start.tzinfo else start.replace(tzinfo=UTC)):
                        continue
                group.queue.put_back(env)

    def remove_private(self, group: _Group) -> None:
        """A private subscription closed: its queue goes with it."""
        self.private.discard(group)
        group.removed = True
        self.targets.clear()
        for env in group.queue.drain():
            waiter = env[_WAITER]
            if waiter is not None:
                waiter.done()
        group.queue.wake_senders(ProviderClosedError("the subscription closed"))

    # -- redelivery --------------------------------------------------------------------

    def requeue(
        self, group: _Group, env: _Env, delay: float | None, *, front: bool = False
    ) -> None:
        if self.closed:  # a late nack or hand-back: report it rather than lose it
            self._report(group, env)
            return
        if group.removed:
            waiter = env[_WAITER]
            if waiter is not None:
                waiter.done()
            return
        if not delay:
            if front:
                group.queue.put_front(env)
            else:
                group.queue.put_back(env)
            return
        due = trio.current_time() + delay
        heapq.heappush(self._delayed, (due, next(self._counter), group, env))
        if self._delayed[0][2] is group and self._delayed[0][3] is env:
            self._wakeup.set()

    async def run_scheduler(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Put delayed redeliveries back when due (a task of the provider's nursery)."""
        with self._scheduler_scope:
            task_status.started()
            delayed = self._delayed
            while True:
                self._wakeup = trio.Event()
                if delayed:
                    with trio.move_on_at(delayed[0][0]):
                        await self._wakeup.wait()
                else:
                    await self._wakeup.wait()
                now = trio.current_time()
                while delayed and delayed[0][0] <= now:
                    _, _, group, env = heapq.heappop(delayed)
                    self.requeue(group, env, None)

    # -- close -------------------------------------------------------------------------

    def close(self) -> list[Undelivered]:
        """Stop the scheduler and report what no group received."""
        self.closed = True
        self._scheduler_scope.cancel()
        pending: list[tuple[_Group, _Env]] = [(g, e) for _, _, g, e in self._delayed]
        self._delayed.clear()
        for group in (*self.groups.values(), *self.private):
            pending.extend((group, env) for env in group.queue.drain())
            group.queue.wake_senders(ProviderClosedError("the provider closed"))
        for group, env in pending:
            self._report(group, env)
        if self.undelivered:
            logger.warning(
                "memory provider closed with %d message(s) not delivered to their groups",
                len(self.undelivered),
            )
        return self.undelivered

    def _report(self, group: _Group, env: _Env) -> None:
        """``env`` never reached ``group`` and never will: the provider closed."""
        waiter = env[_WAITER]
        if waiter is not None:
            waiter.done(failed=True)
        if not group.removed:
            self.undelivered.append(
                Undelivered(group.pattern, group.name, _rebuild(env), env[_ATTEMPT])
            )


def _sequence_of(env: _Env) -> int:
    return env[_SEQ] or 0


def _attempted(entry: tuple[Message, _Env, int]) -> _Env:
    """The envelope of an in-flight message, counting its delivery (for a requeue)."""
    _, env, attempt = entry
    return (env[0], env[1], env[2], env[3], attempt, env[5], env[6], env[7])


def _rebuild(env: _Env) -> Message:
    metadata = env[_METADATA]
    uuid = env[_UUID]
    return Message(env[_PAYLOAD], metadata, uuid=uuid if isinstance(uuid, str) else uuid.uuid)


class MemoryPublisher:
    """Publishes into the groups' queues.

    ``publish`` is a full trio checkpoint, like ``send()``; it waits while a
    target group's queue is full (``output_buffer``), and with
    ``block_publish_until_ack`` until every target group acked every message.
    Cancelled mid-call, the messages already queued stay published.
    """

    def __init__(self, broker: _Broker) -> None:
        self._broker = broker
        self._block = broker.config.block_publish_until_ack
        self._published = broker.metrics.published

    async def publish(self, topic: str, *messages: Message) -> None:
        broker = self._broker
        # A topic in the targets cache was validated before it got there.
        targets = broker.targets.get(topic) if type(topic) is str else None
        if targets is None:
            validate_topic(topic)
        if broker.publishing_closed:
            raise ProviderClosedError(f"cannot publish to {topic!r}: the provider is closed")
        for msg in messages:
            if not isinstance(msg, Message):
                raise TypeError(f"publish() takes Message objects, not {type(msg).__name__}")
            if type(msg.payload) is not bytes:  # replaced after construction
                msg.payload = checked_payload(msg.payload)
            if msg.metadata:
                validate_metadata(msg.metadata)
        await checkpoint_if_cancelled()
        if targets is None:
            targets = broker.targets_of(topic)
        history = broker.history
        waiter = (
            _AckWaiter(len(targets) * len(messages))
            if self._block and targets and messages
            else None
        )
        for msg in messages:
            seq: int | None = None
            stamp: datetime | None = None
            if history is not None:
                broker.sequence += 1
                seq = broker.sequence
                stamp = datetime.now(UTC)
            metadata = msg.metadata
            uuid = msg._uuid
            env: _Env = (
                # No uuid yet: deliveries ask this message for one if they need it
                # (a str(uuid4()) per message would cost more than the rest of publish).
                msg if uuid is None else uuid,
                msg.payload,
                dict(metadata) if metadata else None,
                topic,
                0,
                waiter,
                seq,
                stamp,
            )
            if history is not None:
                topic_history = history.get(topic)
                if topic_history is None:
                    topic_history = history[topic] = deque(maxlen=broker.config.history_size)
                topic_history.append((env[0], env[1], env[2], topic, 0, None, seq, stamp))
            for group in targets:
                queue = group.queue
                if not queue.put_nowait(env):
                    await queue.put(env)
        self._published[topic] += len(messages)
        await cancel_shielded_checkpoint()
        if waiter is not None:
            await waiter.event.wait()
            if waiter.failed:
                raise PublishError(
                    f"the provider closed before {waiter.failed} message(s) to {topic!r} were "
                    "acked",
                    unconfirmed=waiter.failed,
                )

    async def flush(self) -> None:
        """Nothing is buffered between publish and the queues: a checkpoint."""
        await trio.lowlevel.checkpoint()


class MemorySubscription(trio.abc.ReceiveChannel[Message]):
    """One member of a group: a trio ReceiveChannel of received messages.

    Closing it (leaving its ``async with``) nacks every message it delivered
    that was not acked; for a private subscription the queue goes with it.
    """

    system = "memory"  # (as an Acker: telemetry's messaging.system)

    def __init__(self, broker: _Broker, group: _Group) -> None:
        self._broker = broker
        self._group = group
        self._queue = group.queue
        self._state = _OPEN
        # id(message) -> (message, its envelope as queued, this delivery's attempt)
        self._inflight: dict[int, tuple[Message, _Env, int]] = {}
        self._pattern = group.pattern
        self._first: dict[str, Delivery] = {}
        metrics = broker.metrics
        self._received = metrics.received
        self._redelivered = metrics.redelivered
        self._acked = metrics.acked
        self._nacked = metrics.nacked
        group.members += 1
        broker.subscriptions.add(self)

    @property
    def pattern(self) -> str:
        return self._group.pattern

    @property
    def group(self) -> str | None:
        return self._group.name

    def _deliver(self, env: _Env) -> Message:
        uuid, payload, metadata, topic, attempt, _, seq, stamp = env
        attempt += 1
        if attempt == 1 and seq is None:
            delivery = self._first.get(topic)
            if delivery is None:
                delivery = self._first[topic] = Delivery(topic)
        else:
            delivery = Delivery(topic, attempt, attempt > 1, seq, stamp)
            if attempt > 1:
                self._redelivered[self._pattern] += 1
        msg = Message._received(uuid, payload, dict(metadata) if metadata else {}, delivery, self)
        self._inflight[id(msg)] = (msg, env, attempt)
        self._received[self._pattern] += 1
        return msg

    def _take_nowait(self) -> Message | None:
        """:meth:`receive_nowait`, but None rather than WouldBlock (the router's drain)."""
        if self._state != _OPEN:
            self._raise_closed()
        queue = self._queue
        return self._deliver(queue.get_nowait()) if queue.items else None

    def receive_nowait(self) -> Message:
        if self._state != _OPEN:
            self._raise_closed()
        return self._deliver(self._queue.get_nowait())

    async def receive(self) -> Message:
        queue = self._queue
        if queue.items or self._state != _OPEN:
            await checkpoint_if_cancelled()
            if self._state != _OPEN:
                self._raise_closed()
            env = queue.get_nowait()
            await cancel_shielded_checkpoint()
        else:
            # No WouldBlock raised and caught: the router's loop just had one.
            # (A cancel point already: a cancelled task's wait is aborted at once.)
            env = await queue.get(self)
            if self._state != _OPEN:
                # Handed to this task just before the subscription closed: it was
                # never delivered, so it goes back to its group without counting.
                self._broker.requeue(self._group, env, None, front=True)
                self._raise_closed()
        return self._deliver(env)

    def _raise_closed(self) -> None:
        if self._state == _ENDED:
            raise trio.EndOfChannel
        raise trio.ClosedResourceError("this subscription was closed")

    def ack_message(self, message: Message) -> None:
        """Settled at once: Message.ack() awaits nothing more."""
        entry = self._inflight.pop(id(message), None)
        if entry is not None:
            waiter = entry[1][_WAITER]
            if waiter is not None:
                waiter.done()
            self._acked[self._pattern] += 1

    async def nack_message(self, message: Message, delay: float | None) -> None:
        entry = self._inflight.pop(id(message), None)
        if entry is not None:
            self._nacked[self._pattern] += 1
            self._broker.requeue(self._group, _attempted(entry), delay)

    def _release(self, state: int, error: BaseException) -> None:
        """Leave the group: wake waiting receivers, nack what is in flight."""
        if self._detach(state, error):
            self._return_inflight()

    def _detach(self, state: int, error: BaseException) -> bool:
        """Stop receiving (waiting receivers get ``error``); False if already closed."""
        if self._state != _OPEN:
            return False
        self._state = state
        self._broker.subscriptions.discard(self)
        self._group.queue.wake_receivers(self, error)
        return True

    def _return_inflight(self) -> None:
        """Nack every message delivered and not acked, back into the group."""
        group = self._group
        inflight, self._inflight = self._inflight, {}
        for entry in inflight.values():
            entry[0]._mark_nacked()
            self._nacked[group.pattern] += 1
            self._broker.requeue(group, _attempted(entry), None)
        group.members -= 1
        if group.name is None and self._state == _CLOSED:
            # Closed by its owner: its queue goes with it. Ended by the provider's
            # close: the queue stays, so that what it holds is reported.
            self._broker.remove_private(group)

    def close(self) -> None:
        """Close at once (no checkpoint); see :meth:`aclose`."""
        self._release(_CLOSED, trio.ClosedResourceError("this subscription was closed"))

    def _end(self) -> None:
        self._release(_ENDED, trio.EndOfChannel())

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class _SubscriptionContext:
    """What :meth:`MemorySubscriber.subscribe` returns: the subscription exists
    (and its group keeps messages) from the call, not from ``__aenter__``."""

    __slots__ = ("_subscription",)

    def __init__(self, subscription: MemorySubscription) -> None:
        self._subscription = subscription

    async def __aenter__(self) -> MemorySubscription:
        return self._subscription

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Bookkeeping first, with no checkpoint before it: it runs even when cancelled.
        self._subscription.close()


class MemorySubscriber:
    """Opens subscriptions on the in-memory provider."""

    def __init__(self, broker: _Broker) -> None:
        self._broker = broker

    def subscribe(
        self,
        topic: str,
        group: str | None = None,
        start: StartPosition = None,
        *,
        prefetch: int | None = None,
    ) -> _SubscriptionContext:
        """Subscribe to ``topic``; the subscription exists from this call.

        ``group=None`` is private: it receives every message published while
        it is open. Members of a named group compete for its messages; the
        group lasts as long as the provider and keeps its messages while it
        has no member. With ``persistent``, a new group (or private
        subscription) first receives the earlier messages of its topic
        (``start="new"`` skips them; a sequence or a datetime starts there).

        ``prefetch`` is checked and otherwise unused: a member takes a message
        from its group's queue only when it receives, so it never holds more
        than it has received and not settled.
        """
        start, _ = validate_subscription(topic, group, start, prefetch)
        broker = self._broker
        if broker.closed:
            raise ProviderClosedError(f"cannot subscribe to {topic!r}: the provider is closed")
        if group is None:
            g = _Group(topic, None, start, broker.config.output_buffer)
            broker.add_group(g)
        else:
            existing = broker.groups.get((topic, group))
            if existing is None:
                g = _Group(topic, group, start, broker.config.output_buffer)
                broker.add_group(g)
            else:
                if start is not None and start != existing.start:
                    raise ConfigError(
                        f"group {group!r} of {topic!r} exists with start={existing.start!r}; "
                        f"cannot subscribe with start={start!r}"
                    )
                g = existing
        return _SubscriptionContext(MemorySubscription(broker, g))

    def _end_all(self) -> None:
        """End every open subscription: first stop them all receiving, then put
        back what they hold, so that nothing goes back to a member being ended."""
        ending = [
            s for s in list(self._broker.subscriptions) if s._detach(_ENDED, trio.EndOfChannel())
        ]
        for subscription in ending:
            subscription._return_inflight()


class MemoryProvider(ProviderBase[MemoryPublisher, MemorySubscriber]):
    """The in-memory provider, as yielded by :func:`open_memory_provider`.

    Attributes:
        undelivered: after close, the messages still waiting for a group
            (also logged as a warning); empty while running.
    """

    def __init__(
        self,
        config: MemoryConfig,
        broker: _Broker,
        router: Router,
        publisher: MemoryPublisher,
        subscriber: MemorySubscriber,
    ) -> None:
        super().__init__(publisher, subscriber, router)
        self.config = config
        self._broker = broker

    @property
    def undelivered(self) -> list[Undelivered]:
        return self._broker.undelivered

    def _request_transport(self) -> object:
        """Request/reply for :mod:`piko_trio_events.cqrs`: replies stay in this process."""
        from .._request_transport import LocalRequests

        return LocalRequests(self)

    def __repr__(self) -> str:
        return f"<MemoryProvider running={self._running} config={self.config!r}>"


class _MemorySteps:
    """The memory provider's own steps around the router's (see
    :class:`piko_trio_events._lifecycle.ProviderSteps`). One budget, the
    router's ``close_timeout``: the steps after the router take no time."""

    def __init__(self, config: MemoryConfig, broker: _Broker, subscriber: MemorySubscriber) -> None:
        self.budget = config.router.close_timeout
        self._broker = broker
        self._subscriber = subscriber

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self._broker.run_scheduler)

    async def abort(self) -> None:
        self._broker.close()
        await trio.lowlevel.checkpoint()

    def drain_steps(self) -> list[DrainStep]:
        return [DrainStep("subscriptions and queues", self._end)]

    async def _end(self) -> None:
        """subscriber (end open subscriptions) → publisher (closed) → queues
        (what no group received is reported)."""
        self._subscriber._end_all()
        self._broker.publishing_closed = True
        self._broker.close()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def stop(self) -> None:
        if not self._broker.closed:  # the drain ran out of time before its last step
            self._broker.close()


@asynccontextmanager
async def open_memory_provider(config: MemoryConfig | None = None) -> AsyncIterator[MemoryProvider]:
    """Run an in-memory provider for the duration of the block.

    Its nursery owns the router's handler tasks and the redelivery timer.
    Leaving the block (normally, by an exception, or because an enclosing
    scope was cancelled) drains in order, shielded: the router stops taking
    messages and lets in-flight handlers finish within
    ``config.router.close_timeout`` (then cancels them and nacks their
    messages), then open subscriptions end (their unacked messages go back
    to their groups), then publishing closes (``ProviderClosedError``), and
    what no group received is reported in ``provider.undelivered``.
    """
    config = MemoryConfig() if config is None else config
    if not isinstance(config, MemoryConfig):
        raise ConfigError(f"open_memory_provider takes a MemoryConfig, not {config!r}")
    config.validate()
    broker = _Broker(config, provider_metrics("memory"))
    publisher = MemoryPublisher(broker)
    subscriber = MemorySubscriber(broker)
    router = Router(publisher, subscriber, config.router, default_concurrency=1)
    provider = MemoryProvider(config, broker, router, publisher, subscriber)
    async with run_provider(provider, _MemorySteps(config, broker, subscriber), broker.metrics):
        yield provider
