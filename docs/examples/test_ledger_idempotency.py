"""Worked example: prove that a ledger handler credits each payment once.

A payment service credits an account for every ``payments.made`` message.
Delivery is at-least-once, so the handler must be idempotent. Three versions:

- ``naive_handler`` credits on every delivery: a duplicate, a lost ack or a
  crash before the ack credits the payment twice.
- ``two_step_handler`` checks whether the payment was processed, credits it
  in one transaction and records it in another. Duplicates and lost acks
  never break it (the second delivery sees the record); only a crash
  between the credit and the record (after the side effect, before the
  ack) does, which a test that only duplicates messages never finds.
- ``fixed_handler`` credits and records in one transaction: it passes.

Run it with ``pytest docs/examples/test_ledger_idempotency.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from piko_trio_events import Message
from piko_trio_events.testing import ChaosSchedule, Fault, chaos_schedules, open_chaos_provider

TOPIC = "payments.made"


# -- the application: a toy database and three handlers ---------------------------------


@dataclass
class Ledger:
    """A toy database: a transaction commits atomically, after one round trip."""

    balance: int = 0
    processed: set[str] = field(default_factory=set)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Ledger]:
        tx = Ledger(self.balance, set(self.processed))
        yield tx
        await trio.sleep(0.001)  # the commit's round trip: a crash here commits nothing
        self.balance, self.processed = tx.balance, tx.processed


Handler = Callable[[Message], Awaitable[None]]


def naive_handler(ledger: Ledger) -> Handler:
    async def credit(msg: Message) -> None:
        async with ledger.transaction() as tx:
            tx.balance += int(msg.payload)

    return credit


def two_step_handler(ledger: Ledger) -> Handler:
    async def credit(msg: Message) -> None:
        async with ledger.transaction() as tx:
            if msg.uuid in tx.processed:
                return
        async with ledger.transaction() as tx:
            tx.balance += int(msg.payload)
        # A crash here: the payment is credited, not recorded, not acked.
        async with ledger.transaction() as tx:
            tx.processed.add(msg.uuid)

    return credit


def fixed_handler(ledger: Ledger) -> Handler:
    async def credit(msg: Message) -> None:
        async with ledger.transaction() as tx:
            if msg.uuid in tx.processed:
                return
            tx.balance += int(msg.payload)
            tx.processed.add(msg.uuid)  # in the same transaction as the credit

    return credit


# -- the property: whatever the faults, the balance is the sum of the payments ------------


async def credit_payments(
    make_handler: Callable[[Ledger], Handler], schedule: ChaosSchedule, amounts: list[int]
) -> None:
    ledger = Ledger()
    async with open_chaos_provider(schedule) as provider:
        provider.router.add_handler("ledger", TOPIC, make_handler(ledger))
        for i, amount in enumerate(amounts):
            # A payment's uuid is its identity: a redelivery carries the same one.
            await provider.publisher.publish(TOPIC, Message(str(amount).encode(), uuid=f"pay-{i}"))
        await provider.wait_idle()  # every delivery, redelivery and copy settled
    assert ledger.balance == sum(amounts), f"balance {ledger.balance}, expected {sum(amounts)}"


def run(
    make_handler: Callable[[Ledger], Handler], schedule: ChaosSchedule, amounts: list[int]
) -> None:
    # Mock time: the chaos provider's holds and the database's round trips cost nothing.
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(credit_payments, make_handler, schedule, amounts, clock=clock)


amounts = st.lists(st.integers(1, 100), min_size=1, max_size=4)


@settings(max_examples=100, deadline=None)
@given(schedule=chaos_schedules(), amounts=amounts)
def test_payments_apply_once(schedule: ChaosSchedule, amounts: list[int]) -> None:
    """What your test suite holds: the property, against your (fixed) handler."""
    run(fixed_handler, schedule, amounts)


# -- how the chaos provider catches the broken versions -----------------------------------


def payments_apply_once(make_handler: Callable[[Ledger], Handler]) -> Callable[[], None]:
    """The same property for any of the handlers (to show it failing)."""

    @settings(
        max_examples=200,
        deadline=None,
        database=None,  # no example saved from an earlier run: the same search every time
        derandomize=True,
        phases=[Phase.generate, Phase.shrink],
    )
    @given(schedule=chaos_schedules(), amounts=amounts)
    def check(schedule: ChaosSchedule, amounts: list[int]) -> None:
        run(make_handler, schedule, amounts)

    return check


def failure_report(make_handler: Callable[[Ledger], Handler]) -> str:
    """What hypothesis reports when the property fails: the shrunk example and notes."""
    with pytest.raises(AssertionError, match="balance") as failed:
        payments_apply_once(make_handler)()
    return "\n".join(getattr(failed.value, "__notes__", []))


def test_the_naive_handler_is_caught() -> None:
    report = failure_report(naive_handler)
    # The simplest schedule that breaks it: a fault on the first delivery.
    assert "schedule=ChaosSchedule(#0 " in report
    assert "chaos: delivery #0" in report  # what the chaos provider did


def test_a_crash_after_the_side_effect_is_caught() -> None:
    report = failure_report(two_step_handler)
    # Only a crash between the credit (the handler's schedule point 2) and the
    # record (point 3) breaks it, and that is the schedule hypothesis shrinks to.
    assert "schedule=ChaosSchedule(#0 crash(at handler's schedule point 3))" in report
    assert "CRASH at the handler's schedule point 3" in report


def test_duplicates_and_lost_acks_alone_miss_the_two_step_bug() -> None:
    # Why the crash fault matters: without it the two-step handler looks idempotent.
    without_crashes = chaos_schedules(kinds=("duplicate", "ack_lost", "hold"))

    @settings(max_examples=100, deadline=None, database=None, derandomize=True)
    @given(schedule=without_crashes, amounts=amounts)
    def check(schedule: ChaosSchedule, amounts: list[int]) -> None:
        run(two_step_handler, schedule, amounts)

    check()


# -- a found interleaving, pinned as a plain regression test -------------------------------


@pytest.mark.parametrize(
    ("make_handler", "survives"), [(two_step_handler, False), (fixed_handler, True)]
)
def test_crash_between_credit_and_record(
    make_handler: Callable[[Ledger], Handler], survives: bool
) -> None:
    schedule = ChaosSchedule([Fault.crash(at=3)])  # the schedule hypothesis reported
    if survives:
        run(make_handler, schedule, [10, 20])
    else:
        with pytest.raises(AssertionError, match="balance 40, expected 30"):
            run(make_handler, schedule, [10, 20])
