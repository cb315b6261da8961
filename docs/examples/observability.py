"""Traces and metrics: install an OpenTelemetry SDK and the library reports.

The library depends only on ``opentelemetry-api``; with no SDK installed its
spans and instruments cost next to nothing. This example reads them with the
SDK's in-memory exporter and reader (use OTLP or Prometheus in production):
``python docs/examples/observability.py``.
"""

from __future__ import annotations

import logging

import trio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from piko_trio_events import MemoryConfig, Message, open_memory_provider
from piko_trio_events.middleware import TracingPublisher, handler_metrics, tracing

# Once per process, before the providers open.
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
spans = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(tracer_provider)
logging.basicConfig(level=logging.INFO)  # piko_trio_events.memory, .nats, .router


async def main() -> None:
    async with open_memory_provider(MemoryConfig()) as provider:
        provider.router.add_middleware(tracing(), handler_metrics())
        publisher = TracingPublisher(provider.publisher)  # starts the trace
        done = trio.Event()

        @provider.router.handler("orders.created", publish_topic="orders.audited")
        async def audit(msg: Message) -> Message:
            return Message(b"audited")  # carries the trace on, in its metadata

        @provider.router.handler("orders.audited")
        async def notify(msg: Message) -> None:
            done.set()

        await publisher.publish("orders.created", Message(b"1"))
        with trio.fail_after(10):
            await done.wait()

    # One trace: publish -> audit's process span -> notify's process span.
    for span in spans.get_finished_spans():
        assert span.context is not None
        print(f"span {span.name!r} trace={span.context.trace_id:032x}")
    assert len({s.context.trace_id for s in spans.get_finished_spans() if s.context}) == 1

    data = reader.get_metrics_data()
    assert data is not None
    names = sorted(
        {m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    )
    print("\n".join(names))
    assert "events.adapters.memory.messages_acked" in names
    assert "events.router.handler_duration" in names


if __name__ == "__main__":
    trio.run(main)
