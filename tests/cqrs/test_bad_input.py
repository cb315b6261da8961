"""Input a typed handler cannot decode: logged, counted, settled once, nothing else lost."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from piko_trio_events import Message, open_memory_provider
from piko_trio_events._metrics import provider_metrics
from piko_trio_events.cqrs import NAME_KEY, CommandBus, EventBus, RequestError
from piko_trio_events.cqrs._metrics import cqrs_metrics
from piko_trio_events.middleware import poison_queue

from .types import ChargeCard, Charged, OrderPlaced

TOPIC = "events.OrderPlaced"
GOOD = OrderPlaced(1, "ann", 2.0, True)

BAD = {
    "not json": Message(b"{oops", {NAME_KEY: "OrderPlaced"}, uuid="bad-json"),
    "wrong field type": Message(
        b'{"id": "1", "customer": "a", "total": 1, "express": true}',
        {NAME_KEY: "OrderPlaced"},
        uuid="bad-field",
    ),
    "missing name": Message(b'{"id": 1}', uuid="bad-no-name"),
    "unknown name": Message(b"{}", {NAME_KEY: "Nonesuch"}, uuid="bad-unknown-name"),
}


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_input_is_logged_counted_and_acked_without_a_poison_queue(
    case: str, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = provider_metrics("memory")
    before = (metrics.acked[TOPIC], metrics.nacked[TOPIC], metrics.redelivered[TOPIC])
    counted = cqrs_metrics().decode_errors[TOPIC]
    bad = BAD[case]
    async with open_memory_provider() as provider:
        events = EventBus(provider)
        got: list[OrderPlaced] = []

        @events.handler
        async def handle(event: OrderPlaced) -> None:
            got.append(event)

        with caplog.at_level(logging.ERROR, "piko_trio_events.cqrs"):
            await provider.publisher.publish(TOPIC, bad, events._encode(GOOD))
            await settle()
        assert got == [GOOD]  # what follows the bad message is handled
        assert events.decode_errors == 1
    assert provider.undelivered == []
    after = (metrics.acked[TOPIC], metrics.nacked[TOPIC], metrics.redelivered[TOPIC])
    assert after == (before[0] + 2, before[1], before[2])  # acked once, never nacked
    assert cqrs_metrics().decode_errors[TOPIC] == counted + 1
    [record] = [r for r in caplog.records if r.name == "piko_trio_events.cqrs"]
    assert bad.uuid in record.getMessage()
    assert repr(TOPIC) in record.getMessage()


async def test_bad_input_goes_to_the_routers_poison_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_provider() as provider:
        provider.router.add_middleware(poison_queue(provider.publisher, "poison"))
        events = EventBus(provider)
        got: list[OrderPlaced] = []

        @events.handler
        async def handle(event: OrderPlaced) -> None:
            got.append(event)

        async with provider.subscriber.subscribe("poison") as poisoned:
            await provider.publisher.publish(TOPIC, *BAD.values(), events._encode(GOOD))
            await settle()
            seen = [poisoned.receive_nowait() for _ in BAD]
            with pytest.raises(trio.WouldBlock):
                poisoned.receive_nowait()
        assert [m.uuid for m in seen] == [m.uuid for m in BAD.values()]
        reasons = [m.metadata["reason_poisoned"] for m in seen]
        assert "is not JSON" in reasons[0]
        assert "id: expected int" in reasons[1]
        assert "no 'name' metadata" in reasons[2]
        assert "unknown type name 'Nonesuch'" in reasons[3]
        assert all(m.metadata["topic_poisoned"] == TOPIC for m in seen)
        assert got == [GOOD]
        assert events.decode_errors == 4


async def test_a_request_that_does_not_decode_fails_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_provider() as provider:
        commands = CommandBus(provider)

        @commands.handler
        async def charge(command: ChargeCard) -> Charged:
            raise AssertionError("never called")

        with pytest.raises(RequestError, match=r"DecodeError: .*amount: expected float"):
            await commands.request(ChargeCard(1, "lots"), timeout=60)  # type: ignore[arg-type]
        assert trio.current_time() < 1  # answered, not timed out
        assert commands.decode_errors == 1
