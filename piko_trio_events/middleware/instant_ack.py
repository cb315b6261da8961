"""Ack each message before its handler runs."""

from __future__ import annotations

from .._message import Message
from .._types import HandlerFunc, HandlerResult, Middleware

__all__ = ["instant_ack"]


def instant_ack() -> Middleware:
    """Ack the message first, then call the handler.

    The message is acked whatever the handler then does: an error still
    propagates (and is logged by the router), but the nack that follows has
    no effect, so the message is not redelivered. This trades at-least-once
    for at-most-once delivery: a failed or interrupted message is lost. Use
    it where the sender must not wait for processing (a memory publisher
    with ``block_publish_until_ack`` returns before the handler ran) and a
    lost message is acceptable. An error from ``ack()`` (such as
    :class:`~piko_trio_events.AckError`) propagates without calling the
    handler.
    """
    return _instant_ack


def _instant_ack(handler: HandlerFunc) -> HandlerFunc:
    async def acking(msg: Message) -> HandlerResult:
        await msg.ack()
        return await handler(msg)

    return acking
