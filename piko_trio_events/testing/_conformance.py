"""A universal conformance suite for providers: Watermill's ``pubsub/tests`` TestPubSub, for trio.

Run it against any provider (yours too)::

    from piko_trio_events.testing import Features, check_provider

    await check_provider(lambda: open_memory_provider(MemoryConfig()), Features(...))

No pytest inside (like :func:`trio.testing.check_one_way_stream`): a check
that fails raises :class:`AssertionError` saying what was wrong; one that
does not apply to the provider's :class:`Features` raises
:class:`CheckSkipped`. :data:`CHECKS` holds every check as ``(name,
function)`` so that a test runner can run each as its own test.

Every check uses fresh topics (a uuid in the first token), because durable
state (streams, durable groups) can outlive a provider. Every wait is bounded;
messages are published only after the subscription that should receive them
exists, unless the check is about what a subscription finds when it starts
(groups, persistence, replay). A check receiving messages acks each of them,
as Watermill's ``BulkRead`` does; where the provider does not promise
exactly-once delivery, duplicates are tolerated (but every message must come).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Final, TypeAlias
from uuid import uuid4

import trio

from .._abc import Provider, StartPosition
from .._errors import AckError, ConfigError, PikoEventsError
from .._message import Message
from .._util import single_error

__all__ = [
    "CHECKS",
    "CheckSkipped",
    "Features",
    "MakeProvider",
    "check_provider",
    "skip_reason",
]

#: A zero-argument callable returning an async context manager that yields a
#: fresh, running provider (e.g. ``lambda: open_memory_provider(MemoryConfig())``).
MakeProvider: TypeAlias = Callable[[], AbstractAsyncContextManager[Provider]]

#: Watermill's ``defaultTimeout``: the bound of one wait for messages.
DEFAULT_TIMEOUT: Final = 15.0


@dataclass(frozen=True)
class Features:
    """What a provider promises; it decides which checks run, and how.

    Attributes:
        consumer_groups: subscribers sharing a named ``group`` compete, and a
            named group keeps the messages published while it has no member.
        exactly_once_delivery: a message acked is never delivered again and
            no message is delivered twice unless nacked, so checks count
            duplicates as failures.
        guaranteed_order: a subscription hands out its next message only once
            the previous one is acked (Watermill's GuaranteedOrder, as
            ``check_no_ack`` checks), so order holds even across members.
        guaranteed_order_with_single_subscriber: one subscription receives
            the messages of a topic in the order they were published.
        persistent: a named group outlives the provider: another provider
            made by ``make_provider`` sees the same topics and groups (so the
            checks use several providers where Watermill uses several
            Pub/Sub instances; otherwise they share one provider, like
            Watermill's ``RequireSingleInstance``).
        restart_server: an async callable that restarts the broker and
            returns once it is up again (``check_reconnect``), or None.
        new_subscriber_receives_old_messages: a subscription with
            ``start="all"`` first receives the topic's earlier messages, even
            ones already consumed.
    """

    consumer_groups: bool = False
    exactly_once_delivery: bool = False
    guaranteed_order: bool = False
    guaranteed_order_with_single_subscriber: bool = False
    persistent: bool = False
    restart_server: Callable[[], Awaitable[None]] | None = None
    new_subscriber_receives_old_messages: bool = False


class CheckSkipped(Exception):
    """A check does not apply to a provider with these :class:`Features`."""


CheckFn: TypeAlias = Callable[[MakeProvider, Features, float], Awaitable[None]]


# What each check needs: a reason to skip it when the features lack it.
_REQUIREMENTS: Final[dict[str, Callable[[Features], str | None]]] = {
    "no_ack": lambda f: (
        None if f.guaranteed_order else "guaranteed_order is required for this check"
    ),
    "continue_after_subscribe_close": lambda f: (
        None
        if f.persistent or f.consumer_groups
        else "needs persistent or consumer_groups (a group that keeps what no one read)"
    ),
    "publish_subscribe_in_order": lambda f: (
        None
        if f.guaranteed_order or f.guaranteed_order_with_single_subscriber
        else "order is not guaranteed"
    ),
    "subscribe_ctx": lambda f: (
        None
        if f.consumer_groups or f.new_subscriber_receives_old_messages
        else "needs consumer_groups or new_subscriber_receives_old_messages: the new "
        "subscription must find the messages the cancelled one left"
    ),
    "new_subscriber_receives_old_messages": lambda f: (
        None
        if f.new_subscriber_receives_old_messages
        else "the provider does not replay old messages to new subscribers"
    ),
    "reconnect": lambda f: (
        None if f.restart_server is not None else "no restart_server given: cannot check reconnects"
    ),
    "consumer_groups": lambda f: None if f.consumer_groups else "consumer groups are not supported",
}


def skip_reason(name: str, features: Features) -> str | None:
    """Why the check ``name`` does not apply to ``features``, or None if it does.

    Lets a test runner skip a check before running it (all of it synchronous).
    """
    requirement = _REQUIREMENTS.get(name)
    return None if requirement is None else requirement(features)


def _require(name: str, features: Features) -> None:
    reason = skip_reason(name, features)
    if reason is not None:
        raise CheckSkipped(reason)


# -- helpers ---------------------------------------------------------------------------


def _count(full: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, math.ceil(full * scale))


def _root() -> str:
    """A fresh first topic token: one stream per check under JetStream."""
    return f"conformance_{uuid4().hex[:16]}"


def _group() -> str:
    return f"cg_{uuid4().hex[:16]}"


def _simple(count: int) -> list[Message]:
    return [Message(b"x") for _ in range(count)]


def _ids(messages: Iterable[Message]) -> list[str]:
    return [m.uuid for m in messages]


def _short(ids: Iterable[str], limit: int = 5) -> str:
    items = sorted(ids)
    text = ", ".join(items[:limit])
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _assert_all_received(
    expected: Sequence[Message],
    received: Sequence[Message],
    *,
    what: str,
    allow_duplicates: bool,
) -> None:
    """Watermill's AssertAllMessagesReceived: the same ids (and, exactly once, no more)."""
    want = _ids(expected)
    got = _ids(received)
    missing = set(want) - set(got)
    unexpected = set(got) - set(want)
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(set(want))} never arrived: {_short(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected message(s): {_short(unexpected)}")
    if not allow_duplicates and len(got) != len(set(got)):
        twice = {u for u, n in Counter(got).items() if n > 1}
        problems.append(
            f"{len(got) - len(set(got))} duplicate deliveries (exactly-once promised): "
            f"{_short(twice)}"
        )
    if problems:
        raise AssertionError(f"{what}: " + "; ".join(problems))


class _Collected:
    """What a bulk read got: messages in arrival order, and whether all came."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.seen: set[str] = set()
        self.unconfirmed: set[str] = set()  # acks that raised AckError: may come again
        self.complete = False


async def _bulk_read(
    channel: trio.abc.ReceiveChannel[Message],
    limit: int,
    within: float,
    *,
    deduplicate: bool,
    collected: _Collected | None = None,
) -> _Collected:
    """Watermill's BulkRead(WithDeduplication): receive and ack up to ``limit``
    (distinct, when deduplicating) messages, for at most ``within`` seconds.

    Never raises for a short read (the caller asserts, with counts); a channel
    that ends early ends the read.
    """
    result = _Collected() if collected is None else collected
    with trio.move_on_after(within):
        while (len(result.seen) if deduplicate else len(result.messages)) < limit:
            try:
                msg = await channel.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                break
            try:
                await msg.ack()
            except AckError:
                result.unconfirmed.add(msg.uuid)
            if deduplicate and msg.uuid in result.seen:
                continue
            result.seen.add(msg.uuid)
            result.messages.append(msg)
    result.complete = (len(result.seen) if deduplicate else len(result.messages)) >= limit
    return result


def _expect_complete(collected: _Collected, limit: int, what: str) -> None:
    if not collected.complete:
        got = len(collected.seen)
        raise AssertionError(f"{what}: not all messages received ({got} of {limit})")


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """``trio.fail_after``, failing with an AssertionError that says what happened."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise AssertionError(
            f"the check did not finish within {seconds:g} s: a receive, publish or close hangs"
        ) from None


async def _publish_with_retry(provider: Provider, topic: str, *messages: Message) -> None:
    """Watermill's publishWithRetry: up to 5 attempts."""
    for attempt in range(5):
        try:
            await provider.publisher.publish(topic, *messages)
            return
        except PikoEventsError:
            if attempt == 4:
                raise


async def _publish_simple(provider: Provider, topic: str, count: int) -> list[Message]:
    """Publish ``count`` simple messages one by one (each with retries); return them."""
    published = _simple(count)
    for msg in published:
        await _publish_with_retry(provider, topic, msg)
    return published


async def _publish_parallel(
    provider: Provider, topic: str, count: int, publishers: int
) -> list[Message]:
    """Watermill's AddSimpleMessagesParallel: ``count`` messages from ``publishers`` tasks."""
    messages = _simple(count)
    send, receive = trio.open_memory_channel[Message](0)

    async def publisher(receive: trio.MemoryReceiveChannel[Message]) -> None:
        async with receive:
            async for msg in receive:
                await _publish_with_retry(provider, topic, msg.copy())

    async with trio.open_nursery() as nursery:
        for _ in range(publishers):
            nursery.start_soon(publisher, receive.clone())
        await receive.aclose()
        async with send:
            for msg in messages:
                await send.send(msg)
    return messages


@asynccontextmanager
async def _instance(
    make_provider: MakeProvider, features: Features, shared: Provider
) -> AsyncIterator[Provider]:
    """A new provider where providers share state (persistent), else ``shared``."""
    if features.persistent:
        async with make_provider() as provider:
            yield provider
    else:
        yield shared


@asynccontextmanager
async def _merged(
    provider: Provider,
    topic: str,
    members: int,
    group: str | None,
    start: StartPosition = None,
) -> AsyncIterator[trio.MemoryReceiveChannel[Message]]:
    """Watermill's subscriber multiplier: ``members`` subscriptions (in ``group``)
    merged into one channel. Every subscription exists when this yields."""
    send, receive = trio.open_memory_channel[Message](math.inf)

    async def member(
        send: trio.MemorySendChannel[Message], *, task_status: trio.TaskStatus[None]
    ) -> None:
        async with send, provider.subscriber.subscribe(topic, group, start) as channel:
            task_status.started()
            async for msg in channel:
                send.send_nowait(msg)

    with single_error():
        async with trio.open_nursery() as nursery:
            async with send:
                for _ in range(members):
                    await nursery.start(member, send.clone())
            yield receive
            nursery.cancel_scope.cancel()


# -- the checks ------------------------------------------------------------------------


async def check_publish_subscribe(
    make_provider: MakeProvider, features: Features, scale: float = 1.0
) -> None:
    """TestPublishSubscribe: 100 messages arrive with their ids, payloads and
    metadata intact; once the provider closes, the subscription's channel ends."""
    topic = f"{_root()}.publish_subscribe"
    count = 100
    messages = [
        Message(str(i).encode(), {"test": str(uuid4())}, uuid=str(uuid4())) for i in range(count)
    ]
    release = trio.Event()

    async def hold(
        provider: Provider, *, task_status: trio.TaskStatus[trio.abc.ReceiveChannel[Message]]
    ) -> None:
        async with provider.subscriber.subscribe(topic) as channel:
            task_status.started(channel)
            await release.wait()

    with _deadline(DEFAULT_TIMEOUT * 4), single_error():
        async with trio.open_nursery() as nursery:
            async with make_provider() as provider:
                channel: trio.abc.ReceiveChannel[Message] = await nursery.start(hold, provider)
                await _publish_with_retry(provider, topic, *messages)
                got = await _bulk_read(
                    channel,
                    count,
                    DEFAULT_TIMEOUT * 3,
                    deduplicate=not features.exactly_once_delivery,
                )
            # The provider is closed, the subscription still open in its task.
            try:
                with trio.fail_after(DEFAULT_TIMEOUT):
                    extra = await channel.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                pass
            except trio.TooSlowError:
                raise AssertionError(
                    "the subscription's channel did not end when the provider closed"
                ) from None
            else:
                raise AssertionError(
                    f"the subscription's channel gave {extra!r} after the provider closed "
                    "instead of ending"
                )
            finally:
                release.set()
    _expect_complete(got, count, "publish_subscribe")
    _assert_all_received(
        messages,
        got.messages,
        what="publish_subscribe",
        allow_duplicates=not features.exactly_once_delivery,
    )
    by_id = {m.uuid: m for m in messages}
    for msg in got.messages:
        sent = by_id[msg.uuid]
        assert msg.payload == sent.payload, (
            f"message {msg.uuid}: payload {msg.payload!r}, published {sent.payload!r}"
        )
        assert msg.metadata.get("test") == sent.metadata["test"], (
            f"message {msg.uuid}: metadata {msg.metadata!r}, published {sent.metadata!r}"
        )


async def _read_while_publishing(
    provider: Provider,
    topic: str,
    features: Features,
    *,
    count: int,
    publishers: int,
    members: int,
    what: str,
) -> None:
    """Subscribe, publish ``count`` messages from ``publishers`` tasks while reading."""
    deduplicate = not features.exactly_once_delivery
    group = _group() if features.consumer_groups and members > 1 else None
    if group is None:
        members = 1
    with _deadline(DEFAULT_TIMEOUT * 4):
        async with _merged(provider, topic, members, group) as channel:
            published: list[Message] = []
            async with trio.open_nursery() as nursery:

                async def publish() -> None:
                    published.extend(await _publish_parallel(provider, topic, count, publishers))

                nursery.start_soon(publish)
                got = await _bulk_read(channel, count, DEFAULT_TIMEOUT * 3, deduplicate=deduplicate)
    _expect_complete(got, count, what)
    _assert_all_received(published, got.messages, what=what, allow_duplicates=deduplicate)


async def check_concurrent_subscribe(
    make_provider: MakeProvider, features: Features, scale: float = 1.0
) -> None:
    """TestConcurrentSubscribe: 5000 messages published by 50 tasks all arrive
    at 50 competing members of one group (one subscription without groups)."""
    async with make_provider() as provider:
        await _read_while_publishing(
            provider,
            f"{_root()}.concurrent_subscribe",
            features,
            count=_count(5000, scale),
            publishers=50,
            members=_count(50, scale, 2),
            what="concurrent_subscribe",
        )


async def check_concurrent_subscribe_multiple_topics(
    make_provider: MakeProvider, features: Features, scale: float = 1.0
) -> None:
    """TestConcurrentSubscribeMultipleTopics: 20 tasks each subscribe to their own
    topic (all with one first token) and publish the same 100 messages (copies:
    same uuids) to it; every topic receives all of them."""
    count = _count(100, scale, 10)
    topics = _count(20, scale, 4)
    messages = _simple(count)
    deduplicate = not features.exactly_once_delivery
    results: dict[str, list[Message]] = {}
    incomplete: list[str] = []
    async with make_provider() as provider:

        async def one(topic: str) -> None:
            async with provider.subscriber.subscribe(topic) as channel:
                await _publish_with_retry(provider, topic, *(m.copy() for m in messages))
                # Watermill waits 5 x defaultTimeout; here the topics are read at once.
                got = await _bulk_read(channel, count, DEFAULT_TIMEOUT, deduplicate=deduplicate)
            if not got.complete:
                incomplete.append(f"{topic} ({len(got.seen)} of {count})")
            results[topic] = got.messages

        with _deadline(DEFAULT_TIMEOUT * 6), single_error():
            async with trio.open_nursery() as nursery:
                root = _root()
                for i in range(topics):
                    nursery.start_soon(one, f"{root}.multiple_topics_{i}")
    assert not incomplete, f"not all messages received on: {', '.join(incomplete)}"
    assert len(results) == topics, f"{len(results)} of {topics} topics reported"
    for topic, got_messages in results.items():
        _assert_all_received(
            messages, got_messages, what=f"topic {topic}", allow_duplicates=deduplicate
        )


async def check_resend_on_error(
    make_provider: MakeProvider, features: Features, scale: float = 1.0
) -> None:
    """TestResendOnError: the first two messages received are nacked; they
    come again, and every message arrives."""
    topic = f"{_root()}.resend_on_error"
    count = 100
    nacks = 2
    with _deadline(DEFAULT_TIMEOUT * 3):
        async with (
            make_provider() as provider,
            provider.subscriber.subscribe(topic) as channel,
        ):
            published = await _publish_simple(provider, topic, count)
            nacked: list[Message] = []
            with trio.move_on_after(DEFAULT_TIMEOUT):
                for _ in range(nacks):
                    msg = await channel.receive()
                    assert await msg.nack(), f"nack() of {msg.uuid} returned False"
                    nacked.append(msg)
            assert len(nacked) == nacks, f"received {len(nacked)} message(s) to nack, not {nacks}"
            got = await _bulk_read(
                channel, count, DEFAULT_TIMEOUT, deduplicate=not features.exactly_once_delivery
            )
    _expect_complete(got, count, "resend_on_error")
    _assert_all_received(
        published,
        got.messages,
        what="resend_on_error",
        allow_duplicates=not features.exactly_once_delivery,
    )
    again = {m.uuid: m for m in got.messages}
    for msg in nacked:
        delivery = again[msg.uuid].delivery
        assert delivery is not None, f"redelivered message {msg.uuid} has delivery=None"
        assert delivery.redelivered, (
            f"nacked message {msg.uuid} came again with redelivered=False: {delivery!r}"
        )
        assert delivery.attempt >= 2, (
            f"nacked message {msg.uuid} came again with attempt {delivery.attempt} (not >= 2)"
        )


async def check_no_ack(make_provider: MakeProvider, features: Features, scale: float = 1.0) -> None:
    """TestNoAck: while a message is not acked, the next one is not handed out;
    acking it releases the next (needs guaranteed_order)."""
    _require("no_ack", features)
    topic = f"{_root()}.no_ack"
    with _deadline(DEFAULT_TIMEOUT * 2):
        async with (
            make_provider() as provider,
            provider.subscriber.subscribe(topic) as channel,
        ):
            for _ in range(2):
                await _publish_with_retry(provider, topic, Message(b"x"))
            with trio.move_on_after(DEFAULT_TIMEOUT) as waited:
                first = await channel.receive()
            assert not waited.cancelled_caught, "the first message never arrived"
            with trio.move_on_after(0.1):
                early = await channel.receive()
                raise AssertionError(
                    f"received {early.uuid} although {first.uuid} was not acked: the "
                    "channel should wait for the ack"
                )
            await first.ack()
            with trio.move_on_after(5.0) as waited:
                second = await channel.receive()
            assert not waited.cancelled_caught, "the next message did not come after ack()"
            await second.ack()
            if features.exactly_once_delivery:
                with trio.move_on_after(0.05):
                    again = await channel.receive()
                    raise AssertionError(f"{again.uuid} was delivered again after its ack")


async def check_continue_after_subscribe_close(
    make_provider: MakeProvider, features: Features, scale: float = 1.0
) -> None:
    """TestContinueAfterSubscribeClose: subscribers of one group read a batch each
    and close; across them no message is lost (duplicates allowed)."""
    _require("continue_after_subscribe_close", features)
    topic = f"{_root()}.continue_after_close"
    total = _count(5000, scale, 50)
    batches = 5
    batch = total // batches
    group = _group()
    received: dict[str, Message] = {}
    with _deadline(DEFAULT_TIMEOUT * 8):
        async with make_provider() as shared:
            async with shared.subscriber.subscribe(topic, group):
                pass  # Watermill's SubscribeInitialize: the group exists from now on
            published = await _publish_parallel(shared, topic, total, 50)
            for _ in range(batches * 4):
                async with (
                    _instance(make_provider, features, shared) as provider,
                    provider.subscriber.subscribe(topic, group) as channel,
                ):
                    want = min(batch, total - len(received))
                    got = await _bulk_read(channel, want, DEFAULT_TIMEOUT, deduplicate=True)
                for msg in got.messages:
                    received[msg.uuid] = msg
                if len(received) >= total or not got.complete:
                    break  # all read, or the group had nothing more for a whole timeout
            if len(received) < total:
                # We care that nothing is lost, not about duplicates: read what is left.
                async with shared.subscriber.subscribe(topic, group) as channel:
                    rest = _Collected()
                    rest.seen.update(received)
                    await _bulk_read(
                        channel, total, DEFAULT_TIMEOUT, deduplicate=True, collected=rest
                    )
                    for msg in rest.messages:
                        received[msg.uuid] = msg
    _assert_all_received(
        published,
        list(received.values()),
        what="continue_after_subscribe_close",
        allow_duplicates=True,
    )


async def check_concurrent_close(
    make_provider: MakeProvider, features: Features, scale: float = 1.0
) -> None:
    """TestConcurrentClose: ten subscriptions (and providers, where they share
    state) open and close at once; the topic works afterwards."""
    topic = f"{_root()}.concurrent_close"
    count = 50
    group = _group() if features.consumer_groups else None
    deduplicate = not features.exactly_once_delivery
    with _deadline(DEFAULT_TIMEOUT * 5):
        async with make_provider() as shared:

            async def open_and_close() -> None:
                async with (
                    _instance(make_provider, features, shared) as provider,
                    provider.subscriber.subscribe(topic, group),
                ):
                    await trio.lowlevel.checkpoint()

            with single_error():
                async with trio.open_nursery() as nursery:
                    for _ in range(10):
                        nursery.start_soon(open_and_close)
            if group is not None:
                # The group kept what was published while it had no member.
                async with _instance(make_provider, features, shared) as publisher:
                    published = await _publish_simple(publisher, topic, count)
                async with (
                    _instance(make_provider, features, shared) as provider,
                    provider.subscriber.subscribe(topic, group) as channel,
                ):
                    got = await _bulk_read(
                        channel, count, DEFAULT_TIMEOUT * 3, deduplicate=deduplicate
                    )
            else:
                async with shared.subscriber.subscribe(topic) as channel:
                    published = await _publish_simple(shared, topic, count)
                    got = await _bulk_read(
                        channel, count, DEFAULT_TIMEOUT * 3, deduplicate=deduplicate
                    )
    _expect_complete(got, count, "concurrent_close")
    _assert_all_received(
        published, got.messages, what="concurrent_close", allow_duplicates=deduplicate
    )


async def check_continue_after_errors(
    make_provider: MakeProvider, features: Features, scale: float = 1.0
) -> None:
    """TestContinueAfterErrors: subscribers that only nack (3 x 100 nacks of 50
    messages) lose nothing: a subscriber afterwards receives every message."""
    topic = f"{_root()}.continue_after_errors"
    count = 50
    subscribers = 3
    nacks = _count(100, scale, 10)
    deduplicate = not features.exactly_once_delivery

    async def nack_many(channel: trio.abc.ReceiveChannel[Message]) -> None:
        for j in range(nacks):
            with trio.move_on_after(DEFAULT_TIMEOUT) as waited:
                msg = await channel.receive()
            if waited.cancelled_caught:
                raise AssertionError(
                    f"no message left after {j} nacks: redelivery after nack does not work"
                )
            await msg.nack()

    with _deadline(DEFAULT_TIMEOUT * (subscribers + 7)):
        async with make_provider() as shared:
            if features.consumer_groups:
                group = _group()
                async with shared.subscriber.subscribe(topic, group):
                    pass  # the group exists from now on
                published = await _publish_simple(shared, topic, count)
                for _ in range(subscribers):
                    async with (
                        _instance(make_provider, features, shared) as provider,
                        provider.subscriber.subscribe(topic, group) as channel,
                    ):
                        await nack_many(channel)
                async with shared.subscriber.subscribe(topic, group) as channel:
                    got = await _bulk_read(
                        channel, count, DEFAULT_TIMEOUT * 6, deduplicate=deduplicate
                    )
            else:
                async with shared.subscriber.subscribe(topic) as channel:
                    published = await _publish_simple(shared, topic, count)
                    for _ in range(subscribers):
                        await nack_many(channel)
                    got = await _bulk_read(
                        channel, count, DEFAULT_TIMEOUT * 6, deduplicate=deduplicate
                    )
    _expect_complete(got, count, "continue_after_errors")
    _assert_all_received(
        published, got.messages, what="continue_after_errors", allow_duplicates=deduplicate
    )


async def check_publish_subscribe_in_order(
    make_provider: MakeProvider, features: Features, scale: float = 1.0
) -> None:
    """TestPublishSubscribeInOrder: 1000 messages of 16 kinds; each kind arrives
    in the order it was published (10 competing members where order is
    guaranteed across them, else one subscription)."""
    _require("publish_subscribe_in_order", features)
    topic = f"{_root()}.in_order"
    count = _count(1000, scale, 100)
    members = (
        10
        if features.guaranteed_order
        and not features.guaranteed_order_with_single_subscriber
        and features.consumer_groups
        else 1
    )
    published = [Message(str(i % 16).encode()) for i in range(count)]
    expected: dict[bytes, list[str]] = {}
    for msg in published:
        expected.setdefault(msg.payload, []).append(msg.uuid)
    with _deadline(DEFAULT_TIMEOUT * 2):
        async with (
            make_provider() as provider,
            _merged(provider, topic, members, _group() if members > 1 else None) as channel,
        ):
            await _publish_with_retry(provider, topic, *published)
            got = await _bulk_read(
                channel, count, DEFAULT_TIMEOUT, deduplicate=not features.exactly_once_delivery
            )
    _expect_complete(got, count, "publish_subscribe_in_order")
    by_kind: dict[bytes, list[str]] = {}
    for msg in got.messages:
        by_kind.setdefault(msg.payload, []).append(msg.uuid)
    assert len(by_kind) == len(expected), f"{len(by_kind)} kinds received, {len(expected)} sent"
    assert len(got.messages) == count, f"{len(got.messages)} messages received, {count} sent"
    for kind, ids in expected.items():
        assert by_kind[kind] == ids, (
            f"messages of kind {kind!r} arrived out of order: first difference at index "
            f"{next(i for i, (a, b) in enumerate(zip(ids, by_kind[kind], strict=False)) if a != b)}"
        )


async def check_publisher_close(
    make_provider: MakeProvider, features: Features, scale: float = 1.0
) -> None:
    """TestPublisherClose: 10000 messages published by 20 tasks are not lost,
    also when the publishing provider closes right after (where providers
    share state)."""
    topic = f"{_root()}.publisher_close"
    count = _count(10000, scale)
    deduplicate = not features.exactly_once_delivery
    if not features.persistent:
        async with make_provider() as provider:
            await _read_while_publishing(
                provider,
                topic,
                features,
                count=count,
                publishers=20,
                members=1,
                what="publisher_close",
            )
        return
    group = _group()
    with _deadline(DEFAULT_TIMEOUT * 5):
        async with make_provider() as provider:
            async with provider.subscriber.subscribe(topic, group):
                pass  # the group exists from now on
            async with make_provider() as publisher:
                published = await _publish_parallel(publisher, topic, count, 20)
            # The publishing provider is closed.
            async with provider.subscriber.subscribe(topic, group) as channel:
                got = await _bulk_read(channel, count, DEFAULT_TIMEOUT * 3, deduplicate=deduplicate)
    _expect_complete(got, count, "publisher_close")
    _assert_all_received(
        published, got.messages, what="publisher_close", allow_duplicates=deduplicate
    )


async def check_topic(make_provider: MakeProvider, features: Features, scale: float = 1.0) -> None:
    """TestTopic: a message published to one topic arrives on that topic only."""
    root = _root()
    topic1, topic2 = f"{root}.topic_1", f"{root}.topic_2"
    msg1, msg2 = Message(b"x"), Message(b"x")
    deduplicate = not features.exactly_once_delivery
    with _deadline(DEFAULT_TIMEOUT * 3):
        async with (
            make_provider() as provider,
            provider.subscriber.subscribe(topic1) as channel1,
            provider.subscriber.subscribe(topic2) as channel2,
        ):
            await _publish_with_retry(provider, topic1, msg1)
            await _publish_with_retry(provider, topic2, msg2)
            got1 = await _bulk_read(channel1, 1, DEFAULT_TIMEOUT, deduplicate=deduplicate)
            got2 = await _bulk_read(channel2, 1, DEFAULT_TIMEOUT, deduplicate=deduplicate)
            assert got1.complete, f"no message received on {topic1}"
            assert got2.complete, f"no message received on {topic2}"
            assert got1.messages[0].uuid == msg1.uuid, (
                f"{topic1} received {got1.messages[0].uuid}, published {msg1.uuid}"
            )
            assert got2.messages[0].uuid == msg2.uuid, (
                f"{topic2} received {got2.messages[0].uuid}, published {msg2.uuid}"
            )
            for channel, topic in ((channel1, topic1), (channel2, topic2)):
                with trio.move_on_after(0.1):
                    extra = await channel.receive()
                    if extra.uuid in (msg1.uuid, msg2.uuid) and not deduplicate:
                        raise AssertionError(f"{topic} received {extra.uuid} twice")
                    if extra.uuid not in (msg1.uuid, msg2.uuid):
                        raise AssertionError(f"{topic} received a stranger: {extra!r}")
                    if extra.uuid != (msg1 if topic == topic1 else msg2).uuid:
                        raise AssertionError(f"{topic} received the other topic's message")


async def check_message_ctx(
    make_provider: MakeProvider, features: Features, scale: float = 1.0
) -> None:
    """TestMessageCtx: a received message knows how it was delivered and is
    settled by ack(); one still unacked when the provider closes is nacked."""
    topic = f"{_root()}.message_ctx"
    msg1, msg2 = Message(b"x"), Message(b"x")
    release = trio.Event()

    async def hold(
        provider: Provider, *, task_status: trio.TaskStatus[trio.abc.ReceiveChannel[Message]]
    ) -> None:
        async with provider.subscriber.subscribe(topic) as channel:
            task_status.started(channel)
            await release.wait()

    with _deadline(DEFAULT_TIMEOUT * 4), single_error():
        async with trio.open_nursery() as nursery:
            try:
                async with make_provider() as provider:
                    channel: trio.abc.ReceiveChannel[Message] = await nursery.start(hold, provider)
                    await _publish_with_retry(provider, topic, msg1)
                    await _publish_with_retry(provider, topic, msg2)
                    with trio.move_on_after(DEFAULT_TIMEOUT) as waited:
                        first = await channel.receive()
                    assert not waited.cancelled_caught, "no message received"
                    delivery = first.delivery
                    assert delivery is not None, "a received message has delivery=None"
                    assert delivery.topic == topic, (
                        f"delivery.topic is {delivery.topic!r}, published to {topic!r}"
                    )
                    assert delivery.attempt == 1, f"first delivery of {first.uuid}: {delivery!r}"
                    assert not delivery.redelivered, f"first delivery of {first.uuid}: {delivery!r}"
                    assert not first.acked, "a message just received is already acked"
                    assert not first.nacked, "a message just received is already nacked"
                    assert await first.ack(), "ack() of a fresh message returned False"
                    assert first.acked, "ack() did not settle the message"
                    assert not first.nacked, "an acked message says it is nacked"
                    assert await first.ack(), "a second ack() returned False"
                    assert not await first.nack(), "nack() after ack() returned True"
                    with trio.move_on_after(DEFAULT_TIMEOUT) as waited:
                        second = await channel.receive()
                    assert not waited.cancelled_caught, "the second message was not received"
                # The provider closed while `second` was neither acked nor nacked.
                assert second.nacked, (
                    "a message delivered and not acked was not nacked when the provider closed"
                )
                assert not await second.ack(), (
                    "ack() after the provider closed (and nacked it) returned True"
                )
            finally:
                release.set()


async def check_subscribe_ctx(
    make_provider: MakeProvider, features: Features, scale: float = 1.0
) -> None:
    """TestSubscribeCtx: cancelling a subscribing task ends its subscription
    (what it held unacked is nacked); a new subscription gets every message."""
    _require("subscribe_ctx", features)
    topic = f"{_root()}.subscribe_ctx"
    count = 20
    group = _group() if features.consumer_groups else None
    start: StartPosition = None if group is not None else "all"
    held: list[Message] = []
    got_some = trio.Event()
    ended: list[trio.abc.ReceiveChannel[Message]] = []

    async def subscribe_until_cancelled(provider: Provider) -> None:
        async with provider.subscriber.subscribe(topic, group, start) as channel:
            ended.append(channel)
            async for msg in channel:
                held.append(msg)  # never acked
                if len(held) >= 5:
                    got_some.set()

    with _deadline(DEFAULT_TIMEOUT * 4):
        async with make_provider() as provider:
            if group is not None:
                async with provider.subscriber.subscribe(topic, group):
                    pass  # the group exists from now on
            published = await _publish_simple(provider, topic, count)
            with single_error():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(subscribe_until_cancelled, provider)
                    with trio.move_on_after(DEFAULT_TIMEOUT):
                        await got_some.wait()
                    nursery.cancel_scope.cancel()
            assert held, "the first subscription received nothing"
            assert ended, "the first subscription did not open"
            with trio.move_on_after(DEFAULT_TIMEOUT):
                try:
                    late = await ended[0].receive()
                except (trio.ClosedResourceError, trio.EndOfChannel):
                    pass
                else:
                    raise AssertionError(f"the cancelled subscription still delivered {late.uuid}")
            unsettled = [m.uuid for m in held if not (m.acked or m.nacked)]
            assert not unsettled, (
                f"{len(unsettled)} message(s) held by the cancelled subscription were not "
                f"nacked: {_short(unsettled)}"
            )
            async with provider.subscriber.subscribe(topic, group, start) as channel:
                got = await _bulk_read(
                    channel, count, DEFAULT_TIMEOUT, deduplicate=not features.exactly_once_delivery
                )
    _expect_complete(got, count, "subscribe_ctx")
    _assert_all_received(
        published,
        got.messages,
        what="subscribe_ctx",
        allow_duplicates=not features.exactly_once_delivery,
    )


async def check_new_subscriber_receives_old_messages(
    make_provider: MakeProvider, features: Features, scale: float = 1.0
) -> None:
    """TestNewSubscriberReceivesOldMessages: a subscriber added later (start="all")
    receives every message published before it, even ones others consumed."""
    _require("new_subscriber_receives_old_messages", features)
    topic = f"{_root()}.old_messages"
    published: list[Message] = []
    with _deadline(DEFAULT_TIMEOUT * 8):
        async with make_provider() as shared:

            async def publish_one() -> None:
                msg = Message(b"x")
                await _publish_with_retry(shared, topic, msg)
                published.append(msg)

            subscribers: list[tuple[trio.abc.ReceiveChannel[Message], list[int]]] = []

            async def add_subscriber(*, task_status: trio.TaskStatus[None]) -> None:
                async with (
                    _instance(make_provider, features, shared) as provider,
                    provider.subscriber.subscribe(topic, start="all") as channel,
                ):
                    subscribers.append((channel, [0]))
                    task_status.started()
                    await trio.sleep_forever()

            async def consume() -> None:
                for i, (channel, consumed) in enumerate(subscribers):
                    want = len(published) - consumed[0]
                    got = await _bulk_read(
                        channel,
                        want,
                        DEFAULT_TIMEOUT,
                        deduplicate=not features.exactly_once_delivery,
                    )
                    assert got.complete, (
                        f"subscriber {i} did not receive all messages ({len(got.seen)}/{want})"
                    )
                    consumed[0] += want

            await publish_one()
            with single_error():
                async with trio.open_nursery() as nursery:
                    for _ in range(3):
                        await publish_one()
                        await nursery.start(add_subscriber)
                        await consume()
                    nursery.cancel_scope.cancel()


async def check_reconnect(
    make_provider: MakeProvider, features: Features, scale: float = 1.0
) -> None:
    """TestReconnect: the server restarts twice (at 1/3 and 1/2 of the way) while
    100 tasks publish 10000 messages (retrying what fails); all arrive."""
    _require("reconnect", features)
    restart = features.restart_server
    assert restart is not None
    topic = f"{_root()}.reconnect"
    count = _count(10000, scale, 30)
    publishers = 100
    restart_at = {count // 3, count // 2}
    group = _group() if features.consumer_groups else None
    deduplicate = not features.exactly_once_delivery
    published: list[Message] = []
    restarts = trio.Lock()
    failures: list[str] = []

    async def restart_server() -> None:
        async with restarts:
            await restart()

    async def publisher(receive: trio.MemoryReceiveChannel[Message]) -> None:
        async with receive:
            async for msg in receive:
                while True:
                    try:
                        await _publish_with_retry(provider, topic, msg)
                        break
                    except PikoEventsError as exc:
                        failures.append(str(exc))
                        await trio.sleep(0.5)  # Watermill's back-off before trying again
                published.append(msg)

    with _deadline(DEFAULT_TIMEOUT * 8):
        async with (
            make_provider() as provider,
            provider.subscriber.subscribe(topic, group) as channel,
            trio.open_nursery() as nursery,
        ):
            send, receive = trio.open_memory_channel[Message](0)
            for _ in range(publishers):
                nursery.start_soon(publisher, receive.clone())
            await receive.aclose()

            async def dispatch() -> None:
                async with send:
                    for i in range(count):
                        await send.send(Message(b"x"))
                        if i in restart_at:
                            nursery.start_soon(restart_server)

            nursery.start_soon(dispatch)
            got = await _bulk_read(channel, count, DEFAULT_TIMEOUT * 4, deduplicate=deduplicate)
    if not got.complete:
        raise AssertionError(
            f"reconnect: not all messages received (has {len(got.seen)} of {count}; "
            f"{len(failures)} publish attempts failed)"
        )
    # A message whose ack could not be confirmed (AckError) may legitimately come again.
    confirmed = [m for m in got.messages if m.uuid not in got.unconfirmed]
    unconfirmed = {m.uuid: m for m in got.messages if m.uuid in got.unconfirmed}
    _assert_all_received(
        published,
        confirmed + list(unconfirmed.values()),
        what="reconnect",
        allow_duplicates=deduplicate,
    )


async def check_consumer_groups(
    make_provider: MakeProvider, features: Features, scale: float = 1.0
) -> None:
    """TestConsumerGroups: two groups, created before the messages are
    published, each receive every one of them."""
    _require("consumer_groups", features)
    topic = f"{_root()}.consumer_groups"
    count = 50
    deduplicate = not features.exactly_once_delivery
    with _deadline(DEFAULT_TIMEOUT * 4):
        async with make_provider() as shared:
            groups = [_group(), _group()]
            for group in groups:  # Watermill's generateConsumerGroup
                async with (
                    _instance(make_provider, features, shared) as provider,
                    provider.subscriber.subscribe(topic, group),
                ):
                    pass
            published = await _publish_simple(shared, topic, count)
            for group in groups:
                async with (
                    _instance(make_provider, features, shared) as provider,
                    provider.subscriber.subscribe(topic, group) as channel,
                ):
                    got = await _bulk_read(channel, count, DEFAULT_TIMEOUT, deduplicate=deduplicate)
                _expect_complete(got, count, f"consumer group {group}")
                _assert_all_received(
                    published,
                    got.messages,
                    what=f"consumer group {group}",
                    allow_duplicates=deduplicate,
                )


#: Every check, in Watermill's order, as ``(name, async function)``; each
#: function takes ``(make_provider, features, scale)``.
CHECKS: Final[tuple[tuple[str, CheckFn], ...]] = (
    ("publish_subscribe", check_publish_subscribe),
    ("concurrent_subscribe", check_concurrent_subscribe),
    ("concurrent_subscribe_multiple_topics", check_concurrent_subscribe_multiple_topics),
    ("resend_on_error", check_resend_on_error),
    ("no_ack", check_no_ack),
    ("continue_after_subscribe_close", check_continue_after_subscribe_close),
    ("concurrent_close", check_concurrent_close),
    ("continue_after_errors", check_continue_after_errors),
    ("publish_subscribe_in_order", check_publish_subscribe_in_order),
    ("publisher_close", check_publisher_close),
    ("topic", check_topic),
    ("message_ctx", check_message_ctx),
    ("subscribe_ctx", check_subscribe_ctx),
    ("new_subscriber_receives_old_messages", check_new_subscriber_receives_old_messages),
    ("reconnect", check_reconnect),
    ("consumer_groups", check_consumer_groups),
)


async def check_provider(
    make_provider: MakeProvider, features: Features, *, scale: float = 1.0
) -> dict[str, str]:
    """Run every check of :data:`CHECKS` in turn against fresh providers.

    Args:
        make_provider: a zero-argument callable returning an async context
            manager that yields a fresh, running provider.
        features: what the provider promises (see :class:`Features`).
        scale: multiplies the larger message counts (Watermill's full
            counts at 1.0; e.g. 0.2 for a quick run).

    Returns:
        Each check's name mapped to ``"passed"`` or ``"skipped: <reason>"``.

    Raises:
        AssertionError: the first check that failed (its name in a note).
    """
    if not scale > 0:
        raise ConfigError(f"scale must be > 0, not {scale!r}")
    results: dict[str, str] = {}
    for name, check in CHECKS:
        try:
            await check(make_provider, features, scale)
        except CheckSkipped as skip:
            results[name] = f"skipped: {skip}"
        except Exception as exc:
            exc.add_note(f"in conformance check {name!r}")
            raise
        else:
            results[name] = "passed"
    return results
