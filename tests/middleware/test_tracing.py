"""tracing, TracingPublisher and handler_metrics, read with the SDK's in-memory exporters."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from piko_trio_events import InvalidTopicError, Message, open_memory_provider
from piko_trio_events.middleware import (
    CORRELATION_ID_KEY,
    TracingPublisher,
    extract_trace_context,
    handler_metrics,
    inject_trace_context,
    retry,
    tracing,
)
from piko_trio_events.middleware.handler_metrics import (
    HANDLER_DURATION,
    HANDLER_IN_FLIGHT,
    ROUTER_METER,
)
from piko_trio_events.middleware.tracing import HANDLER_ATTRIBUTE
from tests.otel import sdk_reader
from tests.otel_trace import local_exporter, sdk_exporter, spans_named

SECRET = b"card=4111111111111111"


def trace_ids(traceparent: str) -> tuple[int, int]:
    """(trace id, parent span id) of a W3C ``traceparent`` value."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00"
    assert int(flags, 16) & 1  # sampled
    return int(trace_id, 16), int(span_id, 16)


def only(spans: Sequence[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, spans
    return spans[0]


def assert_no_payload(spans: Any) -> None:
    for span in spans:
        values = [*span.attributes.values()]
        for event in span.events:
            values.extend(event.attributes.values())
        for value in values:
            assert "4111" not in str(value), (span.name, value)


async def test_a_trace_crosses_the_provider_and_follows_the_outputs() -> None:
    exporter = sdk_exporter()
    exporter.clear()
    tracer = trace.get_tracer("tests")
    done = trio.Event()
    async with open_memory_provider() as provider:
        router = provider.router
        router.add_middleware(tracing())

        @router.handler("orders.created", publish_topic="orders.audited", name="audit")
        async def audit(msg: Message) -> Message:
            # The process span is current: the handler's own spans are its children.
            with tracer.start_as_current_span("audit work"):
                pass
            return Message(SECRET)

        @router.handler("orders.audited", name="archive")
        async def archive(msg: Message) -> None:
            done.set()

        async with provider.subscriber.subscribe("orders.audited") as audited:
            publisher = TracingPublisher(provider.publisher)
            with tracer.start_as_current_span("request") as request:
                sent = Message(SECRET, {CORRELATION_ID_KEY: "req-1"})
                await publisher.publish("orders.created", sent)
            output = await audited.receive()
            await output.ack()
        await done.wait()
        await trio.testing.wait_all_tasks_blocked()

    trace_id = request.get_span_context().trace_id
    publish = only(spans_named(exporter, "orders.created publish"))
    process = only(spans_named(exporter, "orders.created process"))
    work = only(spans_named(exporter, "audit work"))
    downstream = only(spans_named(exporter, "orders.audited process"))

    # request → publish → process (in the handler task) → audit work
    #                              └→ output message → downstream process
    assert publish.kind is SpanKind.PRODUCER
    assert publish.parent is not None
    assert publish.parent.span_id == request.get_span_context().span_id
    assert process.kind is SpanKind.CONSUMER
    assert process.context is not None
    assert process.parent is not None
    assert publish.context is not None
    assert process.parent.span_id == publish.context.span_id
    assert process.parent.is_remote
    assert work.parent is not None
    assert work.parent.span_id == process.context.span_id
    assert downstream.parent is not None
    assert downstream.parent.span_id == process.context.span_id
    for span in (publish, process, work, downstream):
        assert span.context is not None
        assert span.context.trace_id == trace_id
        assert span.status.status_code is StatusCode.UNSET

    # The output carries the process span's context.
    assert trace_ids(output.metadata["traceparent"]) == (trace_id, process.context.span_id)
    assert trace_ids(sent.metadata["traceparent"]) == (trace_id, publish.context.span_id)

    assert process.attributes is not None
    assert dict(process.attributes) == {
        "messaging.system": "memory",
        "messaging.destination.name": "orders.created",
        "messaging.message.id": sent.uuid,
        "messaging.operation": "process",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.body.size": len(SECRET),
        "messaging.message.conversation_id": "req-1",
        HANDLER_ATTRIBUTE: "audit",
        "piko.delivery.attempt": 1,
    }
    assert publish.attributes is not None
    assert publish.attributes["messaging.destination.name"] == "orders.created"
    assert publish.attributes["messaging.message.id"] == sent.uuid
    assert downstream.attributes is not None
    assert downstream.attributes[HANDLER_ATTRIBUTE] == "archive"
    assert_no_payload(exporter.get_finished_spans())


async def test_a_failing_handler_records_the_error_and_the_retry_is_traced() -> None:
    exporter = sdk_exporter()
    exporter.clear()
    done = trio.Event()
    async with open_memory_provider() as provider:
        provider.router.add_middleware(tracing())

        @provider.router.handler("pay.due", name="pay")
        async def pay(msg: Message) -> None:
            assert msg.delivery is not None
            if msg.delivery.attempt == 1:
                raise ValueError("bank said no")
            done.set()

        with trace.get_tracer("tests").start_as_current_span("request") as request:
            await TracingPublisher(provider.publisher).publish("pay.due", Message(SECRET))
        await done.wait()
        await trio.testing.wait_all_tasks_blocked()

    publish = only(spans_named(exporter, "pay.due publish"))
    failed, succeeded = spans_named(exporter, "pay.due process")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ValueError: bank said no"
    (event,) = failed.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert succeeded.status.status_code is StatusCode.UNSET
    assert not succeeded.events
    assert succeeded.attributes is not None
    assert succeeded.attributes["piko.delivery.attempt"] == 2
    for span in (failed, succeeded):
        assert span.parent is not None
        assert publish.context is not None
        assert span.parent.span_id == publish.context.span_id
        assert span.context is not None
        assert span.context.trace_id == request.get_span_context().trace_id
    assert_no_payload(exporter.get_finished_spans())


async def test_retries_inside_tracing_share_one_span() -> None:
    exporter = sdk_exporter()
    exporter.clear()
    calls = 0

    async def flaky(msg: Message) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ValueError("again")

    chain = tracing()(retry(max_retries=3, initial_interval=0.0)(flaky))
    await chain(Message(b"x"))
    span = only(spans_named(exporter, "process"))
    assert calls == 3
    assert span.status.status_code is StatusCode.UNSET


async def test_without_incoming_context_a_trace_starts_and_reaches_the_outputs() -> None:
    provider, exporter = local_exporter()
    chain = tracing(provider, system="nats")(_returning(Message(b"out")))
    result = await chain(Message(b"in"))
    assert isinstance(result, Message)
    span = only(exporter.get_finished_spans())
    assert span.parent is None
    assert span.name == "process"
    assert span.context is not None
    assert span.attributes is not None
    assert span.attributes["messaging.system"] == "nats"
    assert HANDLER_ATTRIBUTE not in span.attributes  # outside a router
    assert "messaging.destination.name" not in span.attributes
    assert trace_ids(result.metadata["traceparent"]) == (
        span.context.trace_id,
        span.context.span_id,
    )


async def test_an_output_keeps_a_trace_context_of_its_own() -> None:
    provider, exporter = local_exporter()
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span("upstream"):
        msg = inject_trace_context(Message(b"in", {"tracestate": "x=1"}))
    upstream = only(exporter.get_finished_spans())
    exporter.clear()
    with tracer.start_as_current_span("elsewhere") as elsewhere:
        own = inject_trace_context(Message(b"own"))
    copied = Message(b"copied", msg.metadata)
    plain = Message(b"plain")
    outputs = [own, copied, plain, msg]

    result = await tracing(provider)(_returning(outputs))(msg)

    assert result is outputs
    process = only(spans_named(exporter, "process"))
    assert process.parent is not None
    assert upstream.context is not None
    assert process.parent.span_id == upstream.context.span_id
    assert process.context is not None
    ids = (process.context.trace_id, process.context.span_id)
    elsewhere_ids = (
        elsewhere.get_span_context().trace_id,
        elsewhere.get_span_context().span_id,
    )
    assert trace_ids(own.metadata["traceparent"]) == elsewhere_ids
    # Outputs that copied the input's context, or have none, get the process span's.
    for out in (copied, plain, msg):
        assert trace_ids(out.metadata["traceparent"]) == ids
    # The process span's context carries the incoming tracestate along.
    for out in (copied, plain, msg):
        assert out.metadata["tracestate"] == "x=1"
    assert "tracestate" not in own.metadata


async def test_a_cancelled_handler_ends_its_span_in_error() -> None:
    provider, exporter = local_exporter()

    async def stuck(msg: Message) -> None:
        await trio.sleep_forever()

    chain = tracing(provider)(stuck)
    with trio.CancelScope() as scope:
        scope.cancel()
        await chain(Message(b"x"))
    span = only(exporter.get_finished_spans())
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "Cancelled"
    assert span.end_time is not None


async def test_without_an_sdk_the_context_passes_through() -> None:
    # A non-recording tracer (what the API gives without an SDK): no attributes
    # are built, but the incoming context still reaches the outputs.
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    out = Message(b"out")
    msg = Message(b"in", {"traceparent": incoming})
    chain = tracing(trace.NoOpTracerProvider())(_returning(out))
    await chain(msg)
    assert out.metadata["traceparent"] == incoming
    # Without an incoming context there is nothing to hand on.
    fresh = Message(b"out")
    chain = tracing(trace.NoOpTracerProvider())(_returning(fresh))
    assert await chain(Message(b"in")) is fresh
    assert fresh.metadata == {}
    span = trace.get_current_span(extract_trace_context(msg))
    assert span.get_span_context().trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert span.get_span_context().is_remote


async def test_a_failed_publish_ends_its_span_in_error() -> None:
    exporter = sdk_exporter()
    exporter.clear()
    async with open_memory_provider() as provider:
        publisher = TracingPublisher(provider.publisher, system="memory")
        assert publisher.publisher is provider.publisher
        with pytest.raises(InvalidTopicError):
            await publisher.publish("bad topic", Message(b"a"), Message(b"b"))
        await publisher.flush()
    span = only(spans_named(exporter, "bad topic publish"))
    assert span.kind is SpanKind.PRODUCER
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["messaging.batch.message_count"] == 2
    assert span.attributes["messaging.system"] == "memory"


def test_importing_the_middleware_loads_no_sdk_nor_propagators() -> None:
    code = (
        "import sys, piko_trio_events.middleware;"
        "bad = [m for m in ('opentelemetry.sdk', 'opentelemetry.propagate') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# -- metrics ---------------------------------------------------------------------------------


def router_metrics(
    reader: InMemoryMetricReader,
) -> dict[tuple[str, str | None, str | None], float]:
    """Values of the router meter, keyed by (name, handler, error.type).

    Histograms give their count, up-down counters their value.
    """
    out: dict[tuple[str, str | None, str | None], float] = {}
    data = reader.get_metrics_data()
    if data is None:
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != ROUTER_METER:
                continue
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attrs: Any = point.attributes or {}
                    value: Any = getattr(point, "count", None)
                    if value is None:
                        value = point.value  # type: ignore[union-attr]
                    key = (metric.name, attrs.get("handler"), attrs.get("error.type"))
                    out[key] = float(value)
    return out


async def test_handler_metrics_count_durations_and_messages_in_flight() -> None:
    reader = sdk_reader()
    before = router_metrics(reader)

    def delta(name: str, handler: str, error: str | None = None) -> float:
        key = (name, handler, error)
        return router_metrics(reader).get(key, 0.0) - before.get(key, 0.0)

    started = trio.Event()
    release = trio.Event()
    done = trio.Event()
    async with open_memory_provider() as provider:
        provider.router.add_middleware(tracing(), handler_metrics())

        @provider.router.handler("metrics.jobs", name="metered")
        async def metered(msg: Message) -> None:
            assert msg.delivery is not None
            if msg.delivery.attempt == 1:
                raise ValueError("first attempt fails")
            started.set()
            await release.wait()
            done.set()

        await provider.publisher.publish("metrics.jobs", Message(b"1"))
        await started.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert delta(HANDLER_IN_FLIGHT, "metered") == 1
        assert delta(HANDLER_DURATION, "metered", "ValueError") == 1
        assert delta(HANDLER_DURATION, "metered") == 0
        release.set()
        await done.wait()
        await trio.testing.wait_all_tasks_blocked()

    assert delta(HANDLER_IN_FLIGHT, "metered") == 0
    assert delta(HANDLER_DURATION, "metered") == 1
    assert delta(HANDLER_DURATION, "metered", "ValueError") == 1


async def test_handler_metrics_outside_a_router() -> None:
    reader = sdk_reader()
    before = router_metrics(reader)
    await handler_metrics()(_returning(None))(Message())
    after = router_metrics(reader)
    key = (HANDLER_DURATION, "unknown", None)
    assert after[key] - before.get(key, 0.0) == 1
    key = (HANDLER_IN_FLIGHT, "unknown", None)
    assert after[key] == before.get(key, 0.0)


def _returning(result: Any) -> Any:
    async def handler(msg: Message) -> Any:
        return result

    return handler
