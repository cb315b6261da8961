"""The drain every provider shares: one budget, cut into its steps' deadlines.

A provider closes in order: the router (stop intake, let in-flight handlers
finish, cancel the rest), then the provider's own steps (for NATS:
subscriptions, publisher, connection, the asyncio bridge). The whole drain
ends within one budget, the provider's ``close_timeout``; this module turns
that budget into one absolute deadline per step, fixed when the drain
begins:

* every step after the router keeps a *reserve* at the end of the budget
  (a share of the budget, capped in seconds), so a router that uses all of
  its time cannot starve the steps that nack its handlers' messages and
  flush what was published;
* the router gets what is left: its handlers run until
  ``min(start + router.close_timeout, router_end - unwind)``, then they are
  cancelled and have ``unwind`` to finish (their messages are nacked when
  their subscriptions close, while the connection is still up);
* a step that ends early leaves its time to the steps after it (the
  deadlines are points in time, not durations);
* each step runs shielded (an outer cancellation does not cut it short) with
  its own deadline, and a step that fails or runs out of time is logged and
  does not stop the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from ._router import Router

__all__ = ["DrainReport", "DrainStep", "drain", "reserve", "unwind_reserve"]

logger = logging.getLogger("piko_trio_events")

#: The time cancelled handlers have to unwind: a share of the budget, capped.
UNWIND_SHARE = 0.05
UNWIND_CAP = 1.0


def reserve(budget: float, share: float, cap: float) -> float:
    """``share`` of ``budget``, at most ``cap`` seconds (never negative)."""
    return max(0.0, min(budget * share, cap))


def unwind_reserve(budget: float) -> float:
    """The time cancelled handlers get to unwind at the end of the router's share."""
    return reserve(budget, UNWIND_SHARE, UNWIND_CAP)


@dataclass(frozen=True)
class DrainStep:
    """One step after the router: ``run`` must return by the step's deadline.

    ``reserve`` is the time kept for it at the end of the budget; it may use
    more when the steps before it ended early.
    """

    name: str
    run: Callable[[], Awaitable[None]]
    reserve: float = 0.0


@dataclass
class DrainReport:
    """What the drain did: ``failed`` names the steps that raised or ran out of time."""

    failed: list[str]

    @property
    def ok(self) -> bool:
        return not self.failed


async def drain(
    router: Router,
    steps: Sequence[DrainStep],
    *,
    budget: float,
    scrub: Callable[[str], str] = str,
) -> DrainReport:
    """Drain ``router``, then run ``steps`` in order, all within ``budget`` seconds.

    Shielded: cancelling the caller does not shorten it. Returns once every
    step has ended or given up at its deadline; never raises an
    ``Exception`` (a failing step is logged and reported).
    """
    start = trio.current_time()
    end = start + max(budget, 0.0)
    after = sum(step.reserve for step in steps)
    router_end = end - after
    unwind = unwind_reserve(budget)
    handlers_until = min(start + router.config.close_timeout, router_end - unwind)

    report = DrainReport(failed=[])

    async def close_router() -> None:
        await router._close(handlers_until)

    await _run_step("router", close_router, router_end, report, scrub)
    remaining = after
    for step in steps:
        remaining -= step.reserve
        await _run_step(step.name, step.run, end - remaining, report, scrub)
    return report


async def _run_step(
    name: str,
    run: Callable[[], Awaitable[None]],
    deadline: float,
    report: DrainReport,
    scrub: Callable[[str], str],
) -> None:
    with trio.CancelScope(shield=True, deadline=deadline) as scope:
        try:
            await run()
        except Exception as exc:
            report.failed.append(name)
            logger.warning("drain step %r failed: %s", name, scrub(f"{type(exc).__name__}: {exc}"))
            return
    if scope.cancelled_caught:
        report.failed.append(name)
        logger.warning("drain step %r ran out of its share of the close budget", name)
