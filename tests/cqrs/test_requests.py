"""Request/reply on the memory provider: replies, errors, timeouts, cancellation."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from piko_trio_events import open_memory_provider
from piko_trio_events._request_transport import _local_inboxes
from piko_trio_events.cqrs import CommandBus, DecodeError, EventBus, RequestError
from piko_trio_events.memory import MemoryProvider

from .types import Audit, ChargeCard, Charged, Refund


def serve_charges(commands: CommandBus) -> None:
    @commands.handler
    async def charge(command: ChargeCard) -> Charged:
        if command.amount < 0:
            secret = "4111-1111"  # a local the requester must never see
            raise ValueError(f"negative amount for order {command.order}") from KeyError(secret)
        await trio.sleep(0.01 * (command.order % 7))  # replies come back out of order
        return Charged(command.order, command.amount > 10)


async def test_a_request_returns_the_typed_reply(memory_provider: MemoryProvider) -> None:
    commands = CommandBus(memory_provider)
    serve_charges(commands)
    with trio.fail_after(5):
        assert await commands.request(ChargeCard(1, 20.0), timeout=5) == Charged(1, True)
        reply = await commands.request(ChargeCard(2, 1.0), reply_type=Charged)
    assert reply == Charged(2, False)


async def test_a_thousand_concurrent_requests_share_one_inbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_provider() as provider:
        commands = CommandBus(provider)
        serve_charges(commands)
        replies: dict[int, Charged] = {}

        async def ask(order: int) -> None:
            replies[order] = await commands.request(
                ChargeCard(order, float(order)), timeout=60, reply_type=Charged
            )

        async with trio.open_nursery() as nursery:
            for order in range(1000):
                nursery.start_soon(ask, order)
        assert replies == {n: Charged(n, n > 10) for n in range(1000)}
        assert len(_local_inboxes[provider]) == 1  # one reply inbox for the bus
        assert commands.pending_requests == 0
        assert commands.late_replies == 0


async def test_a_handler_error_comes_back_as_its_type_and_message_only(
    memory_provider: MemoryProvider,
) -> None:
    commands = CommandBus(memory_provider)
    serve_charges(commands)
    with trio.fail_after(5), pytest.raises(RequestError) as caught:
        await commands.request(ChargeCard(7, -1.0), timeout=5)
    error = caught.value
    assert (error.remote_type, error.remote_message) == (
        "ValueError",
        "negative amount for order 7",
    )
    assert str(error) == "ValueError: negative amount for order 7"
    assert error.__cause__ is None
    assert error.__context__ is None
    assert "4111" not in repr(vars(error))
    # the failed request was answered, so it is acked: not run again
    assert memory_provider.undelivered == []


async def test_a_request_nobody_serves_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_provider() as provider:
        commands = CommandBus(provider)
        started = trio.current_time()
        with pytest.raises(trio.TooSlowError):
            await commands.request(Refund(1), timeout=2.5)
        assert trio.current_time() - started == pytest.approx(2.5)
        assert commands.pending_requests == 0


async def test_cancelling_mid_request_leaves_nothing_and_the_late_reply_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_provider() as provider:
        commands = CommandBus(provider)
        release = trio.Event()
        handling = trio.Event()

        @commands.handler
        async def slow(command: ChargeCard) -> Charged:
            handling.set()
            await release.wait()
            return Charged(command.order, True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(commands.request, ChargeCard(1, 1.0)))
            await handling.wait()
            assert commands.pending_requests == 1
            nursery.cancel_scope.cancel()
        assert commands.pending_requests == 0
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert commands.late_replies == 1
        # and the bus still works
        assert await commands.request(ChargeCard(2, 1.0), timeout=5) == Charged(2, True)


async def test_a_reply_of_another_type_is_a_decode_error(
    memory_provider: MemoryProvider,
) -> None:
    commands = CommandBus(memory_provider)

    @commands.handler
    async def charge(command: ChargeCard) -> Audit:
        return Audit("not a Charged")

    with trio.fail_after(5):
        with pytest.raises(DecodeError, match="is a Audit, not a Charged"):
            await commands.request(ChargeCard(1, 1.0), reply_type=Charged)
        # without reply_type the reply decodes as the type its name has here
        assert await commands.request(ChargeCard(1, 1.0)) == Audit("not a Charged")


async def test_a_handler_returning_none_replies_none(memory_provider: MemoryProvider) -> None:
    commands = CommandBus(memory_provider)

    @commands.handler
    async def charge(command: ChargeCard) -> None:
        return None

    with trio.fail_after(5):
        assert await commands.request(ChargeCard(1, 1.0)) is None


async def test_each_command_bus_has_its_own_inbox(
    memory_provider: MemoryProvider,
) -> None:
    """Two command buses on one provider: each its own inbox, replies never crossed."""
    first, second = CommandBus(memory_provider), CommandBus(memory_provider)
    serve_charges(first)
    EventBus(memory_provider)
    with trio.fail_after(5):
        a = await first.request(ChargeCard(1, 11.0), reply_type=Charged)
        b = await second.request(ChargeCard(2, 1.0), reply_type=Charged)
    assert (a, b) == (Charged(1, True), Charged(2, False))
    assert len(_local_inboxes[memory_provider]) == 2


async def test_timeout_must_be_positive(memory_provider: MemoryProvider) -> None:
    commands = CommandBus(memory_provider)
    with pytest.raises(ValueError, match="timeout"):
        await commands.request(ChargeCard(1, 1.0), timeout=0)
