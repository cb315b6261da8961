"""Recovery after ``kill -9``: a handler at concurrency 1 is not stalled by acks
the restarted server never answers.

A server killed with ``kill -9`` and restarted from its store may come back
with the consumer's state older than what it delivered. Messages the provider
had received and not yet handed out (in its buffer, or still queued in
nats-py) are delivered again by the server, and their old acks are never
answered: each would wait the 5 s ack timeout, one after another at
concurrency 1. The provider nacks them instead, and fails at once the
confirmed acks in flight across the reconnect (``AckError``: the message may
be delivered again).
"""

from __future__ import annotations

import time

import trio

from piko_trio_events import JetStreamConfig, Message, NatsConfig
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing._server import NatsServer


async def test_recovery_at_concurrency_1_after_kill_9_does_not_wait_for_lost_acks(
    nats_server: NatsServer,
) -> None:
    n = 400
    config = NatsConfig(
        url=nats_server.url,
        reconnect_wait=0.1,
        close_timeout=2.0,
        jetstream=JetStreamConfig(track_message_id=True),
    )
    handled: dict[bytes, int] = {}
    changed = trio.Event()
    with trio.fail_after(30):
        async with open_nats_provider(config) as provider:

            @provider.router.handler("recover.x", group="recover", concurrency=1)
            async def handle(msg: Message) -> None:
                nonlocal changed
                handled[msg.payload] = handled.get(msg.payload, 0) + 1
                changed.set()
                changed = trio.Event()

            await provider.publisher.publish("recover.x", *[Message(b"%d" % i) for i in range(n)])
            while len(handled) < n // 4:
                await changed.wait()
            # Mid-stream: the handler is busy and the next deliveries wait on this
            # side of the connection. Kill before the server writes its state.
            await nats_server.kill()
            before = len(handled)
            await nats_server.start()
            restarted = time.perf_counter()
            while len(handled) < n:
                await changed.wait()
            elapsed = time.perf_counter() - restarted
            redelivered = sum(1 for count in handled.values() if count > 1)
            print(
                f"kill -9 at {before}/{n} handled; the other {n - before} handled at "
                f"concurrency 1 within {elapsed:.2f}s of the restart ({redelivered} twice)"
            )
            # Before the fix the acks of those that were queued here each waited
            # the 5 s ack timeout, one after another: less than one means none did.
            assert elapsed < 4.0, elapsed


async def test_messages_buffered_here_across_a_kill_9_are_all_handled(
    nats_server: NatsServer,
) -> None:
    """The handler is held on its first message, so the rest wait in the
    subscription's buffer when the server is killed: none of them may be lost
    (they are nacked, not acked, and the server delivers them again)."""
    n = 50
    config = NatsConfig(
        url=nats_server.url,
        reconnect_wait=0.1,
        ack_wait_timeout=1.0,
        close_timeout=2.0,
        jetstream=JetStreamConfig(track_message_id=True),
    )
    handled: set[bytes] = set()
    changed = trio.Event()
    entered = trio.Event()
    release = trio.Event()
    with trio.fail_after(30):
        async with open_nats_provider(config) as provider:
            stored = [Message(b"%d" % i) for i in range(n)]
            await provider.publisher.publish("held.x", *stored)

            @provider.router.handler("held.x", group="held", concurrency=1)
            async def handle(msg: Message) -> None:
                nonlocal changed
                entered.set()
                await release.wait()
                handled.add(msg.payload)
                changed.set()
                changed = trio.Event()

            await entered.wait()  # one in the handler, the others buffered here
            await nats_server.kill()
            await nats_server.start()
            release.set()
            while len(handled) < n:
                await changed.wait()
    assert handled == {m.payload for m in stored}
