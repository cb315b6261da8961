"""Carry a correlation id from each message to the messages its handler produces."""

from __future__ import annotations

from typing import Final

from .._errors import ConfigError
from .._message import Message
from .._types import HandlerFunc, HandlerResult, Middleware, handler_outputs

__all__ = [
    "CORRELATION_ID_KEY",
    "correlation_id",
    "get_correlation_id",
    "set_correlation_id",
]

#: The metadata key that holds a message's correlation id.
CORRELATION_ID_KEY: Final = "correlation_id"


def set_correlation_id(msg: Message, correlation_id: str) -> None:
    """Give ``msg`` a correlation id, unless it already has one.

    Call it on the first message of a flow, as it enters the system (for a
    message produced while serving a request, use the request's id); the
    :func:`correlation_id` middleware then carries it along.

    Raises:
        ConfigError: if ``correlation_id`` is not a non-empty str without line breaks.
    """
    if (
        not isinstance(correlation_id, str)
        or not correlation_id
        or "\n" in correlation_id
        or "\r" in correlation_id
    ):
        raise ConfigError(
            f"correlation_id must be a non-empty str without line breaks, not {correlation_id!r}"
        )
    if not msg.metadata.get(CORRELATION_ID_KEY):
        msg.metadata[CORRELATION_ID_KEY] = correlation_id


def get_correlation_id(msg: Message) -> str | None:
    """The correlation id of ``msg``, or None if it has none."""
    return msg.metadata.get(CORRELATION_ID_KEY) or None


def correlation_id() -> Middleware:
    """Copy the input's correlation id to every message the handler returns.

    After the handler returned, each output message whose ``correlation_id``
    metadata is missing or empty gets the input's; outputs that have their
    own keep it, and nothing changes when the input has none. The outputs are
    changed in place and returned as they are; a handler that raises is not
    affected.
    """
    return _correlate


def _correlate(handler: HandlerFunc) -> HandlerFunc:
    async def correlating(msg: Message) -> HandlerResult:
        result = await handler(msg)
        if result is None:
            return None
        cid = msg.metadata.get(CORRELATION_ID_KEY)
        if not cid:
            return result
        for out in handler_outputs(result) or ():
            # Anything but a Message is left for the router to report.
            if isinstance(out, Message) and not out.metadata.get(CORRELATION_ID_KEY):
                out.metadata[CORRELATION_ID_KEY] = cid
        return result

    return correlating
