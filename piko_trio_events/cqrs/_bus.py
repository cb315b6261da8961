"""EventBus and CommandBus: typed handlers on the router, and request/reply.

Watermill's ``components/cqrs`` and ``components/requestreply``, trio-native:
a typed handler is a router handler whose function decodes the message,
calls yours, and publishes what it returns; a request is a command whose
reply comes back on the bus's one reply inbox.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import re
import types
import typing
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import Any, Final, TypeVar, overload

import trio

from .._abc import Provider, StartPosition
from .._errors import ConfigError, DecodeError, NoResponderError, RequestError
from .._message import Message
from .._request_transport import REPLY_TO_KEY, RequestTransport, transport_of
from .._router import HandlerOutputError
from .._topics import validate_topic
from .._types import HandlerFunc, Middleware, current_handler_name
from .._uuid import derived_uuid
from ._marshal import NAME_KEY, JSONMarshaler, Marshaler, type_name
from ._metrics import cqrs_metrics

__all__ = [
    "ERROR_KEY",
    "ERROR_TYPE_KEY",
    "HAS_ERROR_KEY",
    "CommandBus",
    "EventBus",
    "default_topic",
]

logger = logging.getLogger("piko_trio_events.cqrs")

R = TypeVar("R")
F = TypeVar("F", bound=Callable[[Any], Awaitable[Any]])

#: Reply metadata (Watermill requestreply's keys): "1" if the handler raised ...
HAS_ERROR_KEY: Final = "_watermill_requestreply_has_error"
#: ... and then the error's message ...
ERROR_KEY: Final = "_watermill_requestreply_error"
#: ... and its type's name (this library's addition).
ERROR_TYPE_KEY: Final = "_piko_requestreply_error_type"

_UNSAFE_TOKEN = re.compile(r"[\s*>\x00-\x1f\x7f]")
#: Values that carry no type of their own: an output of one of these takes
#: its type from the handler's return annotation.
_PLAIN: Final = (dict, list, tuple, str, int, float, bool)
_POISON_MODULE: Final = "piko_trio_events.middleware.poison_queue"


def default_topic(prefix: str) -> Callable[[str], str]:
    """The default ``topic_of``: ``<prefix>.<type name>``, every character a
    topic cannot hold (whitespace, ``*``, ``>``) replaced by ``_``; a dotted
    name keeps its dots (``events.orders.Placed``)."""

    def topic_of(name: str) -> str:
        tokens = [_UNSAFE_TOKEN.sub("_", token) or "_" for token in name.split(".")]
        return ".".join((prefix, *tokens))

    return topic_of


class _Links:
    """The buses of one provider: they route each other's outputs and share
    what they know of types."""

    def __init__(self) -> None:
        self.buses: list[_Bus] = []

    def type_of(self, name: str) -> Any:
        for bus in self.buses:
            cls = bus._known.get(name)
            if cls is not None:
                return cls
        return None

    def command_bus_for(self, cls: Any) -> CommandBus | None:
        for bus in self.buses:
            if isinstance(bus, CommandBus) and cls in bus._command_types:
                return bus
        return None

    def event_bus(self, provider: Provider) -> EventBus:
        for bus in self.buses:
            if isinstance(bus, EventBus):
                return bus
        return EventBus(provider)


_links: weakref.WeakKeyDictionary[Any, _Links] = weakref.WeakKeyDictionary()


class _Pending:
    """One request waiting for its reply."""

    __slots__ = ("done", "event", "reply")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: Message | None = None
        self.done = False


class _TypedHandler:
    """A registered typed handler: what the router function needs."""

    __slots__ = ("cls", "func", "name", "returns", "topic", "type_name")

    def __init__(
        self, name: str, func: Callable[[Any], Awaitable[Any]], cls: Any, returns: Any
    ) -> None:
        self.name = name
        self.func = func
        self.cls = cls
        self.returns = returns
        self.type_name = ""
        self.topic = ""


class _Bus:
    """What the event bus and the command bus share."""

    _prefix = ""

    def __init__(
        self,
        provider: Provider,
        *,
        marshaler: Marshaler | None = None,
        topic_of: Callable[[str], str] | None = None,
    ) -> None:
        if not hasattr(provider, "router") or not hasattr(provider, "publisher"):
            raise TypeError(f"provider must be a Provider, not {provider!r}")
        if marshaler is None:
            marshaler = JSONMarshaler()
        elif not isinstance(marshaler, Marshaler):
            raise TypeError(f"marshaler must be a Marshaler, not {marshaler!r}")
        if topic_of is not None and not callable(topic_of):
            raise TypeError(f"topic_of must be callable, not {topic_of!r}")
        self._provider = provider
        self._marshaler = marshaler
        self._topic_of = default_topic(self._prefix) if topic_of is None else topic_of
        self._topics: dict[Any, str] = {}
        self._known: dict[str, Any] = {}  # type name -> type
        self._handlers: list[_TypedHandler] = []
        self._metrics = cqrs_metrics()
        #: Messages that did not decode (bad payload, missing or unknown name).
        self.decode_errors = 0
        links = _links.get(provider)
        if links is None:
            links = _links[provider] = _Links()
        links.buses.append(self)
        self._links = links

    @property
    def provider(self) -> Provider:
        return self._provider

    @property
    def marshaler(self) -> Marshaler:
        return self._marshaler

    def topic_of(self, cls: Any) -> str:
        """The topic of messages of type ``cls``."""
        topic = self._topics.get(cls)
        if topic is None:
            topic = self._topic_of(self._marshaler.name(cls))
            validate_topic(topic)
            self._topics[cls] = topic
        return topic

    def register(self, *types: Any) -> None:
        """Make types known by name without a handler: replies and outputs of
        these types decode, and their names are no longer unknown input."""
        for cls in types:
            self._learn(cls)

    def _learn(self, cls: Any) -> str:
        name = self._marshaler.name(cls)
        if self._known.get(name) is not cls:
            self._marshaler.check(cls)
            self._known[name] = cls
        return name

    # -- publishing -------------------------------------------------------------------------

    def _encode(self, value: object, cls: Any = None, uuid: str | None = None) -> Message:
        if cls is None:
            cls = type(value)
        if cls not in self._topics:
            self._learn(cls)
        message = self._marshaler.marshal(value, cls)
        if uuid is not None:
            message._uuid = uuid
            message._uuid_given = True
        return message

    async def _publish_values(self, values: Sequence[object], cls: Any) -> None:
        """Publish each value on its type's topic; runs of one topic in one call."""
        if len(values) == 1 and cls is None:  # the common case, without the batching
            value = values[0]
            kind = type(value)
            topic = self._topics.get(kind)
            if topic is not None:  # a type seen before: learned, its topic checked
                message = self._marshaler.marshal(value, kind)
                await self._provider.publisher.publish(topic, message)
                return
        batch: list[Message] = []
        batch_topic = ""
        for value in values:
            kind = type(value) if cls is None else cls
            topic = self.topic_of(kind)
            message = self._encode(value, kind)
            if batch and topic != batch_topic:
                await self._provider.publisher.publish(batch_topic, *batch)
                batch = []
            batch_topic = topic
            batch.append(message)
        if batch:
            await self._provider.publisher.publish(batch_topic, *batch)

    # -- handlers ---------------------------------------------------------------------------

    @overload
    def handler(self, func: F, /) -> F: ...

    @overload
    def handler(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        concurrency: int | None = None,
        start: StartPosition = None,
        middleware: Iterable[Middleware] = (),
    ) -> Callable[[F], F]: ...

    def handler(
        self,
        func: Any = None,
        /,
        *,
        name: str | None = None,
        concurrency: int | None = None,
        start: StartPosition = None,
        middleware: Iterable[Middleware] = (),
    ) -> Any:
        """Register an ``async def`` taking one typed parameter (decorator).

        The type comes from the parameter's annotation; the handler's name
        (default: its qualified name) names its router handler. Returning an
        object or a list of objects publishes them once the handler
        returned, before the input is acked, with uuids derived from the
        input's (a redelivered input yields the same uuids): an object whose
        type a :class:`CommandBus` of the provider knows (it has its
        handler, sent one, or was told with :meth:`register`) is sent as a
        command, anything else published as an event. A ``dict`` output
        takes its type from the return annotation (a ``TypedDict``).

        Raises:
            TypeError: no annotated parameter, or a type the marshaler cannot handle.
        """

        def register(fn: F) -> F:
            self._register(fn, name, concurrency, start, tuple(middleware))
            return fn

        if func is not None:
            return register(func)
        return register

    def _register(
        self,
        func: Callable[[Any], Awaitable[Any]],
        name: str | None,
        concurrency: int | None,
        start: StartPosition,
        middleware: tuple[Middleware, ...],
    ) -> None:
        cls, returns = _signature(func)
        handler_name = name if name is not None else getattr(func, "__qualname__", repr(func))
        handler = _TypedHandler(handler_name, func, cls, returns)
        handler.type_name = self._learn(cls)
        handler.topic = self.topic_of(cls)
        for out in _output_types(returns):
            with suppress(TypeError):  # a plain output type (list[int], ...)
                self._learn(out)
        group = self._group(handler)
        router = self._provider.router
        poison = _has_poison_queue((*router._middleware, *middleware))
        router.add_handler(
            handler_name,
            handler.topic,
            self._router_func(handler, poison),
            group=group,
            start=start,
            concurrency=concurrency,
            middleware=middleware,
        )
        self._handlers.append(handler)

    def _group(self, handler: _TypedHandler) -> str | None:
        return None  # the router's default: the handler's name

    def _router_func(self, handler: _TypedHandler, poison: bool) -> HandlerFunc:
        marshaler = self._marshaler
        expected = handler.type_name
        cls = handler.cls
        func = handler.func
        links = self._links

        async def typed(msg: Message) -> None:
            metadata = msg.metadata
            name = metadata.get(NAME_KEY)
            if name != expected:
                if name is not None and links.type_of(name) is not None:
                    return None  # another type sharing the topic: not this handler's
                what = "no 'name' metadata" if name is None else f"unknown type name {name!r}"
                return await self._bad_input(msg, DecodeError(what), handler, poison)
            try:
                value = marshaler.unmarshal(msg, cls)
            except DecodeError as exc:
                return await self._bad_input(msg, exc, handler, poison)
            reply_to = metadata.get(REPLY_TO_KEY)
            if reply_to is not None:
                return await self._serve_request(msg, value, reply_to, handler)
            result = await func(value)
            if result is not None:
                await self._publish_outputs(msg, result, handler)
            return None

        typed.__qualname__ = getattr(func, "__qualname__", typed.__qualname__)
        return typed

    async def _bad_input(
        self, msg: Message, error: DecodeError, handler: _TypedHandler, poison: bool
    ) -> None:
        """Log and count ``msg``; a poison queue takes it, else it is acked."""
        topic = msg.delivery.topic if msg.delivery is not None else handler.topic
        detail = DecodeError(f"message {msg.uuid} on {topic!r}: {error}")
        self.decode_errors += 1
        self._metrics.decode_errors[topic] += 1
        logger.error(
            "handler %r cannot decode message %s on %r (%s): %s",
            handler.name,
            msg.uuid,
            topic,
            "to the poison queue" if poison else "acked, not processed",
            error,
        )
        reply_to = msg.metadata.get(REPLY_TO_KEY)
        if reply_to is not None:
            await self._reply_error(reply_to, msg, handler, detail)
        if poison:
            raise detail
        return None

    async def _publish_outputs(self, msg: Message, result: Any, handler: _TypedHandler) -> None:
        values = result if isinstance(result, list | tuple) else (result,)
        parent = msg.uuid
        name = current_handler_name() or handler.name
        runs: list[tuple[_Bus, str, list[Message]]] = []
        provider = self._provider
        for position, value in enumerate(values):
            cls = _output_type(value, handler)
            bus: _Bus | None = self._links.command_bus_for(cls)
            if bus is None:
                bus = self if isinstance(self, EventBus) else self._links.event_bus(provider)
            topic = bus.topic_of(cls)
            message = bus._encode(value, cls, derived_uuid(parent, name, position))
            if runs and runs[-1][1] == topic:
                runs[-1][2].append(message)
            else:
                runs.append((bus, topic, [message]))
        for _, topic, messages in runs:
            await provider.publisher.publish(topic, *messages)

    async def _serve_request(
        self, msg: Message, value: Any, reply_to: str, handler: _TypedHandler
    ) -> None:
        """Run the handler on a request and send its reply, or its error.

        Either way the request is then acked: the requester has its answer,
        and a retry would run the command again for no one.
        """
        try:
            result = await handler.func(value)
        except Exception as exc:
            logger.warning(
                "handler %r failed on request %s; replying with the error: %r",
                handler.name,
                msg.uuid,
                exc,
            )
            await self._reply_error(reply_to, msg, handler, exc)
            return
        uuid = derived_uuid(msg.uuid, current_handler_name() or handler.name, 0)
        if result is None:
            reply = Message(uuid=uuid)
        else:
            reply = self._encode(result, _reply_type(result, handler), uuid)
        reply.metadata[HAS_ERROR_KEY] = "0"
        await self._send_reply(reply_to, reply)

    async def _reply_error(
        self, reply_to: str, msg: Message, handler: _TypedHandler, error: Exception
    ) -> None:
        text = str(error).replace("\r", " ").replace("\n", " ").strip()
        uuid = derived_uuid(msg.uuid, current_handler_name() or handler.name, 0)
        reply = Message(uuid=uuid)
        reply.metadata[HAS_ERROR_KEY] = "1"
        reply.metadata[ERROR_KEY] = text
        reply.metadata[ERROR_TYPE_KEY] = type(error).__name__
        await self._send_reply(reply_to, reply)

    async def _send_reply(self, reply_to: str, reply: Message) -> None:
        try:
            await self._replies().send_reply(reply_to, reply)
        except Exception as exc:  # the requester times out; the command is done
            logger.warning("reply %s to %s could not be sent: %r", reply.uuid, reply_to, exc)

    def _replies(self) -> RequestTransport:
        raise NotImplementedError


class EventBus(_Bus):
    """Publishes events and runs their typed handlers.

    Every handler of an event type receives every event of it: each handler
    is its own group (its name), so replicas of one application share a
    handler's work and different handlers each get every event.

    Args:
        provider: any provider (memory, NATS, the chaos provider, yours).
        marshaler: how values become messages (default :class:`JSONMarshaler`).
        topic_of: type name -> topic (default ``events.<name>``).
    """

    _prefix = "events"

    def __init__(
        self,
        provider: Provider,
        *,
        marshaler: Marshaler | None = None,
        topic_of: Callable[[str], str] | None = None,
    ) -> None:
        super().__init__(provider, marshaler=marshaler, topic_of=topic_of)
        self._transport: RequestTransport | None = None

    async def publish(self, *events: object, as_type: Any = None) -> None:
        """Publish ``events``, each on its type's topic, in order.

        ``as_type`` names the type of values that carry none of their own
        (a ``TypedDict``, a plain JSON value). Returns as the provider's
        ``publish`` does (stored, under JetStream).
        """
        await self._publish_values(events, as_type)

    def _replies(self) -> RequestTransport:
        if self._transport is None:
            self._transport = transport_of(self._provider)
        return self._transport


class CommandBus(_Bus):
    """Sends commands, runs their one handler each, and answers requests.

    A command type has one handler: its group is the type's name, so the
    replicas of the application that handles it compete for each command.
    Registering a second handler for a command type on the same provider
    raises ConfigError (a ValueError) at once.

    :meth:`request` sends a command and awaits its handler's reply, on one
    reply inbox per bus (a core NATS inbox on NATS, under JetStream too).

    Attributes:
        late_replies: replies that came after their request gave up (timed
            out, cancelled) or twice for one request: dropped and counted
            (also in the metric ``events.cqrs.late_replies``).
        decode_errors: commands that did not decode (``events.cqrs.decode_errors``).

    Args:
        provider: any provider with request/reply (memory, NATS, ...).
        marshaler: how values become messages (default :class:`JSONMarshaler`).
        topic_of: type name -> topic (default ``commands.<name>``).
    """

    _prefix = "commands"

    def __init__(
        self,
        provider: Provider,
        *,
        marshaler: Marshaler | None = None,
        topic_of: Callable[[str], str] | None = None,
    ) -> None:
        super().__init__(provider, marshaler=marshaler, topic_of=topic_of)
        self._command_types: set[Any] = set()
        self._transport: RequestTransport | None = None
        self._inbox_open = False
        self._opening = trio.Lock()
        self._pending: dict[str, _Pending] = {}
        self._tokens = itertools.count(1)
        self.late_replies = 0

    @property
    def pending_requests(self) -> int:
        """Requests waiting for their reply right now."""
        return len(self._pending)

    def register(self, *types: Any) -> None:
        """Declare command types (and make them known by name): a handler
        that returns one sends it here even without a local handler."""
        super().register(*types)
        self._command_types.update(types)

    def _register(
        self,
        func: Callable[[Any], Awaitable[Any]],
        name: str | None,
        concurrency: int | None,
        start: StartPosition,
        middleware: tuple[Middleware, ...],
    ) -> None:
        cls, _ = _signature(func)
        for bus in self._links.buses:
            if isinstance(bus, CommandBus):
                for other in bus._handlers:
                    if other.cls is cls:
                        raise ConfigError(
                            f"command {type_name(cls)} already has a handler, {other.name!r}: "
                            "a command type has exactly one"
                        )
        super()._register(func, name, concurrency, start, middleware)
        self._command_types.add(cls)

    def _group(self, handler: _TypedHandler) -> str | None:
        return handler.type_name

    async def send(self, *commands: object, as_type: Any = None) -> None:
        """Send ``commands`` (fire and forget), each on its type's topic, in order."""
        for command in commands:
            self._command_types.add(type(command) if as_type is None else as_type)
        await self._publish_values(commands, as_type)

    @overload
    async def request(
        self,
        command: object,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the API's contract (trio.TooSlowError)
        reply_type: type[R],
    ) -> R: ...

    @overload
    async def request(
        self,
        command: object,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        reply_type: None = None,
    ) -> Any: ...

    async def request(
        self,
        command: object,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        reply_type: Any = None,
    ) -> Any:
        """Send ``command`` and return its handler's reply, decoded.

        The reply's type is ``reply_type`` when given (a reply of another
        type raises :class:`~piko_trio_events.DecodeError`), else the type
        its ``name`` has on this provider's buses (a handler's return
        annotation, :meth:`register`). A handler that returned None
        replies None.

        Raises:
            RequestError: the handler raised (its type name and message).
            NoResponderError: no one serves the command's topic (core NATS says
                so at once; elsewhere the request waits until ``timeout``).
            trio.TooSlowError: no reply within ``timeout`` seconds.
            DecodeError: the reply does not decode to the expected type.

        Cancelling the caller abandons the wait and leaves nothing behind; a
        reply that comes later is dropped and counted in :attr:`late_replies`.
        """
        if timeout is not None and (not isinstance(timeout, int | float) or not timeout > 0):
            raise ConfigError(f"timeout must be a number of seconds > 0 or None, not {timeout!r}")
        if reply_type is not None:
            self._learn(reply_type)
        cls = type(command)
        self._command_types.add(cls)
        topic = self.topic_of(cls)
        message = self._encode(command, cls)
        scope: AbstractContextManager[Any] = (
            nullcontext() if timeout is None else trio.fail_after(timeout)
        )
        with scope:
            transport = await self._inbox()
            token = str(next(self._tokens))
            reply_to = transport.reply_to(token)
            message.metadata[REPLY_TO_KEY] = reply_to
            pending = self._pending[token] = _Pending()
            try:
                await transport.send_request(topic, message, reply_to)
                await pending.event.wait()
            finally:
                del self._pending[token]
        reply = pending.reply
        if reply is None:
            raise NoResponderError(f"no one serves {topic!r} (request {message.uuid})")
        return self._decode_reply(reply, reply_type, topic)

    async def _inbox(self) -> RequestTransport:
        """The bus's reply inbox, opened by the first request."""
        if not self._inbox_open:
            async with self._opening:
                if not self._inbox_open:
                    transport = self._replies()
                    await transport.open_inbox(self._deliver)
                    self._inbox_open = True
        assert self._transport is not None
        return self._transport

    def _replies(self) -> RequestTransport:
        if self._transport is None:
            self._transport = transport_of(self._provider)
        return self._transport

    def _deliver(self, token: str, reply: Message | None) -> None:
        pending = self._pending.get(token)
        if pending is None or pending.done:
            self.late_replies += 1
            self._metrics.late_replies.add(1)
            logger.debug("late reply to request %s dropped", token)
            return
        pending.done = True
        pending.reply = reply
        pending.event.set()

    def _decode_reply(self, reply: Message, reply_type: Any, topic: str) -> Any:
        metadata = reply.metadata
        if metadata.get(HAS_ERROR_KEY) == "1":
            raise RequestError(
                metadata.get(ERROR_TYPE_KEY) or "Exception", metadata.get(ERROR_KEY, "")
            )
        name = metadata.get(NAME_KEY)
        where = f"the reply {reply.uuid} to a request on {topic!r}"
        if name is None:
            if reply_type is None and not reply.payload:
                return None
            raise DecodeError(f"{where} has no 'name' metadata")
        if reply_type is not None:
            expected = self._marshaler.name(reply_type)
            if name != expected:
                raise DecodeError(f"{where} is a {name}, not a {expected}")
            cls = reply_type
        else:
            cls = self._links.type_of(name)
            if cls is None:
                raise DecodeError(f"{where} is of unknown type {name!r}: pass reply_type=")
        try:
            return self._marshaler.unmarshal(reply, cls)
        except DecodeError as exc:
            raise DecodeError(f"{where}: {exc}") from None


# -- signatures and outputs -------------------------------------------------------------------


def _signature(func: Callable[..., Any]) -> tuple[Any, Any]:
    """(the type of ``func``'s one parameter, its return annotation or None)."""
    if not callable(func):
        raise TypeError(f"a handler must be an async function, not {func!r}")
    if not inspect.iscoroutinefunction(func) and not inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - an object with an async __call__
    ):
        raise TypeError(f"handler {func!r} must be an async function")
    parameters = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(parameters) != 1:
        raise TypeError(
            f"handler {func!r} must take exactly one parameter (the typed message), "
            f"not {len(parameters)}"
        )
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:
        raise TypeError(
            f"cannot resolve the annotations of handler {func!r}: {exc} "
            "(define the message types at module level)"
        ) from exc
    cls = hints.get(parameters[0].name)
    if cls is None:
        raise TypeError(
            f"handler {func!r}: annotate its parameter {parameters[0].name!r} with the message type"
        )
    return cls, hints.get("return")


def _output_types(returns: Any) -> list[Any]:
    """The types a return annotation names: unions and lists unpacked, None dropped."""
    if returns is None or returns is type(None) or returns is Any:
        return []
    origin = typing.get_origin(returns)
    if origin is typing.Union or origin is types.UnionType:
        return [t for a in typing.get_args(returns) for t in _output_types(a)]
    if origin in (list, tuple, Sequence):
        return [t for a in typing.get_args(returns) if a is not Ellipsis for t in _output_types(a)]
    return [returns]


def _output_type(value: object, handler: _TypedHandler) -> Any:
    """The type an output is published as: its class, or for a plain value
    (a TypedDict's dict, ...) the one plain type the handler's return annotation names."""
    cls = type(value)
    if cls not in _PLAIN:
        return cls
    candidates = [t for t in _output_types(handler.returns) if not _is_class_of_own(t)]
    if len(candidates) == 1:
        return candidates[0]
    raise HandlerOutputError(
        f"handler {handler.name!r} returned a {cls.__name__}: its return annotation must "
        f"name exactly one TypedDict or plain type for it (it names {handler.returns!r})"
    )


def _reply_type(value: object, handler: _TypedHandler) -> Any:
    cls = type(value)
    if cls not in _PLAIN:
        return cls
    returns = handler.returns
    if typing.get_origin(returns) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(returns) if a is not type(None)]
        if len(options) == 1:
            returns = options[0]
    if returns is None or returns is Any:
        raise HandlerOutputError(
            f"handler {handler.name!r} returned a {cls.__name__}: annotate its return type"
        )
    return returns


def _is_class_of_own(tp: Any) -> bool:
    """Whether values of ``tp`` carry their type (a class that is not a plain one)."""
    return isinstance(tp, type) and tp not in _PLAIN and not typing.is_typeddict(tp)


def _has_poison_queue(middleware: Iterable[Middleware]) -> bool:
    return any(getattr(mw, "__module__", None) == _POISON_MODULE for mw in middleware)
