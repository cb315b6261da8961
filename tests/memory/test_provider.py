"""The in-memory provider: delivery, groups, redelivery, persistence, backpressure, drain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing

from piko_trio_events import (
    ConfigError,
    InvalidTopicError,
    MemoryConfig,
    Message,
    Provider,
    ProviderClosedError,
    PublishError,
    open_memory_provider,
)


def msgs(n: int, prefix: str = "m") -> list[Message]:
    return [Message(f"{prefix}{i}".encode(), {"i": str(i)}) for i in range(n)]


async def test_provider_satisfies_the_port() -> None:
    async with open_memory_provider() as provider:
        assert isinstance(provider, Provider)
        assert provider.running
    assert not provider.running


async def test_private_subscriptions_each_get_every_message() -> None:
    async with open_memory_provider() as provider:
        sent = msgs(5)
        async with (
            provider.subscriber.subscribe("orders.created") as a,
            provider.subscriber.subscribe("orders.created") as b,
        ):
            await provider.publisher.publish("orders.created", *sent)
            for channel in (a, b):
                got = [await channel.receive() for _ in sent]
                assert got == sent
                assert [m.delivery.topic for m in got if m.delivery] == ["orders.created"] * 5
                for m in got:
                    assert await m.ack()


async def test_received_metadata_is_a_private_copy() -> None:
    async with open_memory_provider() as provider:
        original = Message(b"x", {"k": "v"})
        async with (
            provider.subscriber.subscribe("t") as a,
            provider.subscriber.subscribe("t") as b,
        ):
            await provider.publisher.publish("t", original)
            original.metadata["k"] = "changed after publish"
            first, second = await a.receive(), await b.receive()
            first.metadata["k"] = "mutated"
            assert second.metadata == {"k": "v"}


async def test_named_group_members_compete_and_groups_fan_out() -> None:
    async with open_memory_provider() as provider:
        sub = provider.subscriber
        async with (
            sub.subscribe("t", group="workers") as w1,
            sub.subscribe("t", group="workers") as w2,
            sub.subscribe("t", group="audit") as audit,
        ):
            sent = msgs(20)
            await provider.publisher.publish("t", *sent)
            seen: list[Message] = []
            for i, _ in enumerate(sent):
                m = await (w1 if i % 2 else w2).receive()
                seen.append(m)
                await m.ack()
            assert sorted(m.uuid for m in seen) == sorted(m.uuid for m in sent)
            with pytest.raises(trio.WouldBlock):
                w1.receive_nowait()
            with pytest.raises(trio.WouldBlock):
                w2.receive_nowait()
            audited = [audit.receive_nowait() for _ in sent]
            assert audited == sent


async def test_wildcards_on_subscribe() -> None:
    async with (
        open_memory_provider() as provider,
        provider.subscriber.subscribe("orders.*") as star,
        provider.subscriber.subscribe("orders.>") as rest,
    ):
        await provider.publisher.publish("orders.created", Message(b"1"))
        await provider.publisher.publish("orders.eu.created", Message(b"2"))
        await provider.publisher.publish("payments.created", Message(b"3"))
        assert star.receive_nowait().payload == b"1"
        with pytest.raises(trio.WouldBlock):
            star.receive_nowait()
        assert [rest.receive_nowait().payload for _ in range(2)] == [b"1", b"2"]
        with pytest.raises(trio.WouldBlock):
            rest.receive_nowait()


async def test_bad_topics_fail_at_once() -> None:
    async with open_memory_provider() as provider:
        with pytest.raises(InvalidTopicError, match=r"orders\.\*"):
            await provider.publisher.publish("orders.*", Message(b""))
        with pytest.raises(InvalidTopicError, match="empty token"):
            provider.subscriber.subscribe("orders..x")
        with pytest.raises(ValueError, match="Nats-"):
            await provider.publisher.publish("t", Message(b"", {"Nats-Msg-Id": "1"}))
        with pytest.raises(TypeError, match="Message"):
            await provider.publisher.publish("t", b"raw")  # type: ignore[arg-type]


async def test_nack_redelivers_with_a_growing_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_memory_provider() as provider,
        provider.subscriber.subscribe("t", group="g") as channel,
    ):
        await provider.publisher.publish("t", Message(b"x", uuid="u1"))
        attempts = []
        for _ in range(3):
            m = await channel.receive()
            assert m.delivery is not None
            attempts.append((m.delivery.attempt, m.delivery.redelivered))
            assert await m.nack()
        m = await channel.receive()
        assert m.delivery is not None
        attempts.append((m.delivery.attempt, m.delivery.redelivered))
        await m.ack()
        assert attempts == [(1, False), (2, True), (3, True), (4, True)]
        assert m.uuid == "u1"


async def test_nack_with_delay_waits(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_provider() as provider, provider.subscriber.subscribe("t") as channel:
        await provider.publisher.publish("t", Message(b"x"))
        m = await channel.receive()
        t0 = trio.current_time()
        await m.nack(delay=5.0)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            channel.receive_nowait()
        again = await channel.receive()
        assert trio.current_time() - t0 == pytest.approx(5.0)
        assert again.delivery is not None
        assert again.delivery.attempt == 2


async def test_closing_a_member_redelivers_its_unacked_messages_to_the_group() -> None:
    async with open_memory_provider() as provider:
        sub = provider.subscriber
        async with sub.subscribe("t", group="g") as survivor:
            async with sub.subscribe("t", group="g") as leaver:
                await provider.publisher.publish("t", Message(b"a", uuid="a"))
                held = leaver.receive_nowait()
            assert held.nacked
            assert await held.ack() is False
            again = survivor.receive_nowait()
            assert again.uuid == "a"
            assert again.delivery is not None
            assert again.delivery.attempt == 2


async def test_group_keeps_messages_while_it_has_no_member() -> None:
    async with open_memory_provider() as provider:
        async with provider.subscriber.subscribe("t", group="g") as first:
            await provider.publisher.publish("t", Message(b"0"))
            held = await first.receive()  # delivered, not acked: goes back on close
        assert held.nacked
        await provider.publisher.publish("t", *msgs(3))
        async with provider.subscriber.subscribe("t", group="g") as second:
            got = [second.receive_nowait() for _ in range(4)]
            assert sorted(m.payload for m in got) == [b"0", b"m0", b"m1", b"m2"]
            assert {m.payload: m.delivery.attempt for m in got if m.delivery}[b"0"] == 2


async def test_private_subscription_vanishes_on_close() -> None:
    async with open_memory_provider() as provider, provider.subscriber.subscribe("t") as channel:
        await provider.publisher.publish("t", Message(b"while open"))
        assert channel.receive_nowait().payload == b"while open"
        await provider.publisher.publish("t", Message(b"after close"))
        async with provider.subscriber.subscribe("t") as fresh:
            with pytest.raises(trio.WouldBlock):
                fresh.receive_nowait()
    assert provider.undelivered == []


async def test_group_start_conflict_is_a_config_error() -> None:
    async with (
        open_memory_provider() as provider,
        provider.subscriber.subscribe("t", group="g", start="new"),
    ):
        with pytest.raises(ConfigError, match="start"):
            provider.subscriber.subscribe("t", group="g", start="all")
        with pytest.raises(ConfigError, match="start"):
            provider.subscriber.subscribe("t", group="g2", start="yesterday")  # type: ignore[arg-type]


async def test_persistent_replays_history_to_new_subscriptions() -> None:
    config = MemoryConfig(persistent=True, history_size=3)
    async with open_memory_provider(config) as provider:
        await provider.publisher.publish("t", *msgs(5))
        await provider.publisher.publish("other", Message(b"x"))
        async with provider.subscriber.subscribe("t") as channel:
            got = [channel.receive_nowait() for _ in range(3)]
            assert [m.payload for m in got] == [b"m2", b"m3", b"m4"]  # bounded history
            assert [m.delivery.sequence for m in got if m.delivery] == [3, 4, 5]
            with pytest.raises(trio.WouldBlock):
                channel.receive_nowait()
        async with provider.subscriber.subscribe("t", start="new") as new_only:
            with pytest.raises(trio.WouldBlock):
                new_only.receive_nowait()
        async with provider.subscriber.subscribe("t", start=5) as from_seq:
            assert from_seq.receive_nowait().payload == b"m4"
            with pytest.raises(trio.WouldBlock):
                from_seq.receive_nowait()
        future = datetime.now(UTC) + timedelta(hours=1)
        async with provider.subscriber.subscribe("t", start=future) as from_time:
            with pytest.raises(trio.WouldBlock):
                from_time.receive_nowait()


async def test_non_persistent_has_no_history() -> None:
    async with open_memory_provider() as provider:
        await provider.publisher.publish("t", *msgs(2))
        async with provider.subscriber.subscribe("t") as channel:
            with pytest.raises(trio.WouldBlock):
                channel.receive_nowait()


async def test_block_publish_until_ack() -> None:
    config = MemoryConfig(block_publish_until_ack=True)
    async with open_memory_provider(config) as provider:
        returned = trio.Event()
        async with (
            provider.subscriber.subscribe("t", group="a") as a,
            provider.subscriber.subscribe("t", group="b") as b,
            trio.open_nursery() as nursery,
        ):

            async def publish() -> None:
                await provider.publisher.publish("t", Message(b"x"))
                returned.set()

            nursery.start_soon(publish)
            first = await a.receive()
            await first.ack()
            second = await b.receive()
            await trio.testing.wait_all_tasks_blocked()
            assert not returned.is_set()
            await second.nack()
            await trio.testing.wait_all_tasks_blocked()
            assert not returned.is_set()
            await (await b.receive()).ack()
            await returned.wait()


async def test_block_publish_until_ack_fails_clearly_when_the_provider_closes() -> None:
    config = MemoryConfig(block_publish_until_ack=True)
    errors: list[PublishError] = []

    async def publish(provider: Provider) -> None:
        try:
            await provider.publisher.publish("t", Message(b"x"), Message(b"y"))
        except PublishError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery, open_memory_provider(config) as provider:
        provider.subscriber.subscribe("t", group="nobody-home")
        nursery.start_soon(publish, provider)
        await trio.testing.wait_all_tasks_blocked()
        assert errors == []
    assert len(errors) == 1
    assert errors[0].unconfirmed == 2
    assert "2 message(s)" in str(errors[0])


async def test_slow_consumer_applies_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    config = MemoryConfig(output_buffer=4)
    async with (
        open_memory_provider(config) as provider,
        provider.subscriber.subscribe("t", group="slow") as channel,
    ):
        published = 0

        async def producer() -> None:
            nonlocal published
            for m in msgs(10):
                await provider.publisher.publish("t", m)
                published += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            await trio.testing.wait_all_tasks_blocked()
            assert published == 4  # the buffer is full; the publisher waits
            assert len(provider._broker.groups[("t", "slow")].queue) == 4
            for i in range(10):
                m = await channel.receive()
                assert m.payload == f"m{i}".encode()
                await m.ack()
        assert published == 10


async def test_publish_after_close_raises() -> None:
    async with open_memory_provider() as provider:
        pass
    with pytest.raises(ProviderClosedError):
        await provider.publisher.publish("t", Message(b"late"))
    with pytest.raises(ProviderClosedError):
        provider.subscriber.subscribe("t")


async def test_open_subscriptions_end_when_the_provider_closes() -> None:
    ended = trio.Event()

    async def consume(provider: Provider) -> None:
        async with provider.subscriber.subscribe("t") as channel:
            async for _ in channel:
                pass  # pragma: no cover - nothing is published
        ended.set()

    async with trio.open_nursery() as nursery, open_memory_provider() as provider:
        nursery.start_soon(consume, provider)
        await trio.testing.wait_all_tasks_blocked()
        assert not ended.is_set()
    assert ended.is_set()


async def test_buffered_messages_are_reported_at_close() -> None:
    async with open_memory_provider() as provider:
        provider.subscriber.subscribe("t", group="never-read")
        await provider.publisher.publish("t", *msgs(3))
        assert provider.undelivered == []
    assert [u.message.payload for u in provider.undelivered] == [b"m0", b"m1", b"m2"]
    assert {(u.pattern, u.group, u.attempts) for u in provider.undelivered} == {
        ("t", "never-read", 0)
    }


async def test_delayed_nack_pending_at_close_is_reported() -> None:
    async with (
        open_memory_provider() as provider,
        provider.subscriber.subscribe("t", group="g") as channel,
    ):
        await provider.publisher.publish("t", Message(b"x"))
        m = await channel.receive()
        await m.nack(delay=3600)
    assert [(u.message.payload, u.attempts) for u in provider.undelivered] == [(b"x", 1)]


async def test_an_error_in_the_body_propagates_unwrapped() -> None:
    with pytest.raises(KeyError, match="boom"):
        async with open_memory_provider():
            raise KeyError("boom")
