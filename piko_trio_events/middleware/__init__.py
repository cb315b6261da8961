"""The standard middleware: each factory returns a :data:`~piko_trio_events.Middleware`.

Add them to a router (``router.add_middleware(retry(), timeout(5.0))``) or to
one handler (``middleware=[...]``); the first added runs outermost. Each
factory checks its arguments when called and raises
:class:`~piko_trio_events.ConfigError` naming a bad one. Middleware that keeps
state (``deduplicator``, ``throttle``, ``circuit_breaker``) keeps it per
wrapped handler. ``tracing`` and ``handler_metrics`` report through the
OpenTelemetry API (no SDK needed; without one they cost next to nothing).
"""

from .circuit_breaker import CircuitOpenError as CircuitOpenError
from .circuit_breaker import CircuitState as CircuitState
from .circuit_breaker import circuit_breaker as circuit_breaker
from .correlation_id import CORRELATION_ID_KEY as CORRELATION_ID_KEY
from .correlation_id import correlation_id as correlation_id
from .correlation_id import get_correlation_id as get_correlation_id
from .correlation_id import set_correlation_id as set_correlation_id
from .deduplicator import deduplicator as deduplicator
from .handler_metrics import handler_metrics as handler_metrics
from .ignore_errors import ignore_errors as ignore_errors
from .instant_ack import instant_ack as instant_ack
from .poison_queue import POISONED_HANDLER_KEY as POISONED_HANDLER_KEY
from .poison_queue import POISONED_TOPIC_KEY as POISONED_TOPIC_KEY
from .poison_queue import REASON_POISONED_KEY as REASON_POISONED_KEY
from .poison_queue import poison_queue as poison_queue
from .retry import retry as retry
from .throttle import throttle as throttle
from .timeout import HandlerTimeoutError as HandlerTimeoutError
from .timeout import timeout as timeout
from .tracing import TracingPublisher as TracingPublisher
from .tracing import extract_trace_context as extract_trace_context
from .tracing import inject_trace_context as inject_trace_context
from .tracing import tracing as tracing

__all__ = [
    "CORRELATION_ID_KEY",
    "POISONED_HANDLER_KEY",
    "POISONED_TOPIC_KEY",
    "REASON_POISONED_KEY",
    "CircuitOpenError",
    "CircuitState",
    "HandlerTimeoutError",
    "TracingPublisher",
    "circuit_breaker",
    "correlation_id",
    "deduplicator",
    "extract_trace_context",
    "get_correlation_id",
    "handler_metrics",
    "ignore_errors",
    "inject_trace_context",
    "instant_ack",
    "poison_queue",
    "retry",
    "set_correlation_id",
    "throttle",
    "timeout",
    "tracing",
]
