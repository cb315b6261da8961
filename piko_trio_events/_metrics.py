"""OpenTelemetry metrics of the providers, cheap on the hot path.

Message counters are plain per-topic integers, reported through observable
counters when a reader collects: counting a message costs one dict update,
and with no SDK installed nothing else happens. Provider lifecycle events are
rare and use ordinary instruments.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

__all__ = ["MESSAGE_COUNTERS", "ProviderMetrics", "provider_metrics"]

MESSAGE_COUNTERS = (
    "messages_published",
    "messages_received",
    "messages_acked",
    "messages_nacked",
    "messages_redelivered",
)


class ProviderMetrics:
    """The instruments of one provider kind (``memory`` or ``nats``), process-wide.

    Attributes:
        published, received, acked, nacked, redelivered: cumulative counts by
            topic (the published topic or the subscription's pattern).
    """

    def __init__(self, kind: str, meter_name: str) -> None:
        prefix = f"events.adapters.{kind}."
        meter = metrics.get_meter(meter_name)
        self.published: defaultdict[str, int] = defaultdict(int)
        self.received: defaultdict[str, int] = defaultdict(int)
        self.acked: defaultdict[str, int] = defaultdict(int)
        self.nacked: defaultdict[str, int] = defaultdict(int)
        self.redelivered: defaultdict[str, int] = defaultdict(int)
        for name, counts in zip(
            MESSAGE_COUNTERS,
            (self.published, self.received, self.acked, self.nacked, self.redelivered),
            strict=True,
        ):
            meter.create_observable_counter(
                prefix + name, callbacks=[_observe(counts)], unit="{message}"
            )
        self.start_duration = meter.create_histogram(prefix + "provider_start_duration", unit="ms")
        self.close_duration = meter.create_histogram(prefix + "provider_close_duration", unit="ms")
        self.start_count = meter.create_counter(prefix + "provider_start_count")
        self.close_count = meter.create_counter(prefix + "provider_close_count")
        self.start_error_count = meter.create_counter(prefix + "provider_start_error_count")
        self.close_error_count = meter.create_counter(prefix + "provider_close_error_count")
        self.connection_attempts = meter.create_counter(prefix + "provider_connection_attempts")
        self.connection_errors = meter.create_counter(prefix + "provider_connection_errors")
        self.reconnections = meter.create_counter(prefix + "provider_reconnections")


def _observe(counts: dict[str, int]) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, {"topic": topic}) for topic, value in list(counts.items())]

    return callback


_instances: dict[str, ProviderMetrics] = {}


def provider_metrics(kind: str) -> ProviderMetrics:
    """The process-wide instruments for ``kind`` (created on first use)."""
    instance = _instances.get(kind)
    if instance is None:
        instance = _instances[kind] = ProviderMetrics(kind, f"piko_trio_events.{kind}")
    return instance
