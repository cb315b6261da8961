"""Retry a failing handler in the same task, with exponential backoff."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import trio

from .._message import Message
from .._types import HandlerFunc, HandlerResult, Middleware
from ._validate import check_callable, check_int, check_number

__all__ = ["retry"]

_random = random.random


def retry(
    max_retries: int = 3,
    *,
    initial_interval: float = 0.1,
    multiplier: float = 2.0,
    max_interval: float = 10.0,
    max_elapsed_time: float | None = None,
    randomization_factor: float = 0.5,
    should_retry: Callable[[Exception], bool] | None = None,
    on_retry: Callable[[int, float, Exception], object] | None = None,
) -> Middleware:
    """Call the handler again when it raises, waiting longer each time.

    The message stays with this handler while it is retried: it is neither
    acked nor nacked in between, and only the outputs of the attempt that
    succeeds are returned. When no retry is left, the last exception
    propagates unchanged (so the router nacks the message).

    The n-th retry waits ``initial_interval * multiplier ** (n - 1)`` seconds,
    capped at ``max_interval``, then spread by ``randomization_factor``:
    uniformly within ``interval * (1 ± randomization_factor)`` and again capped
    at ``max_interval``, so no wait is longer than ``max_interval``.

    Only :class:`Exception` is retried: cancellation (``trio.Cancelled``) and
    other :class:`BaseException` pass straight through, and cancelling the task
    during a wait ends the retries at once. Order matters: ``retry`` outside
    :func:`~piko_trio_events.middleware.timeout` gives every attempt its own
    deadline; inside it, one deadline covers all attempts.

    Args:
        max_retries: how many times the handler is called again after its
            first failure (0: never).
        initial_interval: seconds before the first retry (>= 0).
        multiplier: how much each interval grows over the previous one (>= 1).
        max_interval: the longest wait between attempts, in seconds
            (>= ``initial_interval``).
        max_elapsed_time: if given, no retry starts later than this many
            seconds after the first attempt began; the last error propagates
            instead of waiting past it.
        randomization_factor: jitter, between 0 (exact intervals) and 1.
        should_retry: called with the error; returning False makes it
            propagate at once. Default: retry every :class:`Exception`.
        on_retry: called before each wait with the retry number (1, 2, ...),
            the wait in seconds and the error, e.g. to log it.

    Raises:
        ConfigError: if an argument is invalid (the message names it).
    """
    max_retries = check_int("max_retries", max_retries, minimum=0)
    initial_interval = check_number("initial_interval", initial_interval, minimum=0.0)
    multiplier = check_number("multiplier", multiplier, minimum=1.0)
    max_interval = check_number("max_interval", max_interval, minimum=initial_interval)
    deadline_after = (
        math.inf
        if max_elapsed_time is None
        else check_number("max_elapsed_time", max_elapsed_time, minimum=0.0, exclusive_minimum=True)
    )
    jitter = check_number("randomization_factor", randomization_factor, minimum=0.0, maximum=1.0)
    check_callable("should_retry", should_retry)
    check_callable("on_retry", on_retry)
    timed = max_elapsed_time is not None

    def middleware(handler: HandlerFunc) -> HandlerFunc:
        async def retrying(msg: Message) -> HandlerResult:
            retries = 0
            interval = initial_interval
            deadline = trio.current_time() + deadline_after if timed else math.inf
            while True:
                try:
                    return await handler(msg)
                except Exception as error:
                    if retries == max_retries or (
                        should_retry is not None and not should_retry(error)
                    ):
                        raise
                    delay = interval
                    if jitter:
                        delay = min(
                            interval * (1.0 + jitter * (2.0 * _random() - 1.0)), max_interval
                        )
                    if timed and trio.current_time() + delay > deadline:
                        raise
                    retries += 1
                    if on_retry is not None:
                        on_retry(retries, delay, error)
                    interval = min(interval * multiplier, max_interval)
                # Wait outside the except block, so that a later failure is not
                # chained to this one.
                await trio.sleep(delay)

        return retrying

    return middleware
