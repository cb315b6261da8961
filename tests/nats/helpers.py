"""Small helpers shared by the NATS tests."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from piko_trio_events.nats import NatsProvider


class Tally:
    """Counts by name; ``await tally.reached(predicate)`` wakes on every change."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._changed = trio.Event()

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n
        self._changed.set()
        self._changed = trio.Event()

    async def reached(self, check: object) -> None:
        assert callable(check)
        while not check(self.counts):
            await self._changed.wait()


async def eventually(check: Callable[[], bool], interval: float = 0.01) -> None:
    """Wait until ``check()`` holds (for state that another loop changes)."""
    while True:
        if check():
            return
        await trio.sleep(interval)


def wait_until_stopped(pid: int) -> None:
    """SIGSTOP is delivered asynchronously: the process may answer one more
    request before it stops. Wait until the kernel shows it stopped."""
    while True:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
        if state in ("T", "t"):
            return
        os.sched_yield()


async def stored_messages(provider: NatsProvider, stream: str) -> int:
    """How many messages JetStream stream ``stream`` holds."""
    conn = provider._conn
    assert conn.jsm is not None
    info = await conn.bridge.call(conn.jsm.stream_info, stream)
    return int(info.state.messages or 0)


async def add_full_stream(provider: NatsProvider, name: str, subjects: list[str]) -> None:
    """Add a stream that stores one message and refuses every other
    (``max_msgs=1``, discard new: a publish past it is answered with an error)."""
    from nats.js.api import DiscardPolicy, StreamConfig

    conn = provider._conn
    assert conn.jsm is not None
    config = StreamConfig(name=name, subjects=subjects, max_msgs=1, discard=DiscardPolicy.NEW)
    await conn.bridge.call(conn.jsm.add_stream, config)
