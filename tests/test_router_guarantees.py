"""Router guarantees that the other router tests leave unchecked (found by mutation)."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from piko_trio_events import AckError, Message, open_memory_provider
from piko_trio_events._uuid import derived_uuid


async def test_every_output_position_gets_its_own_derived_uuid() -> None:
    outs: list[Message] = []
    async with open_memory_provider() as provider:
        done = trio.Event()

        @provider.router.handler("in", publish_topic="out", name="split")
        async def split(msg: Message) -> list[Message]:
            return [Message(b"a"), Message(b"b"), Message(b"c")]

        @provider.router.handler("out")
        async def sink(msg: Message) -> None:
            outs.append(msg)
            if len(outs) == 3:
                done.set()

        await provider.publisher.publish("in", Message(b"x", uuid="in-1"))
        await done.wait()
    by_payload = {m.payload: m.uuid for m in outs}
    assert by_payload == {
        b"a": derived_uuid("in-1", "split", 0),
        b"b": derived_uuid("in-1", "split", 1),
        b"c": derived_uuid("in-1", "split", 2),
    }
    assert len(set(by_payload.values())) == 3


class _Later(Exception):
    retry_after = 5.0


async def test_an_errors_retry_after_delays_the_redelivery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[int, float]] = []
    async with open_memory_provider() as provider:
        done = trio.Event()

        @provider.router.handler("t")
        async def busy(msg: Message) -> None:
            assert msg.delivery is not None
            seen.append((msg.delivery.attempt, trio.current_time()))
            if msg.delivery.attempt == 1:
                raise _Later("try again in 5 s")
            done.set()

        await provider.publisher.publish("t", Message(b"x"))
        await done.wait()
    [(first, t1), (second, t2)] = seen
    assert (first, second) == (1, 2)
    assert t2 - t1 == pytest.approx(5.0)


class _FailingAcker:
    """Stands in for a provider whose confirmed ack fails (a lost connection)."""

    def __init__(self, real: object) -> None:
        self._real = real

    async def ack_message(self, message: Message) -> None:
        raise AckError("the server did not confirm the ack")

    async def nack_message(self, message: Message, delay: float | None) -> None:
        await self._real.nack_message(message, delay)  # type: ignore[attr-defined]


async def test_a_failing_ack_is_logged_and_the_handler_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    handled: list[bytes] = []
    async with open_memory_provider() as provider:
        done = trio.Event()

        @provider.router.handler("t")
        async def handle(msg: Message) -> None:
            if msg.payload == b"1":
                msg._acker = _FailingAcker(msg._acker)
            handled.append(msg.payload)
            if len(handled) == 2:
                done.set()

        await provider.publisher.publish("t", Message(b"1"), Message(b"2"))
        with trio.fail_after(5):
            await done.wait()
        assert provider.running
    assert handled == [b"1", b"2"]
    assert "ack of" in caplog.text
    assert "failed" in caplog.text


async def test_a_handler_returning_a_non_message_fails_with_handler_output_error(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    delivered: list[Message] = []
    async with open_memory_provider() as provider:
        gate = trio.Event()
        out = provider.subscriber.subscribe("out", group="collector")

        @provider.router.handler("in", publish_topic="out", name="sloppy")
        async def sloppy(msg: Message) -> list[Message]:
            delivered.append(msg)
            if len(delivered) == 2:
                gate.set()
                await trio.sleep_forever()
            return [Message(b"fine"), "not a message"]  # type: ignore[list-item]

        await provider.publisher.publish("in", Message(b"x"))
        await gate.wait()
    del out
    # nothing of the bad output was published (the collector group would report it)
    assert [u.pattern for u in provider.undelivered] == ["in"]
    assert delivered[0].nacked
    assert "HandlerOutputError" in caplog.text
    assert "returned str, not a Message" in caplog.text


async def _publish_then_leave() -> tuple[list[bytes], list[object]]:
    handled: list[bytes] = []
    async with open_memory_provider() as provider:

        @provider.router.handler("t")
        async def handle(msg: Message) -> None:
            handled.append(msg.payload)

        await trio.testing.wait_all_tasks_blocked()  # the worker waits in receive()
        await provider.publisher.publish("t", Message(b"x"))
    return handled, list(provider.undelivered)


async def test_a_message_reaching_a_worker_as_the_drain_starts_is_still_processed() -> None:
    # publish() hands the message to the waiting worker, then yields once; about
    # half the time the body goes on first and the drain starts before the worker
    # ran. Either way the message must be handled, not sent back to its group.
    for _ in range(40):
        handled, undelivered = await _publish_then_leave()
        assert handled == [b"x"]
        assert undelivered == []
