"""Small helpers shared by the NATS tests."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable

import trio


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
