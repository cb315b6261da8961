"""The provider side of request/reply: a small private port.

A provider that carries replies offers ``_request_transport()``, returning a
new :class:`RequestTransport` for each bus that asks. The bus opens one reply
inbox with it (one subscription for all its concurrent requests) and sends
each request with the address of its reply; the handler's side sends the
reply to that address. The memory provider's transport (:class:`LocalRequests`,
here) hands replies over inside the process; the NATS provider's
(``piko_trio_events.nats._requests``) uses a core NATS inbox, on core NATS and
under JetStream alike.

A provider without one that wraps another (it has an ``inner`` provider, as
the chaos provider does) uses the wrapped provider's.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any, Final, Protocol

import trio

from ._abc import Provider
from ._errors import ConfigError
from ._message import Message
from ._uuid import new_uuid

__all__ = ["REPLY_TO_KEY", "Deliver", "LocalRequests", "RequestTransport", "transport_of"]

logger = logging.getLogger("piko_trio_events.cqrs")

#: The metadata key of a request that carries its reply's address.
REPLY_TO_KEY: Final = "_piko_reply_to"

#: ``deliver(token, reply)``: a reply arrived for the request ``token``; ``reply``
#: is None when the server says that no one serves the request's topic.
#: Called synchronously (on NATS from the connection's read loop): it must not block.
Deliver = Callable[[str, "Message | None"], None]


class RequestTransport(Protocol):
    """What a bus needs from its provider for request/reply."""

    async def open_inbox(self, deliver: Deliver) -> None:
        """Open this bus's reply inbox; every reply to it goes to ``deliver``.

        It lasts as long as the provider's connection.
        """
        ...

    def reply_to(self, token: str) -> str:
        """The address of the reply to request ``token`` (after :meth:`open_inbox`)."""
        ...

    async def send_request(self, topic: str, message: Message, reply_to: str) -> None:
        """Publish a request (its metadata already names ``reply_to``).

        Where the server can say that no one serves ``topic`` (core NATS), it
        is asked to, and the answer comes to ``deliver`` as a None reply.
        """
        ...

    async def send_reply(self, reply_to: str, message: Message) -> None:
        """Send a reply to the address a request named (at most once: no store)."""
        ...


def transport_of(provider: Provider) -> RequestTransport:
    """A new request transport of ``provider`` (or of the provider it wraps).

    Raises:
        ConfigError: the provider offers none.
    """
    current: Any = provider
    while current is not None:
        make = getattr(current, "_request_transport", None)
        if make is not None:
            transport: RequestTransport = make()
            return transport
        current = getattr(current, "inner", None)
    raise ConfigError(
        f"{type(provider).__name__} offers no request/reply transport "
        "(a provider offers one with a _request_transport() method)"
    )


# The inboxes of each in-process provider: inbox id -> its bus's deliver.
_local_inboxes: weakref.WeakKeyDictionary[Any, dict[str, Deliver]] = weakref.WeakKeyDictionary()


class LocalRequests:
    """Request/reply inside one process (the memory provider's transport).

    Requests go through the provider's publisher like any message; a reply
    is handed straight to the requesting bus (no queue, no task). Nothing
    can tell at once that no one serves a topic: such a request ends at its
    timeout.
    """

    def __init__(self, provider: Provider) -> None:
        self._provider = provider
        self._inboxes = _local_inboxes.setdefault(provider, {})
        self._prefix = ""

    async def open_inbox(self, deliver: Deliver) -> None:
        self._prefix = f"_INBOX.{new_uuid().replace('-', '')}"
        self._inboxes[self._prefix] = deliver
        await trio.lowlevel.checkpoint()

    def reply_to(self, token: str) -> str:
        return f"{self._prefix}.{token}"

    async def send_request(self, topic: str, message: Message, reply_to: str) -> None:
        await self._provider.publisher.publish(topic, message)

    async def send_reply(self, reply_to: str, message: Message) -> None:
        await trio.lowlevel.checkpoint()
        prefix, _, token = reply_to.rpartition(".")
        deliver = self._inboxes.get(prefix)
        if deliver is None:
            logger.debug("reply to %s dropped: no such inbox in this process", reply_to)
            return
        deliver(token, message.copy())
