"""Typed events, commands and request/reply: Watermill's cqrs and requestreply, for trio.

Runs on any provider (memory, core NATS, JetStream)::

    from piko_trio_events.cqrs import CommandBus, EventBus

    events = EventBus(provider)
    commands = CommandBus(provider)

    @events.handler
    async def on_placed(event: OrderPlaced) -> ChargeCard: ...

    @commands.handler
    async def charge(cmd: ChargeCard) -> ChargeResult: ...

    await events.publish(OrderPlaced(id=1))
    result = await commands.request(ChargeCard(order=1), timeout=5.0)

A value travels as its marshaler's bytes with its type's name in metadata
``name`` (Watermill cqrs's key), so several types can share a topic and a
Go Watermill service can read the same stream. Handlers are router
handlers: the router's middleware, metrics and drain apply to them.

:func:`values_of` (hypothesis strategies of a handler's type) loads
hypothesis when first used; importing this package does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import DecodeError as DecodeError
from .._errors import NoResponderError as NoResponderError
from .._errors import RequestError as RequestError
from ._bus import CommandBus as CommandBus
from ._bus import EventBus as EventBus
from ._bus import default_topic as default_topic
from ._marshal import NAME_KEY as NAME_KEY
from ._marshal import JSONMarshaler as JSONMarshaler
from ._marshal import Marshaler as Marshaler
from ._marshal import MsgspecMarshaler as MsgspecMarshaler
from ._marshal import PydanticMarshaler as PydanticMarshaler
from ._marshal import type_name as type_name

if TYPE_CHECKING:
    from ._strategies import values_of as values_of

__all__ = [
    "NAME_KEY",
    "CommandBus",
    "DecodeError",
    "EventBus",
    "JSONMarshaler",
    "Marshaler",
    "MsgspecMarshaler",
    "NoResponderError",
    "PydanticMarshaler",
    "RequestError",
    "default_topic",
    "type_name",
    "values_of",
]


def __getattr__(name: str) -> Any:
    if name == "values_of":
        from ._strategies import values_of

        globals()["values_of"] = values_of
        return values_of
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
