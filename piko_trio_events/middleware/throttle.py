"""Limit how many messages per period reach the handler."""

from __future__ import annotations

from collections import deque

import trio

from .._message import Message
from .._types import HandlerFunc, HandlerResult, Middleware
from ._validate import check_int, check_number

__all__ = ["throttle"]


def throttle(count: int, period: float) -> Middleware:
    """Let at most ``count`` handler calls start within any ``period`` seconds.

    A sliding window over trio's clock: up to ``count`` messages go through at
    once, and a message that would exceed the limit waits (``trio.sleep``)
    until the oldest of the last ``count`` starts is ``period`` seconds old.
    Each waiting message reserves its start time on arrival, so later arrivals
    never overtake it; a message that passes without waiting costs no
    checkpoint. The limit is per wrapped handler (a
    router-level ``throttle`` limits each handler on its own) and holds
    across the handler's concurrent tasks.

    The wait holds the message (unacked), which also slows intake: that is
    the point. A message cancelled while waiting keeps its turn unused, so
    the rate only ever errs on the slow side.

    Args:
        count: messages per period (>= 1).
        period: the window in seconds (> 0).

    Raises:
        ConfigError: if an argument is invalid (the message names it).
    """
    count = check_int("count", count, minimum=1)
    period = check_number("period", period, minimum=0.0, exclusive_minimum=True)

    def middleware(handler: HandlerFunc) -> HandlerFunc:
        # The start times of the last `count` calls (reserved, for those still
        # waiting), never decreasing.
        starts: deque[float] = deque(maxlen=count)

        async def throttled(msg: Message) -> HandlerResult:
            now = trio.current_time()
            if len(starts) == count:
                start = starts[0] + period
                if start > now:
                    starts.append(start)
                    await trio.sleep_until(start)
                    return await handler(msg)
            starts.append(now)
            return await handler(msg)

        return throttled

    return middleware
