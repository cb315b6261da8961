"""retry: in-process retries with exponential backoff on trio's clock."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
import trio.testing

from piko_trio_events import ConfigError, Message
from piko_trio_events.middleware import retry


class Flaky:
    """A handler that fails ``failures`` times, then returns ``output``; it
    records the time of every call."""

    def __init__(self, failures: int, output: Message | None = None) -> None:
        self.failures = failures
        self.output = output
        self.calls: list[float] = []
        self.errors: list[Exception] = []

    async def __call__(self, msg: Message) -> Message | None:
        self.calls.append(trio.current_time())
        if len(self.calls) <= self.failures:
            error = RuntimeError(f"failure {len(self.calls)}")
            self.errors.append(error)
            raise error
        return self.output


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 9) for a, b in itertools.pairwise(times)]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"initial_interval": -0.1}, "initial_interval"),
        ({"initial_interval": float("nan")}, "initial_interval"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"multiplier": float("inf")}, "multiplier"),
        ({"max_interval": 0.05}, "max_interval"),  # below initial_interval
        ({"max_elapsed_time": 0}, "max_elapsed_time"),
        ({"max_elapsed_time": "1"}, "max_elapsed_time"),
        ({"randomization_factor": 1.5}, "randomization_factor"),
        ({"randomization_factor": -0.1}, "randomization_factor"),
        ({"should_retry": 3}, "should_retry"),
        ({"on_retry": "log"}, "on_retry"),
    ],
)
def test_invalid_arguments_are_refused_at_construction(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        retry(**kwargs)


async def test_returns_the_output_of_the_attempt_that_succeeds(autojump_clock: Any) -> None:
    output = Message(b"out")
    handler = Flaky(failures=2, output=output)
    result = await retry(max_retries=3)(handler)(Message(b"in"))
    assert result is output
    assert len(handler.calls) == 3


async def test_reraises_the_last_error_once_retries_run_out(autojump_clock: Any) -> None:
    handler = Flaky(failures=10)
    with pytest.raises(RuntimeError) as info:
        await retry(max_retries=2)(handler)(Message())
    assert len(handler.calls) == 3
    assert info.value is handler.errors[-1]
    assert info.value.__context__ is None  # not chained to the earlier failures


async def test_zero_retries_calls_once(autojump_clock: Any) -> None:
    handler = Flaky(failures=1)
    with pytest.raises(RuntimeError):
        await retry(max_retries=0)(handler)(Message())
    assert len(handler.calls) == 1


async def test_waits_grow_exponentially_up_to_max_interval(autojump_clock: Any) -> None:
    handler = Flaky(failures=6)
    mw = retry(
        max_retries=5,
        initial_interval=1.0,
        multiplier=3.0,
        max_interval=5.0,
        randomization_factor=0.0,
    )
    with pytest.raises(RuntimeError):
        await mw(handler)(Message())
    assert gaps(handler.calls) == [1.0, 3.0, 5.0, 5.0, 5.0]


async def test_jitter_spreads_waits_within_bounds(autojump_clock: Any) -> None:
    handler = Flaky(failures=41)
    mw = retry(
        max_retries=40,
        initial_interval=1.0,
        multiplier=1.0,
        max_interval=1.2,
        randomization_factor=0.5,
    )
    with pytest.raises(RuntimeError):
        await mw(handler)(Message())
    waits = gaps(handler.calls)
    assert len(waits) == 40
    assert all(0.5 <= w <= 1.2 for w in waits), waits
    assert len(set(waits)) > 10, "jitter should vary the waits"
    assert max(waits) == 1.2, "waits above max_interval are capped to it"


async def test_should_retry_false_propagates_at_once(autojump_clock: Any) -> None:
    seen: list[Exception] = []

    def should_retry(error: Exception) -> bool:
        seen.append(error)
        return False

    handler = Flaky(failures=3)
    with pytest.raises(RuntimeError) as info:
        await retry(max_retries=3, should_retry=should_retry)(handler)(Message())
    assert len(handler.calls) == 1
    assert seen == [info.value]


async def test_should_retry_selects_errors(autojump_clock: Any) -> None:
    calls = 0

    async def handler(msg: Message) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("transient")
        raise KeyError("permanent")

    mw = retry(max_retries=10, should_retry=lambda e: isinstance(e, ConnectionError))
    with pytest.raises(KeyError):
        await mw(handler)(Message())
    assert calls == 3


async def test_on_retry_is_called_before_each_wait(autojump_clock: Any) -> None:
    events: list[tuple[int, float, str, float]] = []

    def on_retry(number: int, delay: float, error: Exception) -> None:
        events.append((number, delay, str(error), trio.current_time()))

    handler = Flaky(failures=2)
    mw = retry(max_retries=5, initial_interval=0.5, randomization_factor=0.0, on_retry=on_retry)
    await mw(handler)(Message())
    start = handler.calls[0]
    assert [(n, d, e, round(t - start, 9)) for n, d, e, t in events] == [
        (1, 0.5, "failure 1", 0.0),
        (2, 1.0, "failure 2", 0.5),
    ]


async def test_max_elapsed_time_stops_retries_that_would_start_too_late(
    autojump_clock: Any,
) -> None:
    handler = Flaky(failures=10)
    mw = retry(
        max_retries=10,
        initial_interval=1.0,
        multiplier=2.0,
        max_interval=100.0,
        max_elapsed_time=3.5,
        randomization_factor=0.0,
    )
    with pytest.raises(RuntimeError) as info:
        await mw(handler)(Message())
    # attempts at 0, 1, 3; the next would start at 7 > 3.5
    assert gaps(handler.calls) == [1.0, 2.0]
    assert info.value is handler.errors[-1]


async def test_cancellation_during_a_wait_ends_the_retries(autojump_clock: Any) -> None:
    handler = Flaky(failures=10)
    mw = retry(max_retries=10, initial_interval=10.0, randomization_factor=0.0)
    with trio.move_on_after(15.0) as scope:
        await mw(handler)(Message())
    assert scope.cancelled_caught
    assert len(handler.calls) == 2  # at 0 and 10; the wait until 30 was cancelled


async def test_cancellation_of_the_handler_is_not_retried(autojump_clock: Any) -> None:
    calls = 0

    async def handler(msg: Message) -> None:
        nonlocal calls
        calls += 1
        await trio.sleep_forever()

    with trio.move_on_after(1.0) as scope:
        await retry(max_retries=5)(handler)(Message())
    assert scope.cancelled_caught
    assert calls == 1


class Interrupt(BaseException):
    pass


async def test_base_exceptions_are_not_retried() -> None:
    calls = 0

    async def handler(msg: Message) -> None:
        nonlocal calls
        calls += 1
        raise Interrupt

    with pytest.raises(Interrupt):
        await retry(max_retries=5)(handler)(Message())
    assert calls == 1


async def test_first_success_adds_no_wait(autojump_clock: Any) -> None:
    handler = Flaky(failures=0)
    start = trio.current_time()
    await retry()(handler)(Message())
    assert trio.current_time() == start
