"""Treat some handler errors as success."""

from __future__ import annotations

from .._errors import ConfigError
from .._message import Message
from .._types import HandlerFunc, HandlerResult, Middleware

__all__ = ["ignore_errors"]


def ignore_errors(*exception_types: type[Exception]) -> Middleware:
    """Swallow the given exceptions, so the router acks the message.

    An error that is an instance of one of ``exception_types`` (subclasses
    included) makes the handler return None: the message is acked and
    nothing is published. So does an :class:`ExceptionGroup` (from a nursery
    inside the handler) all of whose leaf exceptions are such instances.
    Every other error propagates unchanged.

    Args:
        *exception_types: one or more :class:`Exception` subclasses.
            ``BaseException`` types (``trio.Cancelled``, ``KeyboardInterrupt``)
            are refused: swallowing them would break cancellation.

    Raises:
        ConfigError: if no type is given, or one is not an Exception subclass.
    """
    if not exception_types:
        raise ConfigError("exception_types: give at least one Exception subclass to ignore")
    for exc_type in exception_types:
        if not isinstance(exc_type, type) or not issubclass(exc_type, Exception):
            raise ConfigError(f"exception_types must be Exception subclasses, not {exc_type!r}")
    ignored = tuple(exception_types)

    def middleware(handler: HandlerFunc) -> HandlerFunc:
        async def ignoring(msg: Message) -> HandlerResult:
            try:
                return await handler(msg)
            except ignored:
                return None
            except ExceptionGroup as group:
                if group.split(ignored)[1] is None:
                    return None
                raise

        return ignoring

    return middleware
