"""Production stream provisioning: streams are made by a deploy step, not the app.

Step 1 (deploy time, plain asyncio and nats-py, or the ``nats`` CLI): create
the stream with the retention, replicas and storage you want. Step 2 (the
app): ``auto_provision=False``, so the app finds that stream and never
creates one; a topic no stream holds fails loudly with StreamNotFoundError.

Runs against an embedded nats-server: ``python docs/examples/provisioning.py``.
"""

from __future__ import annotations

import asyncio

import nats
import trio
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from piko_trio_events import (
    JetStreamConfig,
    Message,
    NatsConfig,
    StreamNotFoundError,
    open_nats_provider,
)
from piko_trio_events.testing import open_nats_server

ORDERS = StreamConfig(
    name="ORDERS",
    subjects=["orders", "orders.>"],  # one root: its own subject and everything below
    retention=RetentionPolicy.LIMITS,  # or INTEREST / WORK_QUEUE, see the guide
    storage=StorageType.FILE,  # survives a server restart (MEMORY does not)
    num_replicas=1,  # 3 on a 3-node cluster
    max_age=7 * 24 * 3600.0,  # seconds: keep a week
    max_bytes=1 << 30,
    discard=DiscardPolicy.OLD,
    duplicate_window=120.0,  # seconds: de-duplication by Nats-Msg-Id
)


async def provision(url: str) -> None:
    """The deploy step (asyncio, outside the trio app)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(ORDERS)
    finally:
        await nc.close()


async def app(url: str) -> None:
    config = NatsConfig(
        url=url,
        jetstream=JetStreamConfig(auto_provision=False, track_message_id=True),
    )
    async with open_nats_provider(config) as provider:
        async with provider.subscriber.subscribe("orders.created", group="billing") as messages:
            await provider.publisher.publish("orders.created", Message(b"1", uuid="order-1"))
            with trio.fail_after(10):
                msg = await messages.receive()
                await msg.ack()
            print("received from the provisioned stream:", msg.payload)
        try:
            await provider.publisher.publish("payments.made", Message(b"2"))
        except StreamNotFoundError as exc:
            print("as expected:", exc)
        else:
            raise AssertionError("no stream holds payments.made")


async def main() -> None:
    async with open_nats_server() as server:
        await trio.to_thread.run_sync(asyncio.run, provision(server.url))
        await app(server.url)


if __name__ == "__main__":
    trio.run(main)
