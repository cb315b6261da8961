"""Core NATS (jetstream.disabled=True) against a real nats-server."""

from __future__ import annotations

import re

import pytest
import trio

from piko_trio_events import (
    ConfigError,
    InvalidTopicError,
    JetStreamConfig,
    Message,
    NatsConfig,
    ProviderClosedError,
)
from piko_trio_events.nats import NatsProvider, open_nats_provider
from piko_trio_events.testing._server import NatsServer

from .helpers import Tally


def core(server: NatsServer, **kwargs: object) -> NatsConfig:
    return NatsConfig(url=server.url, jetstream=JetStreamConfig(disabled=True), **kwargs)  # type: ignore[arg-type]


async def receive_n(channel: trio.abc.ReceiveChannel[Message], n: int) -> list[Message]:
    out = []
    for _ in range(n):
        msg = await channel.receive()
        out.append(msg)
        assert await msg.ack()
    return out


async def test_round_trip_keeps_uuid_payload_and_metadata(nats_server: NatsServer) -> None:
    with trio.fail_after(10):
        async with open_nats_provider(core(nats_server)) as provider:
            assert isinstance(provider, NatsProvider)
            assert provider.running
            assert provider.connected
            async with provider.subscriber.subscribe("orders.created") as channel:
                sent = [Message(b"one", {"k": "v", "trace-id": "42"}), Message(b"two")]
                await provider.publisher.publish("orders.created", *sent)
                got = await receive_n(channel, 2)
            assert got == sent
            assert got[0].metadata == {"k": "v", "trace-id": "42"}
            assert got[1].metadata == {}
            delivery = got[0].delivery
            assert delivery is not None
            assert delivery.topic == "orders.created"
            assert delivery.attempt == 1
            assert not delivery.redelivered
            assert delivery.sequence is None
        assert not provider.running


async def test_wildcards_and_private_subscriptions_each_get_everything(
    nats_server: NatsServer,
) -> None:
    with trio.fail_after(10):
        async with open_nats_provider(core(nats_server)) as provider:
            sub = provider.subscriber
            async with (
                sub.subscribe("orders.*") as star,
                sub.subscribe("orders.>") as rest,
                sub.subscribe("orders.created") as exact,
            ):
                await provider.publisher.publish("orders.created", Message(b"a"))
                await provider.publisher.publish("orders.x.y", Message(b"b"))
                assert [m.payload for m in await receive_n(star, 1)] == [b"a"]
                assert [m.payload for m in await receive_n(rest, 2)] == [b"a", b"b"]
                assert [m.payload for m in await receive_n(exact, 1)] == [b"a"]
                with pytest.raises(trio.WouldBlock):
                    star.receive_nowait()  # type: ignore[attr-defined]


async def test_queue_groups_compete_and_different_groups_each_get_all(
    nats_server: NatsServer,
) -> None:
    n = 200
    with trio.fail_after(15):
        async with open_nats_provider(core(nats_server)) as provider:
            sub = provider.subscriber
            tally = Tally()
            counts = tally.counts
            seen_a: list[bytes] = []
            async with (
                sub.subscribe("jobs", group="a") as a1,
                sub.subscribe("jobs", group="a") as a2,
                sub.subscribe("jobs", group="b") as b,
            ):
                await provider.publisher.publish("jobs", *[Message(b"%d" % i) for i in range(n)])
                await provider.publisher.flush()

                async def drain(name: str, channel: trio.abc.ReceiveChannel[Message]) -> None:
                    while True:
                        msg = await channel.receive()
                        tally.add(name)
                        if name != "b":
                            seen_a.append(msg.payload)
                        await msg.ack()

                async with trio.open_nursery() as nursery:
                    for name, channel in (("a1", a1), ("a2", a2), ("b", b)):
                        nursery.start_soon(drain, name, channel)
                    await tally.reached(lambda c: c["b"] >= n and c["a1"] + c["a2"] >= n)
                    await trio.sleep(0.1)  # nothing more may arrive
                    nursery.cancel_scope.cancel()
            assert counts["b"] == n
            assert counts["a1"] + counts["a2"] == n
            assert sorted(seen_a) == sorted(b"%d" % i for i in range(n))
            assert counts["a1"] > 0
            assert counts["a2"] > 0


async def test_nack_requeues_in_process_with_growing_attempt(nats_server: NatsServer) -> None:
    with trio.fail_after(10):
        async with (
            open_nats_provider(core(nats_server)) as provider,
            provider.subscriber.subscribe("retry.me", group="g") as channel,
        ):
            await provider.publisher.publish("retry.me", Message(b"x", uuid="u-1"))
            first = await channel.receive()
            assert await first.nack()
            assert not await first.ack()  # already nacked
            second = await channel.receive()
            assert second.uuid == "u-1"
            assert second.delivery is not None
            assert second.delivery.attempt == 2
            assert second.delivery.redelivered
            start = trio.current_time()
            assert await second.nack(delay=0.3)
            third = await channel.receive()
            assert trio.current_time() - start >= 0.3
            assert third.delivery is not None
            assert third.delivery.attempt == 3
            assert await third.ack()
            assert not await third.nack()


async def test_bad_input_is_rejected_at_once(nats_server: NatsServer) -> None:
    with trio.fail_after(10):
        async with open_nats_provider(core(nats_server)) as provider:
            with pytest.raises(InvalidTopicError, match=re.escape("orders.*")):
                await provider.publisher.publish("orders.*", Message(b"x"))
            with pytest.raises(InvalidTopicError):
                await provider.publisher.publish("a..b", Message(b"x"))
            with pytest.raises(InvalidTopicError):
                provider.subscriber.subscribe("a b")
            with pytest.raises(ValueError, match="Nats-"):
                await provider.publisher.publish("t", Message(b"x", {"Nats-Msg-Id": "1"}))
            with pytest.raises(ValueError, match="header name"):
                await provider.publisher.publish("t", Message(b"x", {"caf\u00e9": "1"}))
            with pytest.raises(ConfigError, match="replay"):
                provider.subscriber.subscribe("t", start="all")
            with pytest.raises(TypeError):
                await provider.publisher.publish("t", b"raw bytes")  # type: ignore[arg-type]
        with pytest.raises(ProviderClosedError):
            await provider.publisher.publish("t", Message(b"late"))
        with pytest.raises(ProviderClosedError):
            provider.subscriber.subscribe("t")


async def test_publish_is_a_cancellation_point(nats_server: NatsServer) -> None:
    with trio.fail_after(10):
        async with open_nats_provider(core(nats_server)) as provider:
            with trio.CancelScope() as scope:
                scope.cancel()
                await provider.publisher.publish("t", Message(b"x"))
            assert scope.cancelled_caught


async def test_subscription_sees_everything_published_after_subscribe_call(
    nats_server: NatsServer,
) -> None:
    """The SUB goes out before any later PUB: nothing published after subscribe() is lost."""
    with trio.fail_after(10):
        async with open_nats_provider(core(nats_server)) as provider:
            context = provider.subscriber.subscribe("early")
            await provider.publisher.publish("early", *[Message(b"%d" % i) for i in range(50)])
            async with context as channel:
                got = await receive_n(channel, 50)
            assert [m.payload for m in got] == [b"%d" % i for i in range(50)]


async def test_many_messages_keep_order_and_backpressure(nats_server: NatsServer) -> None:
    n = 20_000
    with trio.fail_after(30):
        async with open_nats_provider(core(nats_server)) as provider:
            async with provider.subscriber.subscribe("bulk") as channel:

                async def produce() -> None:
                    for i in range(n):
                        await provider.publisher.publish("bulk", Message(b"%d" % i))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(produce)
                    for i in range(n):
                        msg = await channel.receive()
                        assert msg.payload == b"%d" % i
                        await msg.ack()
            assert provider.dropped == 0


async def test_a_bad_message_in_a_call_publishes_none_of_it(nats_server: NatsServer) -> None:
    with trio.fail_after(10):
        async with (
            open_nats_provider(core(nats_server)) as provider,
            provider.subscriber.subscribe("all.or.nothing") as channel,
        ):
            too_big = b"x" * (provider._publisher._max_payload + 1)
            with pytest.raises(ValueError, match="exceeds"):
                await provider.publisher.publish("all.or.nothing", Message(b"ok"), Message(too_big))
            await provider.publisher.publish("all.or.nothing", Message(b"next"))
            assert (await channel.receive()).payload == b"next"
