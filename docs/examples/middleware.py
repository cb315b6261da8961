"""Router and middleware: retry, timeout, poison queue and de-duplication.

A flaky handler fails twice and then succeeds under ``retry``; a handler that
always fails ends up on a poison topic instead of being redelivered forever.
Runs on the memory provider: ``python docs/examples/middleware.py``.
"""

from __future__ import annotations

import trio

from piko_trio_events import MemoryConfig, Message, open_memory_provider
from piko_trio_events.middleware import (
    REASON_POISONED_KEY,
    correlation_id,
    deduplicator,
    poison_queue,
    retry,
    timeout,
)


async def main() -> None:
    async with open_memory_provider(MemoryConfig()) as provider:
        router = provider.router
        # Router middleware first, before any handler; the first added runs outermost.
        router.add_middleware(
            correlation_id(),
            poison_queue(provider.publisher, "orders.poisoned"),
            retry(max_retries=2, initial_interval=0.01),
            timeout(5.0),
        )

        calls = 0
        succeeded = trio.Event()

        @router.handler("orders.created", middleware=[deduplicator(window=60.0)])
        async def flaky(msg: Message) -> None:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise ConnectionError("the database blinked")  # retried by `retry`
            succeeded.set()

        @router.handler("orders.cancelled")
        async def broken(msg: Message) -> None:
            raise ValueError("cannot parse the order")  # retried, then poisoned

        async with provider.subscriber.subscribe("orders.poisoned") as poisoned:
            await provider.publisher.publish("orders.created", Message(b"1"))
            await provider.publisher.publish("orders.cancelled", Message(b"2"))
            with trio.fail_after(10):
                bad = await poisoned.receive()
                await bad.ack()
                await succeeded.wait()
        print("flaky handler calls:", calls)
        print("poisoned:", bad.payload, bad.metadata[REASON_POISONED_KEY])
        assert calls == 3
        assert bad.metadata[REASON_POISONED_KEY] == "cannot parse the order"


if __name__ == "__main__":
    trio.run(main)
