"""The middleware under a real router, on the memory provider."""

from __future__ import annotations

from typing import Any

import trio

from piko_trio_events import Message, open_memory_provider
from piko_trio_events.middleware import (
    POISONED_HANDLER_KEY,
    POISONED_TOPIC_KEY,
    REASON_POISONED_KEY,
    correlation_id,
    deduplicator,
    poison_queue,
    retry,
    set_correlation_id,
    timeout,
)


async def test_retry_then_poison_acks_the_bad_message_and_keeps_the_good(
    autojump_clock: Any,
) -> None:
    attempts: dict[bytes, int] = {}
    with trio.fail_after(60):
        async with open_memory_provider() as provider:
            router = provider.router
            router.add_middleware(
                poison_queue(provider.publisher, "orders.poison"),
                retry(max_retries=2, initial_interval=1.0, randomization_factor=0.0),
            )

            @router.handler("orders.created", publish_topic="orders.audited", name="audit")
            async def audit(msg: Message) -> Message:
                attempts[msg.payload] = attempts.get(msg.payload, 0) + 1
                if msg.payload == b"bad":
                    raise ValueError("cannot audit\nthis order")
                return Message(b"audited " + msg.payload)

            async with (
                provider.subscriber.subscribe("orders.poison") as poison,
                provider.subscriber.subscribe("orders.audited") as audited,
            ):
                bad = Message(b"bad", {"k": "v"})
                await provider.publisher.publish("orders.created", bad, Message(b"good"))
                poisoned = await poison.receive()
                out = await audited.receive()
                await trio.sleep(10.0)  # a redelivery would show up in the meantime
                assert attempts == {b"bad": 3, b"good": 1}
                assert poisoned.uuid == bad.uuid
                assert poisoned.payload == b"bad"
                assert poisoned.metadata == {
                    "k": "v",
                    REASON_POISONED_KEY: "cannot audit this order",
                    POISONED_TOPIC_KEY: "orders.created",
                    POISONED_HANDLER_KEY: "audit",
                }
                assert out.payload == b"audited good"
                await poisoned.ack()
                await out.ack()


async def test_poison_after_max_attempts_uses_redelivery(autojump_clock: Any) -> None:
    seen_attempts: list[int] = []
    with trio.fail_after(60):
        async with open_memory_provider() as provider:

            @provider.router.handler(
                "jobs.run",
                name="runner",
                middleware=[poison_queue(provider.publisher, "jobs.poison", max_attempts=3)],
            )
            async def runner(msg: Message) -> None:
                assert msg.delivery is not None
                seen_attempts.append(msg.delivery.attempt)
                raise RuntimeError("always fails")

            async with provider.subscriber.subscribe("jobs.poison") as poison:
                await provider.publisher.publish("jobs.run", Message(b"job"))
                poisoned = await poison.receive()
                await trio.sleep(10.0)
                assert seen_attempts == [1, 2, 3]
                assert poisoned.metadata[POISONED_HANDLER_KEY] == "runner"
                await poisoned.ack()


async def test_a_timed_out_message_is_nacked_and_redelivered(autojump_clock: Any) -> None:
    seen_attempts: list[int] = []
    with trio.fail_after(60):
        async with open_memory_provider() as provider:

            @provider.router.handler(
                "slow.work", publish_topic="slow.done", middleware=[timeout(1.0)]
            )
            async def work(msg: Message) -> Message:
                assert msg.delivery is not None
                seen_attempts.append(msg.delivery.attempt)
                if msg.delivery.attempt == 1:
                    await trio.sleep(5.0)
                return Message(b"done")

            async with provider.subscriber.subscribe("slow.done") as done:
                await provider.publisher.publish("slow.work", Message(b"w"))
                out = await done.receive()
                assert out.payload == b"done"
                assert seen_attempts == [1, 2]
                assert trio.current_time() == 1.0
                await out.ack()


async def test_duplicates_are_acked_without_output(autojump_clock: Any) -> None:
    processed: list[bytes] = []
    with trio.fail_after(60):
        async with open_memory_provider() as provider:
            provider.router.add_middleware(correlation_id(), deduplicator(window=60.0))

            @provider.router.handler("in", publish_topic="out")
            async def handler(msg: Message) -> Message:
                processed.append(msg.payload)
                return Message(b"out " + msg.payload)

            async with provider.subscriber.subscribe("out") as outputs:
                first = Message(b"a", uuid="same-uuid")
                set_correlation_id(first, "req-1")
                await provider.publisher.publish("in", first)
                await provider.publisher.publish("in", Message(b"a", uuid="same-uuid"))
                await provider.publisher.publish("in", Message(b"b"))
                got = [await outputs.receive() for _ in range(2)]
                await trio.sleep(10.0)
                assert processed == [b"a", b"b"]
                assert [m.payload for m in got] == [b"out a", b"out b"]
                assert got[0].metadata.get("correlation_id") == "req-1"
                with trio.move_on_after(10.0) as nothing_more:
                    extra = await outputs.receive()
                    raise AssertionError(f"unexpected output {extra!r}")
                assert nothing_more.cancelled_caught
                for m in got:
                    await m.ack()
