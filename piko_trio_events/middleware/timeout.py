"""Give the handler a deadline."""

from __future__ import annotations

import trio

from .._errors import PikoEventsError
from .._message import Message
from .._types import HandlerFunc, HandlerResult, Middleware, current_handler_name
from ._validate import check_number

__all__ = ["HandlerTimeoutError", "timeout"]


class HandlerTimeoutError(PikoEventsError):
    """A handler did not finish within the deadline of :func:`timeout`.

    Attributes:
        seconds: the deadline that passed.
        handler_name: the router handler that ran out of time, if known.
    """

    def __init__(self, seconds: float, handler_name: str | None = None) -> None:
        super().__init__(seconds, handler_name)
        self.seconds = seconds
        self.handler_name = handler_name

    def __str__(self) -> str:
        who = "the handler" if self.handler_name is None else f"handler {self.handler_name!r}"
        return f"{who} did not finish within {self.seconds:g} seconds"


def timeout(seconds: float) -> Middleware:
    """Cancel the handler if it runs longer than ``seconds``.

    The handler runs inside a trio cancel scope whose deadline is ``seconds``
    after the call began. When the deadline passes, the handler is cancelled
    at its next checkpoint (so it can clean up in ``finally`` blocks) and
    :class:`HandlerTimeoutError` is raised in its place; the router then
    nacks the message. Cancellation from an enclosing scope is not turned
    into a timeout, and a ``trio.TooSlowError`` the handler raises itself
    propagates unchanged.

    Args:
        seconds: the deadline, a finite number of seconds > 0.

    Raises:
        ConfigError: if ``seconds`` is invalid.
    """
    seconds = check_number("seconds", seconds, minimum=0.0, exclusive_minimum=True)

    def middleware(handler: HandlerFunc) -> HandlerFunc:
        async def timed(msg: Message) -> HandlerResult:
            with trio.move_on_after(seconds):
                return await handler(msg)
            # Only reached when this scope's deadline cancelled the handler.
            raise HandlerTimeoutError(seconds, current_handler_name())

        return timed

    return middleware
