"""Stop calling a handler that keeps failing, and try again later."""

from __future__ import annotations

import enum
from collections.abc import Callable

import trio

from .._errors import PikoEventsError
from .._message import Message
from .._types import HandlerFunc, HandlerResult, Middleware, current_handler_name
from ._validate import check_callable, check_int, check_number

__all__ = ["CircuitOpenError", "CircuitState", "circuit_breaker"]


class CircuitState(enum.StrEnum):
    """The states of a circuit breaker."""

    CLOSED = "closed"
    """Calls go through; consecutive failures are counted."""
    OPEN = "open"
    """Calls fail at once with :class:`CircuitOpenError`."""
    HALF_OPEN = "half_open"
    """One trial call goes through; its outcome closes or reopens the circuit."""


class CircuitOpenError(PikoEventsError):
    """The circuit breaker is open: the handler was not called.

    Attributes:
        retry_after: seconds until the breaker lets a trial call through
            (a good delay before redelivering the message).
        handler_name: the router handler whose breaker is open, if known.
    """

    def __init__(self, retry_after: float, handler_name: str | None = None) -> None:
        super().__init__(retry_after, handler_name)
        self.retry_after = retry_after
        self.handler_name = handler_name

    def __str__(self) -> str:
        who = "the handler" if self.handler_name is None else f"handler {self.handler_name!r}"
        return (
            f"circuit breaker open: {who} is not called for another {self.retry_after:.3g} seconds"
        )


_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN


class _Breaker:
    """The state of one breaker.

    Every call is tagged with the generation (the count of state changes) it
    started in; an outcome from an earlier generation is ignored, so a call
    that began before a state change cannot undo it.
    """

    __slots__ = (
        "failures",
        "generation",
        "is_failure",
        "on_state_change",
        "opened_at",
        "reset_timeout",
        "state",
        "threshold",
        "trial",
    )

    def __init__(
        self,
        threshold: int,
        reset_timeout: float,
        is_failure: Callable[[Exception], bool] | None,
        on_state_change: Callable[[CircuitState, CircuitState], object] | None,
    ) -> None:
        self.threshold = threshold
        self.reset_timeout = reset_timeout
        self.is_failure = is_failure
        self.on_state_change = on_state_change
        self.state = _CLOSED
        self.generation = 0
        self.failures = 0
        self.opened_at = 0.0
        # Set while a half-open trial runs; the other callers wait on it.
        self.trial: trio.Event | None = None

    def _switch(self, state: CircuitState) -> None:
        old = self.state
        self.state = state
        self.generation += 1
        self.failures = 0
        if state is _OPEN:
            self.opened_at = trio.current_time()
        self._end_trial()
        if self.on_state_change is not None:
            self.on_state_change(old, state)

    def _end_trial(self) -> None:
        trial = self.trial
        if trial is not None:
            self.trial = None
            trial.set()

    async def admit(self) -> int:
        """The slow path, when not closed: return the generation a call starts
        in, once it may start, or raise CircuitOpenError."""
        while True:
            state = self.state
            if state is _CLOSED:
                return self.generation
            if state is _OPEN:
                wait = self.opened_at + self.reset_timeout - trio.current_time()
                if wait > 0:
                    raise CircuitOpenError(wait, current_handler_name())
                self._switch(_HALF_OPEN)
            trial = self.trial
            if trial is None:
                self.trial = trio.Event()
                return self.generation
            await trial.wait()

    def succeeded(self, generation: int) -> None:
        if generation != self.generation:
            return
        if self.state is _HALF_OPEN:
            self._switch(_CLOSED)
        else:
            self.failures = 0

    def failed(self, generation: int, error: Exception) -> None:
        if generation != self.generation:
            return
        if self.is_failure is not None and not self.is_failure(error):
            self.succeeded(generation)
        elif self.state is _HALF_OPEN:
            self._switch(_OPEN)
        else:
            self.failures += 1
            if self.failures >= self.threshold:
                self._switch(_OPEN)

    def abandoned(self, generation: int) -> None:
        """A call ended without an outcome (cancelled): let another trial go."""
        if generation == self.generation and self.state is _HALF_OPEN:
            self._end_trial()


def circuit_breaker(
    failure_threshold: int = 5,
    reset_timeout: float = 30.0,
    *,
    is_failure: Callable[[Exception], bool] | None = None,
    on_state_change: Callable[[CircuitState, CircuitState], object] | None = None,
) -> Middleware:
    """Fail fast while the handler keeps failing.

    The breaker starts closed: calls go through. After ``failure_threshold``
    consecutive failures it opens: for ``reset_timeout`` seconds (trio's
    clock) the handler is not called and :class:`CircuitOpenError` is raised
    instead, so the router nacks the message for redelivery; its
    ``retry_after`` says when the breaker will try again. Then it is
    half-open: the next call goes through as a trial, and calls that arrive
    meanwhile wait for its outcome. If the trial succeeds the breaker closes
    and they go through; if it fails the breaker opens again for another
    ``reset_timeout`` and they get CircuitOpenError. A trial that is
    cancelled lets the next waiting call be the trial.

    A failure is an :class:`Exception` for which ``is_failure`` returns True
    (by default, every one); an error it does not count propagates as usual
    but counts as a success (it resets the consecutive count, and closes a
    half-open breaker). A call that began before the state changed does not
    count, whatever its outcome.

    The state is per wrapped handler: a router-level ``circuit_breaker`` gives
    each handler its own breaker.

    Args:
        failure_threshold: consecutive failures that open the breaker (>= 1).
        reset_timeout: seconds the breaker stays open before a trial (> 0).
        is_failure: decides whether an error counts as a failure.
        on_state_change: called with the old and the new :class:`CircuitState`
            at each change, e.g. to log or export it. The change from open to
            half-open happens at the first call after ``reset_timeout``.

    Raises:
        ConfigError: if an argument is invalid (the message names it).
    """
    failure_threshold = check_int("failure_threshold", failure_threshold, minimum=1)
    reset_timeout = check_number(
        "reset_timeout", reset_timeout, minimum=0.0, exclusive_minimum=True
    )
    check_callable("is_failure", is_failure)
    check_callable("on_state_change", on_state_change)

    def middleware(handler: HandlerFunc) -> HandlerFunc:
        breaker = _Breaker(failure_threshold, reset_timeout, is_failure, on_state_change)
        admit = breaker.admit
        succeeded = breaker.succeeded
        failed = breaker.failed

        async def guarded(msg: Message) -> HandlerResult:
            generation = breaker.generation if breaker.state is _CLOSED else await admit()
            try:
                result = await handler(msg)
            except Exception as error:
                failed(generation, error)
                raise
            except BaseException:
                breaker.abandoned(generation)
                raise
            succeeded(generation)
            return result

        return guarded

    return middleware
