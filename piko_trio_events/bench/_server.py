"""The nats-server of a NATS scenario, started by the public testing helper.

The runner is synchronous (it waits for one contender's subprocess at a
time) and a scenario's ``setup`` is a plain context manager, so the server
runs in a thread of its own, under ``trio.run``, inside
:func:`piko_trio_events.testing.open_nats_server`: the one launcher that the
tests, the demo and the benchmark share. The contenders, each in its own
interpreter, get the server's URL in their parameters.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import trio

__all__ = ["nats_server"]


@contextlib.contextmanager
def nats_server() -> Iterator[Mapping[str, Any]]:
    """A nats-server with JetStream on a free loopback port; yields ``{"url": ...}``.

    Returns once the server accepts clients; leaving the block stops it
    (SIGTERM, then SIGKILL) and removes its store. An error starting it
    (no ``nats-server`` binary, no free port) is raised here.
    """
    started: queue.SimpleQueue[str | BaseException] = queue.SimpleQueue()
    stop = threading.Event()
    thread = threading.Thread(
        target=_serve, args=(started, stop), name="piko-bench-nats-server", daemon=True
    )
    thread.start()
    try:
        url = started.get()
        if isinstance(url, BaseException):
            raise url
        yield {"url": url}
    finally:
        stop.set()
        thread.join()


def _serve(started: queue.SimpleQueue[str | BaseException], stop: threading.Event) -> None:
    """The server thread: report the URL (or why it did not start), wait for ``stop``."""
    reported = False

    async def serve() -> None:
        nonlocal reported
        from ..testing import open_nats_server

        async with open_nats_server(jetstream=True) as server:
            started.put(server.url)
            reported = True
            await trio.to_thread.run_sync(stop.wait)

    try:
        trio.run(serve)
    except BaseException as exc:
        if not reported:
            started.put(exc)
            return
        raise
