"""circuit_breaker: fail fast after consecutive failures, trial after a timeout."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from piko_trio_events import ConfigError, HandlerFunc, Message, PikoEventsError
from piko_trio_events._types import _current_handler
from piko_trio_events.middleware import CircuitOpenError, CircuitState, circuit_breaker


class Switchable:
    """A handler that fails while ``failing`` is set; counts its calls."""

    def __init__(self, failing: bool = True, duration: float = 0.0) -> None:
        self.failing = failing
        self.duration = duration
        self.calls = 0

    async def __call__(self, msg: Message) -> Message:
        self.calls += 1
        if self.duration:
            await trio.sleep(self.duration)
        if self.failing:
            raise ConnectionError("downstream down")
        return Message(b"ok")


async def fail_times(wrapped: HandlerFunc, n: int) -> None:
    for _ in range(n):
        with pytest.raises(ConnectionError):
            await wrapped(Message())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_threshold": 2.0}, "failure_threshold"),
        ({"failure_threshold": False}, "failure_threshold"),
        ({"reset_timeout": 0}, "reset_timeout"),
        ({"reset_timeout": -1}, "reset_timeout"),
        ({"reset_timeout": float("nan")}, "reset_timeout"),
        ({"is_failure": 1}, "is_failure"),
        ({"on_state_change": "print"}, "on_state_change"),
    ],
)
def test_invalid_arguments_are_refused_at_construction(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        circuit_breaker(**kwargs)


async def test_opens_after_threshold_consecutive_failures(autojump_clock: Any) -> None:
    handler = Switchable()
    wrapped = circuit_breaker(failure_threshold=3, reset_timeout=10.0)(handler)
    await fail_times(wrapped, 3)
    await trio.sleep(4.0)
    with pytest.raises(CircuitOpenError) as info:
        await wrapped(Message())
    assert handler.calls == 3, "an open breaker does not call the handler"
    assert isinstance(info.value, PikoEventsError)
    assert info.value.retry_after == pytest.approx(6.0)
    assert "6 seconds" in str(info.value)


async def test_a_success_resets_the_consecutive_count(autojump_clock: Any) -> None:
    handler = Switchable()
    wrapped = circuit_breaker(failure_threshold=3)(handler)
    await fail_times(wrapped, 2)
    handler.failing = False
    await wrapped(Message())
    handler.failing = True
    await fail_times(wrapped, 2)
    assert handler.calls == 5
    await fail_times(wrapped, 1)  # the third in a row: still reaches the handler
    assert handler.calls == 6
    with pytest.raises(CircuitOpenError):
        await wrapped(Message())


async def test_after_reset_timeout_a_successful_trial_closes_it(autojump_clock: Any) -> None:
    handler = Switchable()
    wrapped = circuit_breaker(failure_threshold=1, reset_timeout=5.0)(handler)
    await fail_times(wrapped, 1)
    await trio.sleep(4.9)
    with pytest.raises(CircuitOpenError):
        await wrapped(Message())
    await trio.sleep(0.1)
    handler.failing = False
    result = await wrapped(Message())
    assert isinstance(result, Message)
    assert result.payload == b"ok"
    for _ in range(3):
        await wrapped(Message())
    assert handler.calls == 5


async def test_a_failed_trial_opens_it_again_for_reset_timeout(autojump_clock: Any) -> None:
    handler = Switchable()
    wrapped = circuit_breaker(failure_threshold=2, reset_timeout=5.0)(handler)
    await fail_times(wrapped, 2)
    await trio.sleep(5.0)
    await fail_times(wrapped, 1)  # the trial
    assert handler.calls == 3
    with pytest.raises(CircuitOpenError) as info:
        await wrapped(Message())
    assert info.value.retry_after == pytest.approx(5.0)
    assert handler.calls == 3


async def run_trial_with_two_waiting(
    handler: Switchable, wrapped: HandlerFunc
) -> tuple[list[float], list[CircuitOpenError]]:
    """Start a trial, then two more calls while it runs; return when each
    call started the handler (by handler.calls) and what was rejected."""
    rejected: list[CircuitOpenError] = []
    calls_seen: list[float] = []

    async def call() -> None:
        try:
            await wrapped(Message())
        except CircuitOpenError as error:
            rejected.append(error)
        except ConnectionError:
            pass
        calls_seen.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        assert handler.calls == 2  # the first failure, then the trial, running
        nursery.start_soon(call)
        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        assert handler.calls == 2, "calls during the trial wait for it"
    return calls_seen, rejected


async def test_calls_during_a_successful_trial_wait_then_go_through(autojump_clock: Any) -> None:
    handler = Switchable()
    wrapped = circuit_breaker(failure_threshold=1, reset_timeout=5.0)(handler)
    await fail_times(wrapped, 1)
    await trio.sleep(5.0)
    handler.failing = False
    handler.duration = 1.0
    ended, rejected = await run_trial_with_two_waiting(handler, wrapped)
    assert rejected == []
    assert handler.calls == 4
    assert ended == [6.0, 7.0, 7.0]


async def test_calls_during_a_failed_trial_are_rejected(autojump_clock: Any) -> None:
    handler = Switchable()
    wrapped = circuit_breaker(failure_threshold=1, reset_timeout=5.0)(handler)
    await fail_times(wrapped, 1)
    await trio.sleep(5.0)
    handler.duration = 1.0
    ended, rejected = await run_trial_with_two_waiting(handler, wrapped)
    assert handler.calls == 2
    assert ended == [6.0, 6.0, 6.0]
    assert [e.retry_after for e in rejected] == [5.0, 5.0]


async def test_a_cancelled_trial_frees_its_place(autojump_clock: Any) -> None:
    handler = Switchable()
    wrapped = circuit_breaker(failure_threshold=1, reset_timeout=5.0)(handler)
    await fail_times(wrapped, 1)
    await trio.sleep(5.0)
    handler.failing = False
    handler.duration = 10.0
    with trio.move_on_after(1.0) as scope:
        await wrapped(Message())
    assert scope.cancelled_caught
    handler.duration = 0.0
    await wrapped(Message())  # a new trial is allowed, and closes the breaker
    await wrapped(Message())
    assert handler.calls == 4


async def test_errors_that_are_not_failures_do_not_count(autojump_clock: Any) -> None:
    calls = 0

    async def handler(msg: Message) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad input")

    mw = circuit_breaker(failure_threshold=2, is_failure=lambda e: not isinstance(e, ValueError))
    wrapped = mw(handler)
    for _ in range(5):
        with pytest.raises(ValueError, match="bad input"):
            await wrapped(Message())
    assert calls == 5


async def test_state_changes_are_reported(autojump_clock: Any) -> None:
    changes: list[tuple[CircuitState, CircuitState, float]] = []

    def on_change(old: CircuitState, new: CircuitState) -> None:
        changes.append((old, new, trio.current_time()))

    handler = Switchable()
    wrapped = circuit_breaker(failure_threshold=1, reset_timeout=2.0, on_state_change=on_change)(
        handler
    )
    await fail_times(wrapped, 1)
    await trio.sleep(3.0)
    await fail_times(wrapped, 1)
    await trio.sleep(2.0)
    handler.failing = False
    await wrapped(Message())
    closed, open_, half_open = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
    assert changes == [
        (closed, open_, 0.0),
        (open_, half_open, 3.0),
        (half_open, open_, 3.0),
        (open_, half_open, 5.0),
        (half_open, closed, 5.0),
    ]


async def test_a_call_from_before_the_breaker_opened_does_not_close_it(
    autojump_clock: Any,
) -> None:
    slow_ok = Switchable(failing=False, duration=3.0)
    fast_fail = Switchable()

    async def handler(msg: Message) -> Message:
        return await (slow_ok if msg.payload == b"slow" else fast_fail)(msg)

    wrapped = circuit_breaker(failure_threshold=1, reset_timeout=10.0)(handler)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wrapped, Message(b"slow"))
        await trio.testing.wait_all_tasks_blocked()
        await fail_times(wrapped, 1)  # opens the breaker while "slow" is running
    assert trio.current_time() == 3.0  # "slow" succeeded, after the breaker opened
    with pytest.raises(CircuitOpenError):
        await wrapped(Message())


async def test_a_call_from_before_the_breaker_opened_cannot_decide_the_trial(
    autojump_clock: Any,
) -> None:
    outcomes = {
        b"old": (10.0, False),
        b"": (0.0, True),
        b"trial": (10.0, False),
        b"late": (0, False),
    }
    started: list[tuple[bytes, float]] = []

    async def handler(msg: Message) -> None:
        started.append((msg.payload, trio.current_time()))
        duration, fails = outcomes[msg.payload]
        await trio.sleep(duration)
        if fails:
            raise ConnectionError("down")

    wrapped = circuit_breaker(failure_threshold=1, reset_timeout=5.0)(handler)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wrapped, Message(b"old"))  # runs 0..10, succeeds
        await trio.testing.wait_all_tasks_blocked()
        await fail_times(wrapped, 1)  # opens at 0
        await trio.sleep(5.0)
        nursery.start_soon(wrapped, Message(b"trial"))  # the trial, 5..15
        await trio.sleep(6.0)  # now 11: "old" succeeded at 10, the trial still runs
        nursery.start_soon(wrapped, Message(b"late"))
        await trio.testing.wait_all_tasks_blocked()
        assert [p for p, _ in started] == [b"old", b"", b"trial"], (
            "a call arriving during the trial waits for it"
        )
    assert started[-1] == (b"late", 15.0)


async def test_a_failure_from_before_the_breaker_opened_does_not_reopen_it(
    autojump_clock: Any,
) -> None:
    outcomes = {
        b"old": (10.0, True),
        b"": (0.0, True),
        b"trial": (10.0, False),
        b"late": (0, False),
    }
    results: dict[bytes, str] = {}

    async def handler(msg: Message) -> None:
        duration, fails = outcomes[msg.payload]
        await trio.sleep(duration)
        if fails:
            raise ConnectionError("down")

    wrapped = circuit_breaker(failure_threshold=1, reset_timeout=5.0)(handler)

    async def call(payload: bytes) -> None:
        try:
            await wrapped(Message(payload))
        except Exception as error:
            results[payload] = type(error).__name__
        else:
            results[payload] = f"ok at {trio.current_time():g}"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, b"old")  # runs 0..10, fails
        await trio.testing.wait_all_tasks_blocked()
        await fail_times(wrapped, 1)  # opens at 0
        await trio.sleep(5.0)
        nursery.start_soon(call, b"trial")  # the trial, 5..15, succeeds
        await trio.sleep(6.0)  # now 11: "old" failed at 10, the trial still runs
        nursery.start_soon(call, b"late")
    assert results == {
        b"old": "ConnectionError",
        b"trial": "ok at 15",
        b"late": "ok at 15",
    }


async def test_the_error_names_the_router_handler(autojump_clock: Any) -> None:
    wrapped = circuit_breaker(failure_threshold=1)(Switchable())
    token = _current_handler.set("billing")
    try:
        await fail_times(wrapped, 1)
        with pytest.raises(CircuitOpenError, match="handler 'billing'") as info:
            await wrapped(Message())
    finally:
        _current_handler.reset(token)
    assert info.value.handler_name == "billing"


async def test_each_wrapped_handler_has_its_own_breaker(autojump_clock: Any) -> None:
    mw = circuit_breaker(failure_threshold=1)
    broken, healthy = Switchable(), Switchable(failing=False)
    await fail_times(mw(broken), 1)
    assert isinstance(await mw(healthy)(Message()), Message)


async def test_a_waiting_call_becomes_the_trial_if_the_trial_is_cancelled(
    autojump_clock: Any,
) -> None:
    handler = Switchable()
    wrapped = circuit_breaker(failure_threshold=1, reset_timeout=5.0)(handler)
    await fail_times(wrapped, 1)
    await trio.sleep(5.0)
    handler.failing = False
    handler.duration = 1.0
    async with trio.open_nursery() as nursery:
        trial_scope = trio.CancelScope()

        async def trial() -> None:
            with trial_scope:
                await wrapped(Message())

        nursery.start_soon(trial)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(wrapped, Message())
        await trio.testing.wait_all_tasks_blocked()
        assert handler.calls == 2
        trial_scope.cancel()
    assert handler.calls == 3
    assert trio.current_time() == 6.0
