"""OpenTelemetry tracing: a process span per message, the trace carried in metadata.

The W3C trace context (``traceparent``, ``tracestate``; ``baggage`` with the
default propagator) travels in message metadata, so a trace crosses
processes and providers: :class:`TracingPublisher` (or
:func:`inject_trace_context`) starts it where the application publishes,
:func:`tracing` continues it in every handler and hands it on to the messages
the handler returns.

Only ``opentelemetry-api`` is needed. With no SDK installed the spans are
non-recording: no attribute is built, and the incoming context is still
handed on unchanged. Span attributes follow the OpenTelemetry messaging
semantic conventions and never hold a payload.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .._message import Message
from .._types import (
    HandlerFunc,
    HandlerResult,
    Middleware,
    current_handler_name,
    handler_outputs,
)
from .correlation_id import CORRELATION_ID_KEY

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, Tracer, TracerProvider
    from opentelemetry.util.types import AttributeValue

    from .._abc import Publisher

__all__ = [
    "HANDLER_ATTRIBUTE",
    "TracingPublisher",
    "extract_trace_context",
    "inject_trace_context",
    "tracing",
]

#: The instrumentation scope of the spans.
TRACER_NAME: Final = "piko_trio_events"

#: The span attribute that names the router handler processing the message.
HANDLER_ATTRIBUTE: Final = "piko.handler.name"

_DELIVERY_ATTEMPT: Final = "piko.delivery.attempt"


def _global_propagator() -> TextMapPropagator:
    # Imported on first use: loading the configured propagators scans entry points.
    from opentelemetry import propagate

    return propagate.get_global_textmap()


def extract_trace_context(
    message: Message, *, propagator: TextMapPropagator | None = None
) -> Context:
    """The trace context carried in ``message``'s metadata (the current one if none).

    Args:
        message: a received message (or any message).
        propagator: defaults to the global one (``opentelemetry.propagate``):
            W3C trace context and baggage unless ``OTEL_PROPAGATORS`` says otherwise.
    """
    if not message.metadata:
        return otel_context.get_current()
    if propagator is None:
        propagator = _global_propagator()
    return propagator.extract(message.metadata)


def inject_trace_context(
    message: Message,
    context: Context | None = None,
    *,
    propagator: TextMapPropagator | None = None,
) -> Message:
    """Write the trace context into ``message``'s metadata (``traceparent``, ...).

    Existing keys of the propagator are replaced; nothing is written when the
    context holds no valid span. Call it inside a span of your own (for
    example a ``PRODUCER`` span) when you publish without
    :class:`TracingPublisher`; inside a handler wrapped by :func:`tracing`
    the current context is the process span's.

    Args:
        message: the message to change, in place.
        context: defaults to the current context.
        propagator: defaults to the global one (``opentelemetry.propagate``).

    Returns:
        ``message``, for chaining.
    """
    if propagator is None:
        propagator = _global_propagator()
    propagator.inject(message.metadata, context=context)
    return message


class TracingPublisher:
    """Wraps a :class:`~piko_trio_events.Publisher`: each :meth:`publish` runs in a span.

    The span (kind ``PRODUCER``, named ``"{topic} publish"``) is a child of
    the current span; its context is injected into the metadata of every
    message published, so each message's process span (see :func:`tracing`)
    is its child. The span ends when ``publish`` returns; if it raises (or is
    cancelled), the span records the error and has status ``ERROR``.
    Messages are changed in place (their metadata) and then published
    unchanged otherwise, with the same guarantees as the wrapped publisher.

    Args:
        publisher: the publisher to wrap, e.g. ``provider.publisher``.
        tracer_provider: defaults to the global one.
        system: the ``messaging.system`` attribute (e.g. ``"nats"``); omitted if None.
        propagator: defaults to the global one (``opentelemetry.propagate``).
    """

    __slots__ = ("_propagator", "_publisher", "_system", "_tracer")

    def __init__(
        self,
        publisher: Publisher,
        tracer_provider: TracerProvider | None = None,
        *,
        system: str | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self._publisher = publisher
        self._tracer = _tracer(tracer_provider)
        self._system = system
        self._propagator = propagator

    @property
    def publisher(self) -> Publisher:
        """The wrapped publisher."""
        return self._publisher

    async def publish(self, topic: str, *messages: Message) -> None:
        """Publish ``messages`` to ``topic`` inside a ``PRODUCER`` span."""
        span = self._tracer.start_span(f"{topic} publish", kind=SpanKind.PRODUCER)
        try:
            if span.is_recording():
                attributes: dict[str, AttributeValue] = {
                    "messaging.destination.name": topic,
                    "messaging.operation": "publish",
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "publish",
                }
                if self._system is not None:
                    attributes["messaging.system"] = self._system
                if len(messages) == 1:
                    attributes["messaging.message.id"] = messages[0].uuid
                    attributes["messaging.message.body.size"] = len(messages[0].payload)
                else:
                    attributes["messaging.batch.message_count"] = len(messages)
                span.set_attributes(attributes)
            propagator = self._propagator
            if propagator is None:
                propagator = _global_propagator()
            ctx = trace.set_span_in_context(span)
            for msg in messages:
                propagator.inject(msg.metadata, context=ctx)
            token = otel_context.attach(ctx)
            try:
                await self._publisher.publish(topic, *messages)
            finally:
                otel_context.detach(token)
        except BaseException as exc:
            _record_error(span, exc)
            raise
        finally:
            span.end()

    async def flush(self) -> None:
        """Flush the wrapped publisher."""
        await self._publisher.flush()


def tracing(
    tracer_provider: TracerProvider | None = None,
    *,
    system: str | None = None,
    propagator: TextMapPropagator | None = None,
) -> Middleware:
    """Run each message's handler in a ``CONSUMER`` span named ``"{topic} process"``.

    The span's parent is the trace context found in the message's metadata
    (``traceparent``/``tracestate``, as :class:`TracingPublisher`,
    :func:`inject_trace_context` or an upstream handler wrapped by this
    middleware put it there); without one it continues the current trace or
    starts a new one. The span is current while the handler runs, so the
    handler's own spans are its children.

    Attributes (messaging semantic conventions): ``messaging.system``,
    ``messaging.destination.name`` (the topic), ``messaging.message.id``
    (the uuid), ``messaging.operation`` (``"process"``, also as
    ``messaging.operation.type`` and ``.name``), ``messaging.message.body.size``,
    ``messaging.message.conversation_id`` (the correlation id, when there is
    one), ``piko.handler.name`` and ``piko.delivery.attempt``. Never the payload
    nor other metadata. They are built only when the span is recording.

    When the handler raises, the exception is recorded on the span and its
    status is ``ERROR`` (also when it is cancelled, e.g. when the router's
    drain runs out of time); the exception propagates unchanged. When it
    returns messages, the span's context is injected into each output's
    metadata, so the trace follows them to the next handler. An output
    whose trace context differs from the input's (the handler set its own,
    e.g. with :func:`inject_trace_context`) keeps it; one that copied the
    input's metadata gets the process span's.

    Add it first (outermost), so the span covers the other middleware
    (retries, timeouts), and
    :func:`~piko_trio_events.middleware.handler_metrics` next to it for
    duration histograms and in-flight gauges.

    Args:
        tracer_provider: defaults to the global one (set by the SDK's setup).
        system: the ``messaging.system`` attribute; by default the provider
            the message came from (``"memory"`` or ``"nats"``).
        propagator: defaults to the global one (``opentelemetry.propagate``):
            W3C trace context and baggage unless ``OTEL_PROPAGATORS`` says otherwise.
    """
    tracer = _tracer(tracer_provider)

    def middleware(handler: HandlerFunc) -> HandlerFunc:
        async def traced(msg: Message) -> HandlerResult:
            prop = _global_propagator() if propagator is None else propagator
            # No metadata, no incoming context: skip the propagator's parsing.
            parent = prop.extract(msg.metadata) if msg.metadata else None
            delivery = msg.delivery
            topic = delivery.topic if delivery is not None else None
            span = tracer.start_span(
                "process" if topic is None else f"{topic} process",
                context=parent,
                kind=SpanKind.CONSUMER,
            )
            try:
                if span.is_recording():
                    span.set_attributes(_process_attributes(msg, topic, system))
                elif parent is None and not span.get_span_context().is_valid:
                    # No SDK and no incoming context: there is nothing to make
                    # current nor to hand on (the fast path without an SDK).
                    return await handler(msg)
                ctx = trace.set_span_in_context(span, parent)
                token = otel_context.attach(ctx)
                try:
                    result = await handler(msg)
                finally:
                    otel_context.detach(token)
                if result is not None:
                    _inject_outputs(prop, msg, result, ctx)
                return result
            except BaseException as exc:
                _record_error(span, exc)
                raise
            finally:
                span.end()

        return traced

    return middleware


def _tracer(tracer_provider: TracerProvider | None) -> Tracer:
    return trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)


def _process_attributes(
    msg: Message, topic: str | None, system: str | None
) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "messaging.system": system if system is not None else _system_of(msg),
        "messaging.operation": "process",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": msg.uuid,
        "messaging.message.body.size": len(msg.payload),
    }
    if topic is not None:
        attributes["messaging.destination.name"] = topic
    if msg.delivery is not None:
        attributes[_DELIVERY_ATTEMPT] = msg.delivery.attempt
    name = current_handler_name()
    if name is not None:
        attributes[HANDLER_ATTRIBUTE] = name
    correlation = msg.metadata.get(CORRELATION_ID_KEY)
    if correlation:
        attributes["messaging.message.conversation_id"] = correlation
    return attributes


def _system_of(msg: Message) -> str:
    """``"memory"``, ``"nats"``: the provider that delivered ``msg`` (its
    acker's ``system``; ``"piko"`` for an acker that does not say)."""
    system: str = getattr(msg._acker, "system", "piko")
    return system


def _inject_outputs(
    propagator: TextMapPropagator, msg: Message, result: HandlerResult, ctx: Context
) -> None:
    outputs = handler_outputs(result)
    if outputs is None:
        return  # not messages: the router reports it
    fields = propagator.fields
    source = msg.metadata
    for out in outputs:
        # Anything but a Message is left for the router to report.
        if not isinstance(out, Message):
            continue
        meta = out.metadata
        if out is not msg and any(meta.get(f) not in (None, source.get(f)) for f in fields):
            continue  # the handler gave this output a trace context of its own
        for f in fields:
            # Drop the copied input context, so that no stale tracestate survives.
            meta.pop(f, None)
        propagator.inject(meta, context=ctx)


def _record_error(span: Span, exc: BaseException) -> None:
    if not span.is_recording():
        return
    if isinstance(exc, Exception):
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
    else:
        # trio.Cancelled, KeyboardInterrupt: the handler did not finish.
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.set_attribute("error.type", type(exc).__qualname__)
