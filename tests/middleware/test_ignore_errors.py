"""ignore_errors: listed exceptions are swallowed, so the message is acked."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from piko_trio_events import ConfigError, HandlerFunc, Message
from piko_trio_events.middleware import ignore_errors


class NotFound(LookupError):
    pass


def raising(error: BaseException) -> HandlerFunc:
    async def handler(msg: Message) -> None:
        raise error

    return handler


@pytest.mark.parametrize(
    "types",
    [
        (),
        (ValueError, "KeyError"),
        (ValueError(),),
        (trio.Cancelled,),
        (KeyboardInterrupt,),
        (BaseException,),
        (BaseExceptionGroup,),
    ],
)
def test_invalid_types_are_refused_at_construction(types: tuple[Any, ...]) -> None:
    with pytest.raises(ConfigError, match="exception_types"):
        ignore_errors(*types)


@pytest.mark.parametrize("error", [LookupError("x"), NotFound("x"), ValueError("y")])
async def test_listed_errors_and_their_subclasses_are_swallowed(error: Exception) -> None:
    wrapped = ignore_errors(LookupError, ValueError)(raising(error))
    assert await wrapped(Message()) is None


async def test_other_errors_propagate_unchanged() -> None:
    error = RuntimeError("boom")
    with pytest.raises(RuntimeError) as info:
        await ignore_errors(LookupError)(raising(error))(Message())
    assert info.value is error


async def test_a_group_of_only_listed_errors_is_swallowed() -> None:
    group = ExceptionGroup("nursery", [NotFound("a"), ExceptionGroup("inner", [KeyError("b")])])
    assert await ignore_errors(LookupError)(raising(group))(Message()) is None


async def test_a_group_with_another_error_propagates_whole() -> None:
    group = ExceptionGroup("nursery", [NotFound("a"), RuntimeError("b")])
    with pytest.raises(ExceptionGroup) as info:
        await ignore_errors(LookupError)(raising(group))(Message())
    assert info.value is group


async def test_a_nursery_failure_inside_the_handler_is_swallowed() -> None:
    async def fail() -> None:
        raise NotFound("child")

    async def handler(msg: Message) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)

    assert await ignore_errors(NotFound)(handler)(Message()) is None


async def test_the_result_of_a_successful_handler_is_returned() -> None:
    out = Message(b"out")

    async def handler(msg: Message) -> Message:
        return out

    assert await ignore_errors(ValueError)(handler)(Message()) is out


async def test_cancellation_is_never_swallowed(autojump_clock: Any) -> None:
    async def handler(msg: Message) -> None:
        await trio.sleep_forever()

    with trio.move_on_after(1.0) as scope:
        await ignore_errors(Exception)(handler)(Message())
    assert scope.cancelled_caught
