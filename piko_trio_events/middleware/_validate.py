"""Argument checks shared by the middleware factories.

Every check raises :class:`~piko_trio_events.ConfigError` (a ``ValueError``)
naming the argument, so that a bad value fails when the middleware is built,
not when the first message arrives.
"""

from __future__ import annotations

import math

from .._errors import ConfigError

__all__ = ["check_callable", "check_int", "check_number"]


def check_number(
    name: str,
    value: object,
    *,
    minimum: float,
    maximum: float = math.inf,
    exclusive_minimum: bool = False,
) -> float:
    """Return ``value`` as a float if it is a finite number within the bounds."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < minimum
        or (exclusive_minimum and value == minimum)
        or value > maximum
    ):
        low = f"> {minimum:g}" if exclusive_minimum else f">= {minimum:g}"
        high = "" if maximum == math.inf else f" and <= {maximum:g}"
        raise ConfigError(f"{name} must be a finite number {low}{high}, not {value!r}")
    return float(value)


def check_int(name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` if it is an int (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, not {value!r}")
    return value


def check_callable(name: str, value: object) -> None:
    """Raise unless ``value`` is callable or None."""
    if value is not None and not callable(value):
        raise ConfigError(f"{name} must be callable or None, not {value!r}")
