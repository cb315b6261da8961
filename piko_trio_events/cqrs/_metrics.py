"""The typed layer's metrics: bad input and late replies (OpenTelemetry API)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

__all__ = ["CqrsMetrics", "cqrs_metrics"]


class CqrsMetrics:
    """Process-wide instruments of :mod:`piko_trio_events.cqrs`.

    Attributes:
        decode_errors: messages a typed handler could not decode, by topic
            (``events.cqrs.decode_errors``).
        late_replies: replies that came after their request gave up
            (``events.cqrs.late_replies``).
    """

    def __init__(self) -> None:
        meter = metrics.get_meter("piko_trio_events.cqrs")
        self.decode_errors: defaultdict[str, int] = defaultdict(int)
        meter.create_observable_counter(
            "events.cqrs.decode_errors", callbacks=[self._observe], unit="{message}"
        )
        self.late_replies = meter.create_counter("events.cqrs.late_replies", unit="{message}")

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"topic": t}) for t, n in list(self.decode_errors.items())]


_instance: CqrsMetrics | None = None


def cqrs_metrics() -> CqrsMetrics:
    """The process-wide instruments (created on first use)."""
    global _instance
    if _instance is None:
        _instance = CqrsMetrics()
    return _instance
