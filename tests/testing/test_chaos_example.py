"""Worked example: property-test that a ledger handler applies each payment once.

A payment service credits an account for every ``payments.made`` message.
Delivery is at-least-once, so the handler must be idempotent. Three
versions of it:

- :func:`naive_handler` adds the amount on every delivery: any duplicate,
  lost ack or crash before the ack credits the payment twice.
- :func:`two_step_handler` checks whether the payment was processed, then
  credits it in one transaction and records it in another. Plain duplicates
  and lost acks never break it (the second delivery sees the record); only a
  crash between the credit and the record (after the side effect, before the
  ack) does. A test that only duplicated messages would pass it.
- :func:`fixed_handler` credits and records in ONE transaction: it passes
  whatever the schedule.

The property is an ordinary hypothesis test: draw a schedule of faults and
some payments, run the handler on the chaos provider, check the balance.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from piko_trio_events import Message
from piko_trio_events.testing._chaos import (
    ChaosSchedule,
    Fault,
    FaultKind,
    chaos_schedules,
    open_chaos_provider,
)

TOPIC = "payments.made"


@dataclass
class Snapshot:
    balance: int
    processed: set[str]


@dataclass
class Ledger:
    """A toy database: a transaction commits atomically, after one round trip."""

    balance: int = 0
    processed: set[str] = field(default_factory=set)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Snapshot]:
        tx = Snapshot(self.balance, set(self.processed))
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
            tx.processed.add(msg.uuid)  # same transaction as the credit

    return credit


async def apply_payments(
    make_handler: Callable[[Ledger], Handler], schedule: ChaosSchedule, amounts: list[int]
) -> None:
    """Publish the payments through the chaos provider and check the balance."""
    ledger = Ledger()
    async with open_chaos_provider(schedule) as provider:
        provider.router.add_handler("ledger", TOPIC, make_handler(ledger))
        for i, amount in enumerate(amounts):
            await provider.publisher.publish(TOPIC, Message(str(amount).encode(), uuid=f"pay-{i}"))
        await provider.wait_idle()
    assert ledger.balance == sum(amounts), f"balance {ledger.balance} != {sum(amounts)}"


def run(main: Callable[[], Awaitable[None]]) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


amounts_strategy = st.lists(st.integers(1, 100), min_size=1, max_size=4)


def ledger_property(
    make_handler: Callable[[Ledger], Handler],
    kinds: tuple[FaultKind, ...] = ("ok", "duplicate", "ack_lost", "hold", "crash"),
    max_examples: int = 200,
) -> Callable[[], None]:
    """The property a user writes (here parametrized by handler and fault kinds)."""

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate, Phase.shrink],  # no "explain" phase: it only slows this down
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(schedule=chaos_schedules(kinds=kinds), amounts=amounts_strategy)
    def payments_apply_once(schedule: ChaosSchedule, amounts: list[int]) -> None:
        run(lambda: apply_payments(make_handler, schedule, amounts))

    return payments_apply_once


# -- what a user's test suite holds ------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(schedule=chaos_schedules(), amounts=amounts_strategy)
def test_fixed_ledger_applies_each_payment_once(
    schedule: ChaosSchedule, amounts: list[int]
) -> None:
    run(lambda: apply_payments(fixed_handler, schedule, amounts))


# -- showing that the chaos provider catches the broken versions ----------------------------


def test_chaos_catches_the_naive_handler_and_prints_the_schedule() -> None:
    with pytest.raises(AssertionError, match="balance") as caught:
        ledger_property(naive_handler)()
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    # Hypothesis shows the shrunk schedule and, as notes, what the chaos provider did.
    assert "schedule=ChaosSchedule(#0 " in notes
    assert "chaos: delivery #0" in notes


def test_chaos_catches_a_crash_after_the_side_effect() -> None:
    with pytest.raises(AssertionError, match="balance") as caught:
        ledger_property(two_step_handler)()
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    # Only a crash between the credit (schedule point 2) and the record (point 3)
    # breaks this handler: that is the shrunk schedule hypothesis reports.
    assert "schedule=ChaosSchedule(#0 crash(at handler's schedule point 3))" in notes
    assert "CRASH at the handler's schedule point 3" in notes


def test_duplicates_and_lost_acks_alone_do_not_catch_the_two_step_handler() -> None:
    # Why the crash fault matters: without it, the two-step handler looks idempotent.
    ledger_property(two_step_handler, kinds=("duplicate", "ack_lost", "hold"), max_examples=50)()


@pytest.mark.parametrize(
    ("make_handler", "fault", "breaks"),
    [
        (naive_handler, Fault.duplicate(), True),
        (naive_handler, Fault.ack_lost(), True),
        (naive_handler, Fault.crash(), True),
        (naive_handler, Fault.hold(1), False),
        (two_step_handler, Fault.duplicate(), False),
        (two_step_handler, Fault.ack_lost(), False),
        (two_step_handler, Fault.crash(), False),
        (two_step_handler, Fault.crash(at=2), False),
        (two_step_handler, Fault.crash(at=3), True),
        (fixed_handler, Fault.crash(at=1), False),
        (fixed_handler, Fault.crash(at=2), False),
        (fixed_handler, Fault.crash(), False),
        (fixed_handler, Fault.duplicate(), False),
        (fixed_handler, Fault.ack_lost(), False),
    ],
)
def test_one_fault_against_each_handler(
    make_handler: Callable[[Ledger], Handler], fault: Fault, breaks: bool
) -> None:
    schedule = ChaosSchedule([fault])
    if breaks:
        with pytest.raises(AssertionError, match="balance"):
            run(lambda: apply_payments(make_handler, schedule, [10, 20]))
    else:
        run(lambda: apply_payments(make_handler, schedule, [10, 20]))
