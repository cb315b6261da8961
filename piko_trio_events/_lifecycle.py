"""The lifecycle every provider shares: start, run, and a drain under one budget.

A provider is a list of its own steps (:class:`ProviderSteps`): what starts
before the router, what drains after it, what undoes a failed start. Around
them, :func:`run_provider` does what every provider does the same way: its
nursery, the router's start, the metrics, the running flag, one exception
policy (a single error leaves the block unwrapped), and the drain.

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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ._router import Router
from ._util import single_error

if TYPE_CHECKING:
    from ._metrics import ProviderMetrics
    from ._provider_base import ProviderBase

__all__ = [
    "DrainReport",
    "DrainStep",
    "ProviderSteps",
    "drain",
    "reserve",
    "run_provider",
    "unwind_reserve",
]

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


class ProviderSteps(Protocol):
    """A provider's own steps, around the router's (the internal interface
    between a provider and :func:`run_provider`)."""

    #: The whole drain's budget in seconds (the provider's close timeout).
    budget: float

    async def start(self, nursery: trio.Nursery) -> None:
        """Start what runs before the router (services in ``nursery``, the
        connection). Raising fails the start: :meth:`abort` follows."""

    async def abort(self) -> None:
        """Undo a start that failed (shielded, within the budget)."""

    def drain_steps(self) -> Sequence[DrainStep]:
        """The steps after the router, in order (called when the drain begins)."""

    def stop(self) -> None:
        """After the drain (or a failed start): stop the provider's own
        background tasks; no awaiting."""


@asynccontextmanager
async def run_provider(
    provider: ProviderBase[Any, Any],
    steps: ProviderSteps,
    metrics: ProviderMetrics | None = None,
    scrub: Callable[[str], str] = str,
) -> AsyncIterator[None]:
    """Run ``provider`` for the duration of the block: its steps' start, then
    the router's; on leaving (normally, by an error, or because an enclosing
    scope was cancelled), the shielded :func:`drain` of the router and the
    steps within ``steps.budget``, then ``steps.stop()``.

    An error of one task (or of the block) leaves unwrapped, not as an
    exception group of one.
    """
    router = provider.router
    started = time.perf_counter()
    with single_error():
        async with trio.open_nursery() as nursery:
            try:
                await steps.start(nursery)
                await nursery.start(router._run)
            except BaseException:
                if metrics is not None:
                    metrics.start_error_count.add(1)
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + steps.budget
                    await steps.abort()
                router._cancel()
                steps.stop()
                raise
            if metrics is not None:
                metrics.start_count.add(1)
                metrics.start_duration.record((time.perf_counter() - started) * 1000)
            provider._set_running(True)
            try:
                yield
            finally:
                provider._set_running(False)
                closing = time.perf_counter()
                report = await drain(router, steps.drain_steps(), budget=steps.budget, scrub=scrub)
                router._cancel()
                steps.stop()
                if metrics is not None:
                    if not report.ok:
                        metrics.close_error_count.add(1)
                    metrics.close_count.add(1)
                    metrics.close_duration.record((time.perf_counter() - closing) * 1000)
