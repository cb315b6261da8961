"""Core NATS vs JetStream: what survives a nack, and a group with no member.

Runs against an embedded nats-server: ``python docs/examples/guarantees.py``.
"""

from __future__ import annotations

import trio

from piko_trio_events import JetStreamConfig, Message, NatsConfig, open_nats_provider
from piko_trio_events.testing import open_nats_server


async def nack_then_ack(config: NatsConfig) -> list[int]:
    """A nacked message comes back with ``delivery.attempt`` one higher."""
    attempts: list[int] = []
    async with (
        open_nats_provider(config) as provider,
        provider.subscriber.subscribe("billing.due", group="billing") as messages,
    ):
        await provider.publisher.publish("billing.due", Message(b"invoice-1"))
        with trio.fail_after(10):
            async for msg in messages:
                assert msg.delivery is not None
                attempts.append(msg.delivery.attempt)
                if msg.delivery.attempt == 1:
                    await msg.nack()  # ask for redelivery
                else:
                    await msg.ack()
                    break
    return attempts


async def group_without_member(config: NatsConfig) -> list[bytes]:
    """Publish while the group has no member, then join it."""
    async with open_nats_provider(config) as provider:
        # Create the group, then leave it.
        async with provider.subscriber.subscribe("audit.log", group="auditors"):
            pass
        await provider.publisher.publish("audit.log", Message(b"while nobody listened"))
        await provider.publisher.flush()
        received: list[bytes] = []
        async with provider.subscriber.subscribe("audit.log", group="auditors") as messages:
            with trio.move_on_after(1.0):
                async for msg in messages:
                    received.append(msg.payload)
                    await msg.ack()
    return received


async def main() -> None:
    async with open_nats_server() as server:
        jetstream = NatsConfig(url=server.url)  # the default: JetStream, at-least-once
        core = NatsConfig(url=server.url, jetstream=JetStreamConfig(disabled=True))

        print("JetStream attempts:", await nack_then_ack(jetstream))
        print("core NATS attempts:", await nack_then_ack(core))  # re-queued in-process

        kept = await group_without_member(jetstream)
        lost = await group_without_member(core)
        print("JetStream group kept:", kept)
        print("core NATS group kept:", lost)
        assert kept == [b"while nobody listened"]
        assert lost == []  # core NATS is at-most-once


if __name__ == "__main__":
    trio.run(main)
