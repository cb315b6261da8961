"""Small helpers shared by the NATS tests."""

from __future__ import annotations

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
