"""Handler and middleware types."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import TypeAlias

from ._message import Message

__all__ = [
    "HandlerFunc",
    "HandlerResult",
    "Middleware",
    "current_handler_name",
    "handler_outputs",
]

#: What a handler may return: nothing, one message, or several, for ``publish_topic``.
HandlerResult: TypeAlias = Sequence[Message] | Message | None


def handler_outputs(result: object) -> Sequence[object] | None:
    """What a handler returned, as a sequence of outputs: ``()`` for None,
    ``(result,)`` for one message, the sequence itself for several; None
    when it is not a handler result at all (a ``str``, a number, ...).

    The items are not checked: the router reports an item that is not a
    Message, middleware leaves it alone. The one place a result is read.
    """
    if result is None:
        return ()
    if isinstance(result, Message):
        return (result,)
    if isinstance(result, Sequence) and not isinstance(result, str | bytes):
        return result
    return None


#: A message handler. Returning normally acks the message (after its output
#: was published); raising nacks it.
HandlerFunc: TypeAlias = Callable[[Message], Awaitable[HandlerResult]]

#: Wraps a handler in another. The first middleware added runs outermost.
Middleware: TypeAlias = Callable[[HandlerFunc], HandlerFunc]


_current_handler: ContextVar[str | None] = ContextVar("piko_current_handler", default=None)


def current_handler_name() -> str | None:
    """The name of the router handler running in this task, or None outside one."""
    return _current_handler.get()
