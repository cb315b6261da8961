"""One OpenTelemetry SDK reader for the whole test run (the global provider is set once)."""

from __future__ import annotations

from typing import Any

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

_reader: InMemoryMetricReader | None = None


def sdk_reader() -> InMemoryMetricReader:
    """The process-wide in-memory reader, installed on first use."""
    global _reader
    if _reader is None:
        _reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[_reader]))
    return _reader


def snapshot(reader: InMemoryMetricReader, scope_name: str) -> dict[tuple[str, str | None], float]:
    """Metric values of one meter, keyed by (name, topic attribute or None)."""
    out: dict[tuple[str, str | None], float] = {}
    data = reader.get_metrics_data()
    if data is None:
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != scope_name:
                continue
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attrs: Any = point.attributes or {}
                    value: Any = getattr(point, "value", None)
                    if value is None:
                        value = getattr(point, "count", 0)
                    out[(metric.name, attrs.get("topic"))] = float(value)
    return out
