"""Latency percentiles, shared by every contender of a latency scenario.

Pure Python (no asyncio, no trio), so that this library's contenders and the
peer contenders (:mod:`._peer_nats_py`, :mod:`._peer_faststream`,
:mod:`._peer_cqrs`) report their samples the same way.
"""

from __future__ import annotations

__all__ = ["percentiles"]


def percentiles(samples_us: list[float]) -> dict[str, float]:
    """p50 / p99 / p99.9 (nearest rank) and the maximum, in microseconds."""
    ordered = sorted(samples_us)
    if not ordered:
        raise RuntimeError("no latency samples")

    def rank(q: float) -> float:
        index = min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))
        return round(ordered[index], 1)

    return {
        "p50_us": rank(0.50),
        "p99_us": rank(0.99),
        "p999_us": rank(0.999),
        "max_us": round(ordered[-1], 1),
        "samples": len(ordered),
    }
