"""Turn SIGTERM / SIGINT into cancellation, so that providers drain.

trio turns neither signal into cancellation by itself (SIGINT becomes a
KeyboardInterrupt at an arbitrary point; SIGTERM kills the process), so under
Kubernetes or systemd a provider would never get to drain.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ._util import single_error

__all__ = ["cancel_on_signals"]


@asynccontextmanager
async def cancel_on_signals(
    *signals: int,
) -> AsyncIterator[trio.CancelScope]:
    """Cancel the block when one of ``signals`` arrives (default SIGTERM, SIGINT).

    Yields the cancel scope; after the block, ``scope.cancelled_caught`` tells
    whether a signal stopped it. A provider opened inside the block drains in
    order when the signal cancels it. Must run in the main thread.

    Example::

        async with cancel_on_signals() as stopped:
            async with open_memory_provider() as provider:
                ...
                await trio.sleep_forever()
        if stopped.cancelled_caught:
            print("stopped by a signal")
    """
    wanted = signals or (signal.SIGTERM, signal.SIGINT)
    with single_error(), trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(_watch, scope, wanted)
            try:
                yield scope
            finally:
                nursery.cancel_scope.cancel()


async def _watch(
    scope: trio.CancelScope,
    signals: tuple[int, ...],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(*signals) as received:
        task_status.started()
        async for _ in received:
            scope.cancel()
            return
