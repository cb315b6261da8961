"""timeout: a trio deadline around the handler."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from piko_trio_events import ConfigError, Message, PikoEventsError
from piko_trio_events._types import _current_handler
from piko_trio_events.middleware import HandlerTimeoutError, timeout


@pytest.mark.parametrize("seconds", [0, -1.0, float("inf"), float("nan"), "5", None, True])
def test_invalid_seconds_are_refused_at_construction(seconds: Any) -> None:
    with pytest.raises(ConfigError, match="seconds"):
        timeout(seconds)


async def test_a_handler_within_the_deadline_returns_its_result(autojump_clock: Any) -> None:
    output = Message(b"out")

    async def handler(msg: Message) -> Message:
        await trio.sleep(0.9)
        return output

    assert await timeout(1.0)(handler)(Message()) is output


async def test_a_slow_handler_is_cancelled_and_raises_handler_timeout_error(
    autojump_clock: Any,
) -> None:
    reached_end = False
    cleaned_up_at: float | None = None

    async def handler(msg: Message) -> None:
        nonlocal reached_end, cleaned_up_at
        try:
            await trio.sleep(10.0)
            reached_end = True
        finally:
            cleaned_up_at = trio.current_time()

    start = trio.current_time()
    with pytest.raises(HandlerTimeoutError) as info:
        await timeout(2.5)(handler)(Message())
    assert not reached_end
    assert cleaned_up_at == start + 2.5
    assert trio.current_time() == start + 2.5
    assert isinstance(info.value, PikoEventsError)
    assert info.value.seconds == 2.5
    assert info.value.handler_name is None
    assert "2.5 seconds" in str(info.value)


async def test_the_error_names_the_router_handler(autojump_clock: Any) -> None:
    async def handler(msg: Message) -> None:
        await trio.sleep_forever()

    token = _current_handler.set("audit")
    try:
        with pytest.raises(HandlerTimeoutError, match="handler 'audit' did not finish") as info:
            await timeout(1.0)(handler)(Message())
    finally:
        _current_handler.reset(token)
    assert info.value.handler_name == "audit"


async def test_the_handlers_own_too_slow_error_is_not_rewrapped(autojump_clock: Any) -> None:
    async def handler(msg: Message) -> None:
        with trio.fail_after(1.0):
            await trio.sleep_forever()

    with pytest.raises(trio.TooSlowError):
        await timeout(5.0)(handler)(Message())


async def test_outer_cancellation_is_not_turned_into_a_timeout(autojump_clock: Any) -> None:
    async def handler(msg: Message) -> None:
        await trio.sleep_forever()

    with trio.move_on_after(1.0) as scope:
        await timeout(5.0)(handler)(Message())
    assert scope.cancelled_caught


async def test_a_handler_error_propagates_unchanged(autojump_clock: Any) -> None:
    async def handler(msg: Message) -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await timeout(1.0)(handler)(Message())


async def test_each_call_gets_a_fresh_deadline(autojump_clock: Any) -> None:
    async def handler(msg: Message) -> None:
        await trio.sleep(0.75)

    wrapped = timeout(1.0)(handler)
    for _ in range(3):  # 2.25 s in all: a shared deadline would have fired
        await wrapped(Message())
