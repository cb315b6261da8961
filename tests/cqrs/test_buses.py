"""Typed event and command handlers on the memory provider (deterministic time)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from piko_trio_events import Message, open_memory_provider
from piko_trio_events._uuid import derived_uuid
from piko_trio_events.cqrs import NAME_KEY, CommandBus, EventBus, default_topic
from piko_trio_events.memory import MemoryProvider

from .types import Audit, ChargeCard, Charged, OrderPlaced, Refund, Shipped

ORDER = OrderPlaced(1, "ann", 12.5, False)


async def settle() -> None:
    """Every handler has run to completion (the memory provider, mock time)."""
    await trio.testing.wait_all_tasks_blocked()


async def test_events_fan_out_to_every_handler_of_their_type(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_provider() as provider:
        events = EventBus(provider)
        got: dict[str, list[OrderPlaced]] = {"mail": [], "stock": []}

        @events.handler
        async def mail(event: OrderPlaced) -> None:
            got["mail"].append(event)

        @events.handler
        async def stock(event: OrderPlaced) -> None:
            got["stock"].append(event)

        await events.publish(ORDER, OrderPlaced(2, "bo", 1.0, True))
        await settle()
        assert got["mail"] == got["stock"] == [ORDER, OrderPlaced(2, "bo", 1.0, True)]
        # each handler is a router handler, its own group
        handlers = provider.router.handlers
        assert {handlers[n].group for n in handlers} == {
            mail.__qualname__,
            stock.__qualname__,
        }
        assert {handlers[n].topic for n in handlers} == {"events.OrderPlaced"}


async def test_a_raw_message_with_the_name_reaches_the_typed_handler(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_provider() as provider:
        events = EventBus(provider)
        got: list[OrderPlaced] = []

        @events.handler
        async def handle(event: OrderPlaced) -> None:
            got.append(event)

        payload = b'{"id": 5, "customer": "cy", "total": 3, "express": true}'
        await provider.publisher.publish(
            "events.OrderPlaced", Message(payload, {NAME_KEY: "OrderPlaced"})
        )
        await settle()
        assert got == [OrderPlaced(5, "cy", 3.0, True)]


async def test_outputs_are_routed_by_kind_with_uuids_derived_from_the_input(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_provider() as provider:
        events = EventBus(provider)
        commands = CommandBus(provider)
        charged: list[ChargeCard] = []
        audits: list[Audit] = []

        @events.handler
        async def on_placed(event: OrderPlaced) -> list[ChargeCard | Audit]:
            return [ChargeCard(event.id, event.total), Audit(f"placed {event.id}")]

        @commands.handler
        async def charge(command: ChargeCard) -> None:
            charged.append(command)

        @events.handler
        async def audit(event: Audit) -> None:
            audits.append(event)

        async with (
            provider.subscriber.subscribe("commands.ChargeCard") as raw_commands,
            provider.subscriber.subscribe("events.Audit") as raw_audits,
        ):
            source = events._encode(ORDER)
            for _ in range(2):  # the same input twice: the same outputs
                await provider.publisher.publish("events.OrderPlaced", source.copy())
            await settle()
            name = on_placed.__qualname__
            for channel, position in ((raw_commands, 0), (raw_audits, 1)):
                for _ in range(2):
                    out = channel.receive_nowait()
                    assert out.uuid == derived_uuid(source.uuid, name, position)
        assert charged == [ChargeCard(1, 12.5)] * 2
        assert audits == [Audit("placed 1")] * 2


async def test_a_dict_output_takes_its_type_from_the_return_annotation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_provider() as provider:
        events = EventBus(provider)
        shipped: list[Shipped] = []

        @events.handler
        async def ship(event: OrderPlaced) -> Shipped | None:
            return {"order": event.id, "carrier": "post"}

        @events.handler
        async def track(event: Shipped) -> None:
            shipped.append(event)

        await events.publish(ORDER)
        await settle()
        assert shipped == [{"order": 1, "carrier": "post"}]


async def test_a_command_handler_output_is_published_as_an_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_provider() as provider:
        commands = CommandBus(provider)
        events = EventBus(provider)
        results: list[Charged] = []

        @commands.handler
        async def charge(command: ChargeCard) -> Charged:
            return Charged(command.order, True)

        @events.handler
        async def on_charged(event: Charged) -> None:
            results.append(event)

        await commands.send(ChargeCard(3, 1.0))
        await settle()
        assert results == [Charged(3, True)]


async def test_a_registered_command_type_is_sent_even_without_a_local_handler(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_provider() as provider:
        events = EventBus(provider)
        commands = CommandBus(provider)
        commands.register(Refund)

        @events.handler
        async def on_placed(event: OrderPlaced) -> Refund:
            return Refund(event.id)

        async with provider.subscriber.subscribe("commands.Refund") as refunds:
            await events.publish(ORDER)
            await settle()
            assert refunds.receive_nowait().metadata[NAME_KEY] == "Refund"


async def test_one_handler_per_command_type(memory_provider: MemoryProvider) -> None:
    commands = CommandBus(memory_provider)
    other = CommandBus(memory_provider)

    @commands.handler
    async def charge(command: ChargeCard) -> None: ...

    async def charge_again(command: ChargeCard) -> None: ...

    for bus in (commands, other):
        with pytest.raises(ValueError, match="ChargeCard already has a handler"):
            bus.handler(charge_again)
    assert list(memory_provider.router.handlers) == [charge.__qualname__]
    assert memory_provider.router.handlers[charge.__qualname__].group == "ChargeCard"


async def test_handler_signatures_are_checked_at_registration(
    memory_provider: MemoryProvider,
) -> None:
    events = EventBus(memory_provider)

    async def unannotated(event):  # type: ignore[no-untyped-def]
        pass

    async def two(a: OrderPlaced, b: OrderPlaced) -> None: ...

    def sync(event: OrderPlaced) -> None: ...

    async def undecodable(event: bytes) -> None: ...

    cases: list[tuple[Any, str]] = [
        (unannotated, "annotate its parameter"),
        (two, "exactly one parameter"),
        (sync, "async function"),
        (undecodable, "cannot decode"),
    ]
    for func, says in cases:
        with pytest.raises(TypeError, match=says):
            events.handler(func)
    assert not memory_provider.router.handlers


async def test_topic_of_maps_names_to_topics_and_types_can_share_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert default_topic("events")("a.b c*") == "events.a.b_c_"
    async with open_memory_provider() as provider:
        events = EventBus(provider, topic_of=lambda name: "shop.all")
        orders: list[OrderPlaced] = []
        audits: list[Audit] = []

        @events.handler
        async def on_order(event: OrderPlaced) -> None:
            orders.append(event)

        @events.handler
        async def on_audit(event: Audit) -> None:
            audits.append(event)

        await events.publish(ORDER, Audit("x"), ORDER)
        await settle()
        # each handler receives every message of the topic and takes its own type only
        assert orders == [ORDER, ORDER]
        assert audits == [Audit("x")]
        assert events.decode_errors == 0
