"""Skip messages the handler already processed successfully, within a time window."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import trio

from .._message import Message
from .._types import HandlerFunc, HandlerResult, Middleware
from ._validate import check_callable, check_int, check_number

__all__ = ["deduplicator"]


def _uuid_key(msg: Message) -> str:
    return msg.uuid


def deduplicator(
    window: float = 60.0,
    *,
    key: Callable[[Message], str] | None = None,
    max_keys: int = 100_000,
) -> Middleware:
    """Process each message (by uuid, or by ``key``) at most once per window.

    A message whose key was processed successfully less than ``window``
    seconds ago (by trio's clock) returns at once without calling the handler,
    so the router acks it and publishes nothing. Only a handler that returned
    records its key: after an error, or a cancellation, the next delivery is
    processed again. While one message is being processed, another with the
    same key waits for it to finish, then is skipped if it succeeded.

    The keys live in memory, per wrapped handler (a handler wrapped by a
    router-level ``deduplicator`` has keys of its own, not shared with the
    other handlers) and per process: this removes the duplicates of
    at-least-once delivery, such as a redelivery after a lost ack, not
    duplicates across replicas. At most ``max_keys`` keys are remembered;
    beyond that the oldest are forgotten early, which can let a late
    duplicate through but never drops a new message.

    Args:
        window: how long a key is remembered after its message was processed,
            in seconds (> 0).
        key: computes a message's key; default: its uuid. An error it raises
            propagates (the router nacks).
        max_keys: the most keys remembered at once (>= 1).

    Raises:
        ConfigError: if an argument is invalid (the message names it).
    """
    window = check_number("window", window, minimum=0.0, exclusive_minimum=True)
    check_callable("key", key)
    max_keys = check_int("max_keys", max_keys, minimum=1)
    key_of = _uuid_key if key is None else key
    prune_every = window / 2

    def middleware(handler: HandlerFunc) -> HandlerFunc:
        # key -> when it expires, oldest first (the window is constant, so
        # insertion order is expiry order).
        seen: OrderedDict[str, float] = OrderedDict()
        # key -> None while processed, or an Event once another message waits for it.
        in_flight: dict[str, trio.Event | None] = {}
        next_prune = 0.0

        async def deduplicating(msg: Message) -> HandlerResult:
            nonlocal next_prune
            k = key_of(msg)
            expires = seen.get(k)
            if expires is not None:
                if expires > trio.current_time():
                    return None
                del seen[k]
            while k in in_flight:
                waiter = in_flight[k]
                if waiter is None:
                    waiter = in_flight[k] = trio.Event()
                await waiter.wait()
                expires = seen.get(k)
                if expires is not None and expires > trio.current_time():
                    return None
            in_flight[k] = None
            try:
                result = await handler(msg)
                now = trio.current_time()
                seen[k] = now + window
                seen.move_to_end(k)
                if len(seen) > max_keys:
                    seen.popitem(last=False)
                if now >= next_prune:
                    next_prune = now + prune_every
                    _prune(seen, now)
                return result
            finally:
                waiter = in_flight.pop(k)
                if waiter is not None:
                    waiter.set()

        return deduplicating

    return middleware


def _prune(seen: OrderedDict[str, float], now: float) -> None:
    """Forget the keys that expired (they are the oldest)."""
    while seen:
        oldest = next(iter(seen))
        if seen[oldest] > now:
            return
        del seen[oldest]
