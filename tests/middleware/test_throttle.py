"""throttle: at most ``count`` handler starts within any ``period`` seconds."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from piko_trio_events import ConfigError, Message
from piko_trio_events.middleware import throttle


class Starts:
    """A handler that records when it started, and takes ``duration`` seconds."""

    def __init__(self, duration: float = 0.0) -> None:
        self.times: list[float] = []
        self.duration = duration

    async def __call__(self, msg: Message) -> None:
        self.times.append(trio.current_time())
        if self.duration:
            await trio.sleep(self.duration)


def assert_rate(times: list[float], count: int, period: float) -> None:
    """No window of ``period`` seconds holds more than ``count`` starts."""
    ordered = sorted(times)
    for i in range(len(ordered) - count):
        assert ordered[i + count] - ordered[i] >= period - 1e-9, ordered


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((0, 1.0), "count"),
        ((-1, 1.0), "count"),
        ((1.5, 1.0), "count"),
        ((True, 1.0), "count"),
        ((1, 0), "period"),
        ((1, -1.0), "period"),
        ((1, float("inf")), "period"),
        ((1, "1"), "period"),
    ],
)
def test_invalid_arguments_are_refused_at_construction(args: tuple[Any, Any], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        throttle(*args)


async def test_sequential_messages_pass_count_per_period(autojump_clock: Any) -> None:
    handler = Starts()
    wrapped = throttle(2, 1.0)(handler)
    for _ in range(5):
        await wrapped(Message())
    assert handler.times == [0.0, 0.0, 1.0, 1.0, 2.0]


async def test_slow_arrivals_are_not_delayed(autojump_clock: Any) -> None:
    handler = Starts()
    wrapped = throttle(1, 1.0)(handler)
    for _ in range(3):
        await wrapped(Message())
        await trio.sleep(1.5)
    assert handler.times == [0.0, 1.5, 3.0]


async def test_irregular_arrivals_never_exceed_the_rate(autojump_clock: Any) -> None:
    handler = Starts()
    wrapped = throttle(3, 2.0)(handler)
    arrivals = [0.0, 0.1, 0.2, 0.3, 0.4, 2.5, 2.6, 5.0, 5.0, 5.0, 5.0, 5.0, 9.0]

    async def arrive(at: float) -> None:
        await trio.sleep_until(at)
        await wrapped(Message())

    async with trio.open_nursery() as nursery:
        for at in arrivals:
            nursery.start_soon(arrive, at)
    assert len(handler.times) == len(arrivals)
    assert_rate(handler.times, 3, 2.0)
    assert all(t >= a for t, a in zip(sorted(handler.times), arrivals, strict=True))
    # Nothing waits longer than the rule requires.
    assert sorted(handler.times) == pytest.approx(
        [0.0, 0.1, 0.2, 2.0, 2.1, 2.5, 4.0, 5.0, 5.0, 6.0, 7.0, 7.0, 9.0]
    )


async def test_concurrent_callers_share_the_limit(autojump_clock: Any) -> None:
    handler = Starts(duration=10.0)
    wrapped = throttle(2, 1.0)(handler)
    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(wrapped, Message())
    assert sorted(handler.times) == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


async def test_a_message_that_passes_at_once_adds_no_checkpoint(autojump_clock: Any) -> None:
    wrapped = throttle(2, 1.0)(Starts())
    with trio.CancelScope() as scope:
        scope.cancel()
        await wrapped(Message())  # a checkpoint would raise Cancelled here
    assert not scope.cancelled_caught


async def test_each_wrapped_handler_has_its_own_limit(autojump_clock: Any) -> None:
    first, second = Starts(), Starts()
    mw = throttle(1, 1.0)
    a, b = mw(first), mw(second)
    await a(Message())
    await b(Message())
    assert first.times == second.times == [0.0]
