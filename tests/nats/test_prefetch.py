"""A JetStream subscription holds at most ``prefetch`` messages unsettled, so a
slow replica of a group leaves the rest of the backlog to the other replicas."""

from __future__ import annotations

import pytest
import trio

from piko_trio_events import ConfigError, Message, NatsConfig
from piko_trio_events._router import _prefetch_for
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.nats._jetstream_subscription import _JetStreamSubscription
from piko_trio_events.testing._server import NatsServer

from .helpers import Tally

BACKLOG = 40


async def test_a_blocked_replica_holds_only_its_prefetch(nats_server: NatsServer) -> None:
    prefetch = 5
    topic = "prefetch.raw"
    config = NatsConfig(url=nats_server.url)
    async with open_nats_provider(config) as a, open_nats_provider(config) as b:
        await a.publisher.publish(topic, *(Message(b"%d" % i) for i in range(BACKLOG)))
        async with (
            a.subscriber.subscribe(topic, group="workers", prefetch=prefetch) as sub_a,
            b.subscriber.subscribe(topic, group="workers", prefetch=prefetch) as sub_b,
        ):
            assert isinstance(sub_a, _JetStreamSubscription)
            assert isinstance(sub_b, _JetStreamSubscription)
            with trio.fail_after(10):
                held = await sub_a.receive()  # replica A is stuck on this one
                got_b = 0
                # B drains what A did not take; A never holds more than its prefetch.
                while got_b < BACKLOG - prefetch:
                    msg = await sub_b.receive()
                    got_b += 1
                    assert len(sub_a._unsettled) <= prefetch
                    assert len(sub_b._unsettled) <= prefetch
                    await msg.ack()
                await held.ack()
                got_a = 1
                while got_a + got_b < BACKLOG:
                    msg = await sub_a.receive()
                    got_a += 1
                    await msg.ack()
            assert got_a + got_b == BACKLOG


async def test_router_prefetch_follows_concurrency(nats_server: NatsServer) -> None:
    topic = "prefetch.jobs"
    config = NatsConfig(url=nats_server.url, subscribers_count=1)
    prefetch = _prefetch_for(config.subscribers_count)
    assert prefetch < 256  # the default: A would take the whole backlog
    backlog = prefetch + 8  # more than A may hold: B must get the rest
    handled = Tally()
    release = trio.Event()
    a_started = trio.Event()

    async def slow(msg: Message) -> None:
        handled.add("a")
        a_started.set()
        await release.wait()

    async def fast(msg: Message) -> None:
        handled.add("b")

    async with open_nats_provider(config) as a, open_nats_provider(config) as b:
        await a.publisher.publish(topic, *(Message(b"%d" % i) for i in range(backlog)))
        a.router.add_handler("jobs", topic, slow, group="workers")
        with trio.fail_after(10):
            await a_started.wait()
        # A is blocked on its first message; with a prefetch of 256 it would
        # hold the whole backlog and B would get nothing.
        b.router.add_handler("jobs", topic, fast, group="workers")
        with trio.fail_after(10):
            await handled.reached(lambda c: c["b"] >= backlog - prefetch)
        assert handled.counts["a"] == 1
        release.set()
        with trio.fail_after(10):
            await handled.reached(lambda c: c["a"] + c["b"] >= backlog)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "8", True])
async def test_bad_prefetch_is_rejected(nats_server: NatsServer, bad: object) -> None:
    async with open_nats_provider(NatsConfig(url=nats_server.url)) as provider:
        with pytest.raises(ConfigError, match="prefetch"):
            provider.subscriber.subscribe("prefetch.bad", prefetch=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("concurrency", [1, 4, 16, 200])
def test_router_prefetch_covers_every_worker(concurrency: int) -> None:
    assert _prefetch_for(concurrency) >= concurrency
