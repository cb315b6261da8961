"""The memory provider's OpenTelemetry metrics, read with the SDK's in-memory reader."""

from __future__ import annotations

import trio

from piko_trio_events import Message, open_memory_provider
from tests.otel import sdk_reader, snapshot

P = "events.adapters.memory."


async def test_message_and_lifecycle_counters() -> None:
    reader = sdk_reader()
    before = snapshot(reader, "piko_trio_events.memory")
    async with open_memory_provider() as provider:
        async with provider.subscriber.subscribe("metrics.*", group="g") as channel:
            await provider.publisher.publish("metrics.a", Message(b"1"), Message(b"2"))
            first = await channel.receive()
            await first.nack()
            for _ in range(2):
                await (await channel.receive()).ack()
        await trio.lowlevel.checkpoint()
    after = snapshot(reader, "piko_trio_events.memory")

    def delta(name: str, topic: str | None) -> float:
        return after.get((P + name, topic), 0.0) - before.get((P + name, topic), 0.0)

    assert delta("messages_published", "metrics.a") == 2
    assert delta("messages_received", "metrics.*") == 3
    assert delta("messages_acked", "metrics.*") == 2
    assert delta("messages_nacked", "metrics.*") == 1
    assert delta("messages_redelivered", "metrics.*") == 1
    assert delta("provider_start_count", None) == 1
    assert delta("provider_close_count", None) == 1
    assert (P + "provider_start_duration", None) in after
    assert (P + "provider_close_duration", None) in after
