"""The router: handlers subscribed to topics, wrapped in middleware.

A handler that returns normally acks its message, after publishing what it
returned to its ``publish_topic``; a handler that raises nacks it (after the
error's ``retry_after`` seconds, when it has that attribute; a transient
:class:`PublishError` backs off with each delivery attempt instead).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import MappingProxyType
from typing import Any, TypeVar, cast

import trio

from ._abc import Publisher, StartPosition, Subscriber, validate_subscription
from ._config import RouterConfig
from ._errors import (
    ConfigError,
    PikoEventsError,
    ProviderClosedError,
    PublishError,
    StreamNotFoundError,
)
from ._message import Message
from ._topics import validate_topic
from ._types import HandlerFunc, HandlerResult, Middleware, _current_handler, handler_outputs
from ._uuid import derived_uuid

__all__ = ["Handler", "Router"]

logger = logging.getLogger("piko_trio_events.router")

_F = TypeVar("_F", bound=HandlerFunc)

#: A handler's subscription holds at most ``prefetch`` messages unsettled: two
#: per worker task, so that a slow replica of a group leaves the rest of the
#: backlog to the others, and never fewer than ``_MIN_PREFETCH``, so that a fast
#: handler stays fed while its next JetStream pull is on its way (measured with
#: one worker and fire-and-forget acks: 128 cost 5-7% of the throughput, 64
#: about 20%, 32 about 40%).
_PREFETCH_PER_WORKER = 2
_MIN_PREFETCH = 192


#: A transient publish failure (a :class:`PublishError` with a ``retry_after``:
#: no responders while a stream's leader moves, no answer in time, the
#: connection down) nacks the message after ``retry_after`` (0.1 s from the
#: NATS publisher) times 2 ** (attempt - 1), at most ``_MAX_PUBLISH_BACKOFF``
#: seconds: 0.1, 0.2, 0.4, ... 3.2, then 5 s. Immediate redeliveries made a
#: storm (5,741 of them during one 0.5 s node stop); with the backoff a message
#: is tried about log2(T / 0.1) + 1 times during a fault of T seconds (4 times
#: in 1 s, 8 in 10 s) and once per 5 s beyond that, and once the fault heals
#: it waits at most 5 s more: a few of the ~1-3 s a JetStream leader election
#: takes, far below the default ack wait (30 s).
_MAX_PUBLISH_BACKOFF = 5.0
#: The first nack delay of a handler whose output topic has no stream.
_STREAM_MISSING_RETRY = 0.1


def _prefetch_for(concurrency: int) -> int:
    """The ``prefetch`` of the subscription of a handler with ``concurrency`` workers."""
    return max(_PREFETCH_PER_WORKER * concurrency, _MIN_PREFETCH)


class HandlerOutputError(PikoEventsError):
    """A handler returned messages but has no ``publish_topic`` (or not messages)."""


class Handler:
    """A handler registered on a router (read-only description).

    Attributes:
        name: unique within the router.
        topic: the subscription pattern.
        publish_topic: where returned messages go, or None.
        group: the subscription group (defaults to ``name``).
        start: where a new group begins (see :class:`~piko_trio_events.Subscriber`).
        concurrency: how many messages it processes at once.
        middleware: handler-level middleware, outermost first.
    """

    __slots__ = (
        "_chain",
        "_publish",
        "concurrency",
        "func",
        "group",
        "middleware",
        "name",
        "publish_topic",
        "start",
        "topic",
    )

    def __init__(
        self,
        name: str,
        topic: str,
        func: HandlerFunc,
        *,
        publish_topic: str | None,
        group: str,
        start: StartPosition,
        concurrency: int,
        middleware: tuple[Middleware, ...],
    ) -> None:
        self.name = name
        self.topic = topic
        self.func = func
        self.publish_topic = publish_topic
        self.group = group
        self.start = start
        self.concurrency = concurrency
        self.middleware = middleware
        self._chain: HandlerFunc = func
        self._publish: Callable[..., Any] | None = None

    def __repr__(self) -> str:
        return (
            f"Handler(name={self.name!r}, topic={self.topic!r}, "
            f"publish_topic={self.publish_topic!r}, group={self.group!r}, "
            f"concurrency={self.concurrency})"
        )

    async def _failed(self, msg: Message, exc: Exception) -> None:
        """The chain raised ``exc``: log it and nack. Never raises Exception."""
        logger.warning(
            "handler %r failed on message %s (attempt %s); nacking: %r",
            self.name,
            msg.uuid,
            msg.delivery.attempt if msg.delivery is not None else None,
            exc,
            exc_info=logger.isEnabledFor(logging.DEBUG),
        )
        try:
            # An error may say when trying again makes sense (CircuitOpenError does).
            await msg.nack(_nack_delay(msg, exc))
        except PikoEventsError as nack_exc:
            logger.warning("handler %r: nack of %s failed: %r", self.name, msg.uuid, nack_exc)
        # A handler that fails without awaiting anything gets its message back at
        # once: without a schedule point here that loop would starve every task.
        await trio.lowlevel.checkpoint()

    def _ack_failed(self, msg: Message, exc: PikoEventsError) -> None:
        logger.warning("handler %r: ack of %s failed: %r", self.name, msg.uuid, exc)

    async def _publish_output(self, msg: Message, result: HandlerResult) -> None:
        outputs = handler_outputs(result)
        if outputs is None:
            raise HandlerOutputError(
                f"handler {self.name!r} must return None, a Message or a sequence of "
                f"Messages, not {type(result).__name__}"
            )
        for out in outputs:
            if not isinstance(out, Message):
                raise HandlerOutputError(
                    f"handler {self.name!r} returned {type(out).__name__}, not a Message"
                )
        if not outputs:
            return
        if self._publish is None:
            raise HandlerOutputError(
                f"handler {self.name!r} returned {len(outputs)} message(s) but has no publish_topic"
            )
        parent = msg.uuid
        messages = cast(Sequence[Message], outputs)
        for position, out in enumerate(messages):
            if not out._uuid_given:
                out._uuid = derived_uuid(parent, self.name, position)
                out._uuid_given = True
        await self._publish(self.publish_topic, *messages)


def _retry_after(exc: Exception) -> float | None:
    delay = getattr(exc, "retry_after", None)
    if isinstance(delay, int | float) and not isinstance(delay, bool) and 0 < delay < 1e9:
        return float(delay)
    return None


def _nack_delay(msg: Message, exc: Exception) -> float | None:
    """The delay of the nack of ``msg``, whose handler (or output publish) raised ``exc``.

    An error's ``retry_after`` as it is (CircuitOpenError's: the breaker's
    own schedule), but a transient :class:`PublishError`'s grows with the
    delivery attempt, up to ``_MAX_PUBLISH_BACKOFF`` (and never below the
    error's own ``retry_after``).
    """
    delay = _retry_after(exc)
    if isinstance(exc, StreamNotFoundError):
        # No stream holds the output topic (auto-provisioning off): created by
        # an operator, or back once a cluster elects its leader; until then,
        # as a transient publish failure, not a message handed back at once.
        delay = _STREAM_MISSING_RETRY if delay is None else delay
    elif delay is None or not isinstance(exc, PublishError):
        return delay
    assert delay is not None
    attempt = msg.delivery.attempt if msg.delivery is not None else 1
    # (The exponent capped so that a message redelivered thousands of times
    # does not overflow the float.)
    grown = delay * 2.0 ** min(max(attempt - 1, 0), 64)
    return max(delay, min(grown, _MAX_PUBLISH_BACKOFF))


class Router:
    """Routes messages from subscriptions to handlers.

    The provider that owns the router runs it in its nursery: a handler added
    while it runs is subscribed at once (before :meth:`add_handler` returns,
    for providers that register subscriptions synchronously, such as the
    memory provider) and starts processing straight away.

    Middleware: the first added runs outermost. Router-level middleware wraps
    handler-level middleware, and must be added before the handlers it wraps.
    """

    def __init__(
        self,
        publisher: Publisher,
        subscriber: Subscriber,
        config: RouterConfig | None = None,
        *,
        default_concurrency: int = 1,
    ) -> None:
        self._publisher = publisher
        self._subscriber = subscriber
        self._config = RouterConfig() if config is None else config
        self._config.validate()
        self._default_concurrency = default_concurrency
        self._middleware: list[Middleware] = []
        self._handlers: dict[str, Handler] = {}
        self._nursery: trio.Nursery | None = None
        self._running = False
        self._stopping = False
        self._closed = False
        self._intake_scopes: set[trio.CancelScope] = set()
        self._intakes: set[_Intake] = set()  # one per worker task
        self._close_deadline = math.inf
        self._run_scope = trio.CancelScope(shield=True)
        self._done = trio.Event()
        self._active_consumers = 0
        self._idle = trio.Event()

    @property
    def config(self) -> RouterConfig:
        return self._config

    @property
    def running(self) -> bool:
        """True from start until the router begins to close."""
        return self._running and not self._stopping

    @property
    def handlers(self) -> Mapping[str, Handler]:
        """The registered handlers, by name (read-only)."""
        return MappingProxyType(self._handlers)

    def add_middleware(self, *middleware: Middleware) -> None:
        """Add router-level middleware; the first added runs outermost.

        Raises:
            RuntimeError: if handlers were already added (they would not see it).
        """
        for mw in middleware:
            if not callable(mw):
                raise TypeError(f"middleware must be callable, not {mw!r}")
        if self._handlers:
            raise RuntimeError(
                "add router middleware before adding handlers: "
                f"{sorted(self._handlers)} would not be wrapped by it"
            )
        self._middleware.extend(middleware)

    def add_handler(
        self,
        name: str,
        topic: str,
        func: HandlerFunc,
        *,
        publish_topic: str | None = None,
        group: str | None = None,
        start: StartPosition = None,
        concurrency: int | None = None,
        middleware: Iterable[Middleware] = (),
    ) -> Handler:
        """Register ``func`` to handle messages of ``topic``.

        Args:
            name: unique handler name (a duplicate is a ConfigError).
            topic: subscription pattern (``*`` and ``>`` allowed).
            func: the handler.
            publish_topic: where the messages ``func`` returns are published
                (before the input is acked).
            group: subscription group; defaults to ``name``, so replicas of
                one app share the handler's work and different handlers each
                get every message.
            start: where a new group begins.
            concurrency: messages processed at once (default: the provider's).
            middleware: handler-level middleware, inside the router's.

        Returns:
            The :class:`Handler`.
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"handler name must be a non-empty str, not {name!r}")
        if name in self._handlers:
            raise ConfigError(f"a handler named {name!r} already exists")
        if not callable(func):
            raise TypeError(f"handler {name!r}: func must be callable, not {func!r}")
        try:
            start, _ = validate_subscription(topic, group, start)
        except ConfigError as exc:
            raise ConfigError(f"handler {name!r}: {exc}") from None
        if publish_topic is not None:
            validate_topic(publish_topic)
        if concurrency is None:
            concurrency = self._default_concurrency
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(
                f"handler {name!r}: concurrency must be an int >= 1, not {concurrency!r}"
            )
        handler_mw = tuple(middleware)
        for mw in handler_mw:
            if not callable(mw):
                raise TypeError(f"handler {name!r}: middleware must be callable, not {mw!r}")
        if self._closed or self._stopping:
            raise ProviderClosedError(f"router is closed; cannot add handler {name!r}")

        handler = Handler(
            name,
            topic,
            func,
            publish_topic=publish_topic,
            group=name if group is None else group,
            start=start,
            concurrency=concurrency,
            middleware=handler_mw,
        )
        chain: HandlerFunc = func
        for mw in reversed((*self._middleware, *handler_mw)):
            chain = mw(chain)
        handler._chain = chain
        if publish_topic is not None:
            handler._publish = self._publisher.publish
        self._handlers[name] = handler
        if self._nursery is not None:
            self._start_handler(handler)
        return handler

    def handler(
        self,
        topic: str,
        *,
        publish_topic: str | None = None,
        group: str | None = None,
        name: str | None = None,
        start: StartPosition = None,
        concurrency: int | None = None,
        middleware: Iterable[Middleware] = (),
    ) -> Callable[[_F], _F]:
        """Decorator form of :meth:`add_handler`; the name defaults to the
        function's qualified name."""

        def register(func: _F) -> _F:
            self.add_handler(
                name if name is not None else getattr(func, "__qualname__", repr(func)),
                topic,
                func,
                publish_topic=publish_topic,
                group=group,
                start=start,
                concurrency=concurrency,
                middleware=middleware,
            )
            return func

        return register

    # -- running ---------------------------------------------------------------------------

    def _start_handler(self, handler: Handler) -> None:
        assert self._nursery is not None
        # Subscribe now, synchronously where the provider can, so that nothing
        # published after add_handler() returns is missed by the handler's group.
        subscription = self._subscriber.subscribe(
            handler.topic,
            group=handler.group,
            start=handler.start,
            prefetch=_prefetch_for(handler.concurrency),
        )
        self._nursery.start_soon(
            self._consume, handler, subscription, name=f"handler:{handler.name}"
        )

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`_close`; the caller's nursery owns this task.

        Handler tasks run in a shielded scope: cancelling an outer scope does
        not interrupt them; :meth:`_close` drains them instead.
        """
        try:
            with self._run_scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._running = True
                    for handler in self._handlers.values():
                        self._start_handler(handler)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._nursery = None
            self._running = False
            self._closed = True
            self._done.set()

    def _cancel(self) -> None:
        """Cancel every handler task now (after the drain, or a failed start)."""
        self._run_scope.cancel()

    async def _close(self, handlers_until: float | None = None) -> None:
        """Drain: stop intake, let in-flight handlers finish until
        ``handlers_until`` (trio time; by default ``close_timeout`` from now),
        then cancel them (their messages are nacked when their subscriptions
        close). Returns once every handler task ended.

        The provider passes a deadline that fits its own drain budget (see
        :mod:`piko_trio_events._lifecycle`); the caller bounds the wait for
        cancelled handlers to unwind.
        """
        if self._done.is_set() or not self._running:
            self._closed = True
            self._run_scope.cancel()
            return
        if handlers_until is None:
            handlers_until = trio.current_time() + self._config.close_timeout
        self._stopping = True
        for scope in list(self._intake_scopes):
            scope.cancel()
        self._close_deadline = handlers_until
        for intake in self._intakes:
            if intake.waiting:
                intake.scope.cancel()
        if self._active_consumers == 0:
            self._idle.set()
        # Handler tasks end on their own once intake stopped and in-flight work is done.
        try:
            with trio.move_on_at(handlers_until):
                await self._idle.wait()
        finally:
            # Even if the caller's deadline came first: handlers never outlive the drain.
            self._run_scope.cancel()
        await self._done.wait()

    async def _consume(
        self,
        handler: Handler,
        subscription: AbstractAsyncContextManager[trio.abc.ReceiveChannel[Message]],
    ) -> None:
        _current_handler.set(handler.name)
        self._active_consumers += 1
        try:
            async with AsyncExitStack() as stack:
                # Subscribing may take a round trip (NATS): closing interrupts it.
                with trio.CancelScope() as scope:
                    self._intake_scopes.add(scope)
                    if self._stopping:
                        scope.cancel()
                    try:
                        channel = await stack.enter_async_context(subscription)
                    finally:
                        self._intake_scopes.discard(scope)
                if scope.cancelled_caught:
                    return
                if handler.concurrency == 1:
                    await self._work(handler, channel)
                else:
                    async with trio.open_nursery() as workers:
                        for i in range(handler.concurrency):
                            workers.start_soon(
                                self._work, handler, channel, name=f"handler:{handler.name}#{i}"
                            )
        finally:
            self._active_consumers -= 1
            if self._stopping and self._active_consumers == 0:
                self._idle.set()

    async def _work(self, handler: Handler, channel: trio.abc.ReceiveChannel[Message]) -> None:
        """Take messages and process them, one at a time, until intake stops.

        One cancel scope per worker, not one per wait (entering and leaving a
        trio CancelScope costs about 3 us, more than a bare channel's whole
        message): :meth:`_close` cancels it only while the worker waits in
        ``receive()``, so a message being processed is never interrupted by
        the end of intake. A message that reached the worker as that scope
        was cancelled is processed after it, like any in-flight message:
        shielded from the end of intake but not past the drain's deadline.
        """
        # In-process channels offer _take_nowait(): receive_nowait() that returns
        # None rather than raising WouldBlock (a raise per wait costs ~0.3 us).
        take: Callable[[], Message | None] | None = getattr(channel, "_take_nowait", None)
        if take is None:
            receive_nowait = getattr(channel, "receive_nowait", None)
            if receive_nowait is not None:
                take = _or_none(receive_nowait)
        intake = _Intake()
        late = None
        with trio.CancelScope() as scope:
            intake.scope = scope
            self._intakes.add(intake)
            try:
                late = await self._process(handler, take, channel.receive, intake)
            finally:
                self._intakes.discard(intake)
        if late is not None:
            with trio.CancelScope(shield=True, deadline=self._close_deadline):
                await self._process(handler, None, None, intake, late)

    async def _process(
        self,
        handler: Handler,
        take: Callable[[], Message | None] | None,
        receive: Callable[[], Awaitable[Message]] | None,
        intake: _Intake,
        msg: Message | None = None,
    ) -> Message | None:
        """Process ``msg`` (if given), then take messages and process each
        until intake stops; run its chain, publish its output, then ack it,
        or nack it if any of that raised. Never raises Exception.

        The one place a message is processed, inline in the loop (a coroutine
        per message would cost more than a bare channel's whole message).
        Returns a message received as intake stopped (see :meth:`_work`),
        None otherwise.
        """
        chain = handler._chain
        while True:
            if msg is None:
                if self._stopping or receive is None:
                    return None
                if take is not None:
                    try:
                        msg = take()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        return None
                if msg is None:
                    intake.waiting = True
                    try:
                        msg = await receive()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        return None
                    finally:
                        intake.waiting = False
                    if self._stopping:
                        # _close cancelled the scope while the message was already
                        # on its way here (scope.cancel_called would say the same,
                        # but reads the clock).
                        return msg
            try:
                result = await chain(msg)
                if result is not None:
                    await handler._publish_output(msg, result)
            except Exception as exc:
                await handler._failed(msg, exc)
                msg = None
                continue
            try:
                await msg.ack()
            except PikoEventsError as exc:
                handler._ack_failed(msg, exc)
            msg = None


def _or_none(receive_nowait: Callable[[], Message]) -> Callable[[], Message | None]:
    def take() -> Message | None:
        try:
            return receive_nowait()
        except trio.WouldBlock:
            return None

    return take


class _Intake:
    """A router worker's intake: its cancel scope and whether it waits in receive()."""

    __slots__ = ("scope", "waiting")

    scope: trio.CancelScope

    def __init__(self) -> None:
        self.waiting = False
