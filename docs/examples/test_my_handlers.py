"""What a user's test suite looks like with ``piko_trio_events.testing``.

Run it like any test file (pytest-trio with ``trio_mode = true``):
``pytest docs/examples/test_my_handlers.py``. The fixtures ``memory_provider``,
``nats_server`` and ``nats_provider`` come from the plugin that installing
piko_trio_events registers; nothing to import.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from piko_trio_events import MemoryConfig, Message, Provider, open_memory_provider
from piko_trio_events.testing import (
    ChaosSchedule,
    Features,
    chaos_schedules,
    check_provider,
    messages,
    open_chaos_provider,
    topics,
)

if TYPE_CHECKING:
    from piko_trio_events.memory import MemoryProvider
    from piko_trio_events.nats import NatsProvider


class Ledger:
    """Your handler and its store: credits each payment exactly once."""

    def __init__(self) -> None:
        self.balance = 0
        self.applied: set[str] = set()

    async def apply_payment(self, msg: Message) -> None:
        if msg.uuid in self.applied:  # idempotent: a redelivery changes nothing
            return
        await trio.sleep(0.001)  # the database round trip
        self.balance += int(msg.payload)  # credit and record together
        self.applied.add(msg.uuid)


# -- 1. the plugin's fixtures ---------------------------------------------------------


async def run_ledger(provider: Provider, *amounts: int) -> Ledger:
    """Publish the payments and return the ledger once all are credited."""
    ledger = Ledger()
    all_credited = trio.Event()

    async def apply_payment(msg: Message) -> None:
        await ledger.apply_payment(msg)
        if ledger.balance == sum(amounts):
            all_credited.set()

    provider.router.add_handler("ledger", "payments.made", apply_payment)
    payments = [Message(str(amount).encode()) for amount in amounts]
    await provider.publisher.publish("payments.made", *payments)
    with trio.fail_after(10):
        await all_credited.wait()
    return ledger


async def test_handler_on_memory(memory_provider: MemoryProvider) -> None:
    ledger = await run_ledger(memory_provider, 10, 5)
    assert len(ledger.applied) == 2


async def test_handler_on_nats(nats_provider: NatsProvider) -> None:
    ledger = await run_ledger(nats_provider, 10)
    assert ledger.balance == 10


# -- 2. hypothesis strategies: inputs every provider accepts -----------------------------


@settings(max_examples=20, deadline=None)
@given(topic=topics(), batch=st.lists(messages(), min_size=1, max_size=5))
async def test_round_trip(topic: str, batch: list[Message]) -> None:
    async with (
        open_memory_provider(MemoryConfig()) as provider,
        provider.subscriber.subscribe(topic) as received,
    ):
        await provider.publisher.publish(topic, *batch)
        for sent in batch:
            msg = await received.receive()
            assert msg == sent  # uuid, payload and metadata intact
            await msg.ack()


# -- 3. the chaos provider: is the handler idempotent under at-least-once? ---------------


@settings(max_examples=50, deadline=None)
@given(schedule=chaos_schedules(), amounts=st.lists(st.integers(1, 100), max_size=4))
def test_payments_apply_once(schedule: ChaosSchedule, amounts: list[int]) -> None:
    async def main() -> None:
        ledger = Ledger()
        async with open_chaos_provider(schedule) as provider:
            provider.router.add_handler("ledger", "payments.made", ledger.apply_payment)
            for i, amount in enumerate(amounts):
                msg = Message(str(amount).encode(), uuid=f"pay-{i}")
                await provider.publisher.publish("payments.made", msg)
            await provider.wait_idle()
        assert ledger.balance == sum(amounts)

    # Mock time: the chaos provider's holds and the handler's sleeps cost nothing.
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- 4. the conformance suite: does a provider (yours, or a configured one) conform? ----


@asynccontextmanager
async def my_provider() -> AsyncIterator[Provider]:
    # Any provider, configured as in production; a fresh one per call.
    async with open_memory_provider(MemoryConfig()) as provider:
        yield provider


async def test_memory_provider_conforms() -> None:
    features = Features(
        consumer_groups=True,
        exactly_once_delivery=True,
        guaranteed_order_with_single_subscriber=True,
    )
    results = await check_provider(my_provider, features, scale=0.05)
    assert all(r == "passed" or r.startswith("skipped") for r in results.values())
