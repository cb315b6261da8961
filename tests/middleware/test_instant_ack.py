"""instant_ack: the message is acked before the handler runs."""

from __future__ import annotations

import pytest

from piko_trio_events import Message
from piko_trio_events.middleware import instant_ack


async def test_the_message_is_acked_before_the_handler_runs() -> None:
    states: list[tuple[bool, bool]] = []
    out = Message(b"out")

    async def handler(msg: Message) -> Message:
        states.append((msg.acked, msg.nacked))
        return out

    msg = Message()
    assert await instant_ack()(handler)(msg) is out
    assert states == [(True, False)]


async def test_a_failing_handler_leaves_the_message_acked() -> None:
    async def handler(msg: Message) -> None:
        raise RuntimeError("boom")

    msg = Message()
    with pytest.raises(RuntimeError, match="boom"):
        await instant_ack()(handler)(msg)
    assert msg.acked
    assert await msg.nack() is False  # what the router's nack then sees
    assert msg.acked


async def test_an_ack_error_skips_the_handler() -> None:
    class AckFailed(Exception):
        pass

    class FailingAck(Message):
        __slots__ = ()

        async def ack(self) -> bool:
            raise AckFailed

    called = False

    async def handler(msg: Message) -> None:
        nonlocal called
        called = True

    with pytest.raises(AckFailed):
        await instant_ack()(handler)(FailingAck())
    assert not called
