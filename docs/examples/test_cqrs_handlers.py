"""Testing typed handlers: on the memory provider, and under the chaos provider.

Run it with ``pytest docs/examples/test_cqrs_handlers.py`` (pytest-trio,
``trio_mode = true``).

The worked example: a wallet credits every ``PaymentMade`` event. Delivery
is at-least-once, so the chaos provider duplicates deliveries and loses
acks; the property is that the balance is the sum of the payments, whatever
the schedule. The typed handler sees a value, not a message, so it is made
idempotent by the payment's own id; the naive one is caught.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from shop import CardCharged, ChargeCard, Shop

from piko_trio_events.cqrs import EventBus, values_of
from piko_trio_events.testing import ChaosSchedule, Fault, chaos_schedules, open_chaos_provider

if TYPE_CHECKING:
    from piko_trio_events.memory import MemoryProvider

# -- 1. a handler, tested on the memory provider ------------------------------------------


async def test_a_charge_request_is_answered(memory_provider: MemoryProvider) -> None:
    shop = Shop(memory_provider)
    with trio.fail_after(5):
        reply = await shop.commands.request(ChargeCard(order=7, amount=3.0))
    assert reply == CardCharged(order=7, receipt="r-7")


@settings(max_examples=25, deadline=None)
@given(command=values_of(ChargeCard))
async def test_the_charge_handler_answers_every_command(command: ChargeCard) -> None:
    """Hypothesis draws values of the handler's type (``values_of``)."""
    from piko_trio_events import open_memory_provider
    from piko_trio_events.cqrs import RequestError

    async with open_memory_provider() as provider:
        shop = Shop(provider)
        with trio.fail_after(5):
            if command.amount <= 0:  # the handler refuses it: the requester sees why
                with pytest.raises(RequestError, match=r"^ValueError: nothing to charge"):
                    await shop.commands.request(command)
            else:
                reply = await shop.commands.request(command)
                assert reply == CardCharged(command.order, f"r-{command.order}")


# -- 2. the chaos provider: a typed handler, idempotent by the payment's id ---------------


@dataclass(frozen=True)
class PaymentMade:
    payment_id: str
    amount: int


@dataclass
class Wallet:
    balance: int = 0
    applied: set[str] = field(default_factory=set)


Credit = Callable[[PaymentMade], Awaitable[None]]


def naive(wallet: Wallet) -> Credit:
    async def credit(payment: PaymentMade) -> None:
        wallet.balance += payment.amount

    return credit


def idempotent(wallet: Wallet) -> Credit:
    async def credit(payment: PaymentMade) -> None:
        if payment.payment_id in wallet.applied:
            return  # a duplicate, or a redelivery after a lost ack
        wallet.balance += payment.amount
        wallet.applied.add(payment.payment_id)

    return credit


async def credit_payments(
    make: Callable[[Wallet], Credit], schedule: ChaosSchedule, payments: list[PaymentMade]
) -> None:
    wallet = Wallet()
    async with open_chaos_provider(schedule) as provider:
        events = EventBus(provider)
        credit = make(wallet)

        @events.handler(name="wallet")
        async def on_payment(payment: PaymentMade) -> None:
            await credit(payment)

        await events.publish(*payments)
        await provider.wait_idle()  # every delivery, redelivery and copy settled
    total = sum(p.amount for p in payments)
    assert wallet.balance == total, f"balance {wallet.balance}, expected {total}"


def run(
    make: Callable[[Wallet], Credit], schedule: ChaosSchedule, payments: list[PaymentMade]
) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(credit_payments, make, schedule, payments, clock=clock)


payments = st.lists(
    values_of(PaymentMade), min_size=1, max_size=4, unique_by=lambda p: p.payment_id
)
duplicates_and_lost_acks = chaos_schedules(kinds=("duplicate", "ack_lost"))


@settings(max_examples=100, deadline=None)
@given(schedule=duplicates_and_lost_acks, payments=payments)
def test_payments_apply_once(schedule: ChaosSchedule, payments: list[PaymentMade]) -> None:
    run(idempotent, schedule, payments)


def test_the_naive_handler_is_caught() -> None:
    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate, Phase.shrink],
    )
    @given(schedule=duplicates_and_lost_acks, payments=payments)
    def check(schedule: ChaosSchedule, payments: list[PaymentMade]) -> None:
        run(naive, schedule, payments)

    with pytest.raises(AssertionError, match="balance"):
        check()


@pytest.mark.parametrize("fault", [Fault.duplicate(), Fault.ack_lost()], ids=repr)
def test_one_fault_is_enough_to_break_the_naive_handler(fault: Fault) -> None:
    one = [PaymentMade("p-1", 10)]
    run(idempotent, ChaosSchedule([fault]), one)
    with pytest.raises(AssertionError, match="balance 20, expected 10"):
        run(naive, ChaosSchedule([fault]), one)
