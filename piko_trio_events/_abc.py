"""The provider port: what every provider offers, whatever carries the messages."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias, runtime_checkable

import trio

from ._errors import ConfigError
from ._message import Message
from ._topics import validate_topic

if TYPE_CHECKING:
    from ._router import Router

__all__ = [
    "Provider",
    "Publisher",
    "StartPosition",
    "Subscriber",
    "validate_prefetch",
    "validate_start",
    "validate_subscription",
]

#: Where a group begins: ``"all"``, ``"new"``, a stream sequence or a time.
StartPosition: TypeAlias = Literal["all", "new"] | int | datetime | None


def validate_start(start: object) -> StartPosition:
    """Return ``start`` if it is a valid :data:`StartPosition`, else raise ConfigError."""
    if start is None or start == "all" or start == "new":
        return start
    if isinstance(start, datetime):
        return start
    if isinstance(start, int) and not isinstance(start, bool) and start >= 1:
        return start
    raise ConfigError(
        f"start must be 'all', 'new', a stream sequence >= 1 or a datetime, not {start!r}"
    )


def validate_prefetch(prefetch: object) -> int | None:
    """Return ``prefetch`` if it is None or an int >= 1, else raise ConfigError."""
    if prefetch is None:
        return None
    if isinstance(prefetch, int) and not isinstance(prefetch, bool) and prefetch >= 1:
        return prefetch
    raise ConfigError(f"prefetch must be an int >= 1 or None, not {prefetch!r}")


def validate_subscription(
    topic: str, group: object, start: object, prefetch: object = None
) -> tuple[StartPosition, int | None]:
    """Check ``subscribe``'s arguments (every provider's, and the router's for
    a handler): InvalidTopicError for the pattern, ConfigError for the rest.
    Returns ``(start, prefetch)`` checked."""
    validate_topic(topic, wildcards=True)
    if group is not None and (not isinstance(group, str) or not group):
        raise ConfigError(f"group must be a non-empty str or None, not {group!r}")
    return validate_start(start), validate_prefetch(prefetch)


@runtime_checkable
class Publisher(Protocol):
    """Sends messages to topics."""

    async def publish(self, topic: str, *messages: Message) -> None:
        """Publish ``messages`` to ``topic``, in order.

        Returns once every message is accepted (see each provider for what
        that means). Raises :class:`InvalidTopicError` at once for a bad
        topic, :class:`ProviderClosedError` after close.
        """
        ...

    async def flush(self) -> None:
        """Return once everything published before the call has been handed on."""
        ...


@runtime_checkable
class Subscriber(Protocol):
    """Opens subscriptions: async context managers yielding a trio ReceiveChannel."""

    def subscribe(
        self,
        topic: str,
        group: str | None = None,
        start: StartPosition = None,
        *,
        prefetch: int | None = None,
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[Message]]:
        """Subscribe to ``topic`` (a pattern: ``*`` and ``>`` allowed).

        Subscribers sharing a named ``group`` compete; different groups each
        get every message; ``group=None`` is private. Leaving the block
        unsubscribes and nacks every message delivered but not acked.

        ``prefetch`` (an int >= 1, or None for the provider's default) bounds
        how many messages the subscription takes ahead of its receivers and
        holds unsettled, where the provider has such a bound (see each
        provider); the router sets it from the handler's concurrency.
        """
        ...


@runtime_checkable
class Provider(Protocol):
    """A publisher, a subscriber and a router that share one lifetime."""

    @property
    def publisher(self) -> Publisher: ...

    @property
    def subscriber(self) -> Subscriber: ...

    @property
    def router(self) -> Router: ...

    @property
    def running(self) -> bool: ...
