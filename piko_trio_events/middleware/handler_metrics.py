"""OpenTelemetry metrics per router handler: duration and messages in flight."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from opentelemetry import metrics

from .._message import Message
from .._types import HandlerFunc, HandlerResult, Middleware, current_handler_name

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram, UpDownCounter
    from opentelemetry.util.types import Attributes

__all__ = [
    "HANDLER_DURATION",
    "HANDLER_IN_FLIGHT",
    "ROUTER_METER",
    "handler_metrics",
]

#: The meter of the router's instruments.
ROUTER_METER: Final = "piko_trio_events.router"
#: Histogram (ms) of handler run times, attribute ``handler``, plus
#: ``error.type`` (the exception's class name) when the handler raised.
HANDLER_DURATION: Final = "events.router.handler_duration"
#: UpDownCounter of the messages a handler is processing, attribute ``handler``.
HANDLER_IN_FLIGHT: Final = "events.router.handler_in_flight"

_UNKNOWN: Final = "unknown"


class _Instruments:
    __slots__ = ("attributes", "duration", "in_flight")

    def __init__(self) -> None:
        meter = metrics.get_meter(ROUTER_METER)
        self.duration: Histogram = meter.create_histogram(
            HANDLER_DURATION, unit="ms", description="Time a router handler took per message."
        )
        self.in_flight: UpDownCounter = meter.create_up_down_counter(
            HANDLER_IN_FLIGHT,
            unit="{message}",
            description="Messages a router handler is processing.",
        )
        # One attribute dict per handler name, built once.
        self.attributes: dict[str | None, Attributes] = {}

    def attributes_of(self, name: str | None) -> Attributes:
        attributes = self.attributes.get(name)
        if attributes is None:
            attributes = self.attributes[name] = {"handler": _UNKNOWN if name is None else name}
        return attributes


_instruments: _Instruments | None = None


def _get_instruments() -> _Instruments:
    global _instruments
    if _instruments is None:
        _instruments = _Instruments()
    return _instruments


def handler_metrics() -> Middleware:
    """Measure each handler: a duration histogram and an in-flight gauge.

    Instruments of meter ``piko_trio_events.router``, shared by every
    handler of the process:

    - ``events.router.handler_duration`` (histogram, ms): how long the
      wrapped chain took per message (wall-clock time, also under a trio
      ``MockClock``), with attribute ``handler`` (the router handler's name,
      ``"unknown"`` outside a router) and, when it raised or was cancelled,
      ``error.type`` (the exception's class name);
    - ``events.router.handler_in_flight`` (UpDownCounter): messages being
      processed, by ``handler``; back to its previous value once the chain
      returns, raises or is cancelled.

    Attributes never hold per-message values. Where it sits in the chain
    decides what it measures: added after
    :func:`~piko_trio_events.middleware.tracing` and before ``retry`` it
    measures all attempts of a message together. Publishing the handler's
    output and acking happen after the chain and are not included. With no
    OpenTelemetry SDK installed, recording does nothing.
    """
    instruments = _get_instruments()
    duration = instruments.duration
    in_flight = instruments.in_flight
    attributes_of = instruments.attributes_of

    def middleware(handler: HandlerFunc) -> HandlerFunc:
        async def measured(msg: Message) -> HandlerResult:
            attributes = attributes_of(current_handler_name())
            in_flight.add(1, attributes)
            started = time.perf_counter()
            try:
                result = await handler(msg)
            except BaseException as exc:
                elapsed = (time.perf_counter() - started) * 1000.0
                duration.record(elapsed, {**(attributes or {}), "error.type": type(exc).__name__})
                raise
            else:
                duration.record((time.perf_counter() - started) * 1000.0, attributes)
                return result
            finally:
                in_flight.add(-1, attributes)

        return measured

    return middleware
