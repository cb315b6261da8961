"""Memory provider: peak RSS while a fast producer feeds a slow consumer.

The producer publishes ``messages`` messages (``size`` bytes each) as fast as
``publish`` lets it; a router handler takes at most ``rate`` a second (it
waits for each message's slot in a fixed schedule). Every message must
arrive. Because the provider's buffer is bounded (``MemoryConfig.output_buffer``)
``publish`` waits once it is full, so memory stays flat however many messages
flow; the figure reported is the growth of the resident set size over the
run (its highest value, sampled every 20 ms from a thread, minus its value
at the start), against the same run through a bare trio memory channel of
the same buffer size.
"""

from __future__ import annotations

import gc
import os
import resource
import threading
import time
from collections.abc import Mapping
from typing import Any

import trio

from .. import MemoryConfig, Message, open_memory_provider
from ._runner import Column, Contender, Scenario

__all__ = ["scenario"]

TOPIC = "bench.rss"


def scenario(
    *, messages: int = 1_000_000, rate: float = 20_000.0, size: int = 128, buffer: int = 8192
) -> Scenario:
    """The RSS scenario with these counts (one round: it takes messages / rate seconds)."""
    return Scenario(
        name="memory-rss",
        title=(
            f"memory provider, {messages:,} messages of {size} B to a handler limited to"
            f" {rate:,.0f}/s (buffer {buffer}); all must arrive; peak RSS growth"
        ),
        contenders=(
            Contender("bare-channel", f"{__name__}:run_bare_channel"),
            Contender("memory-provider", f"{__name__}:run_memory_provider"),
        ),
        baselines=("bare-channel",),
        params={"messages": messages, "rate": rate, "size": size, "buffer": buffer},
        columns=(
            Column("rss_growth_mib", "RSS growth MiB", 1),
            Column("rss_peak_mib", "peak RSS MiB", 1),
        ),
        max_rounds=1,
    )


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _current_mib() -> float | None:
    """Resident set size now (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


class _Sampler:
    """Samples the resident set size every ``interval`` seconds from a thread
    (the process's lifetime peak, ``ru_maxrss``, may predate the run)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = _current_mib() or 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _current_mib() or 0.0)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _current_mib() or 0.0)


class _Pace:
    """Lets the n-th message through no earlier than ``start + n / rate``."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.count = 0
        self.start = 0.0

    async def wait(self) -> None:
        if self.count == 0:
            self.start = trio.current_time()
        self.count += 1
        due = self.start + self.count / self.rate
        if due > trio.current_time():
            await trio.sleep_until(due)


def _run(fn: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    count = int(params["messages"])
    gc.collect()
    with _Sampler() as sampler:
        before = sampler.peak
        started = time.perf_counter()
        received = trio.run(
            fn, count, os.urandom(int(params["size"])), int(params["buffer"]), float(params["rate"])
        )
        seconds = time.perf_counter() - started
    if received != count:
        raise RuntimeError(f"{received} of {count} messages arrived")
    return {
        "messages": count,
        "seconds": seconds,
        "received": received,
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(sampler.peak, 1),
        "rss_growth_mib": round(sampler.peak - before, 1),
        "max_rss_mib": round(_peak_mib(), 1),
    }


def run_bare_channel(params: Mapping[str, Any]) -> dict[str, Any]:
    return _run(_bare_channel, params)


async def _bare_channel(count: int, payload: bytes, buffer: int, rate: float) -> int:
    send, receive = trio.open_memory_channel[Message](buffer)
    pace = _Pace(rate)
    received = 0

    async def produce() -> None:
        async with send:
            for _ in range(count):
                await send.send(Message(payload))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        async with receive:
            async for _msg in receive:
                await pace.wait()
                received += 1
    return received


def run_memory_provider(params: Mapping[str, Any]) -> dict[str, Any]:
    return _run(_memory_provider, params)


async def _memory_provider(count: int, payload: bytes, buffer: int, rate: float) -> int:
    pace = _Pace(rate)
    received = 0
    done = trio.Event()

    async def handle(msg: Message) -> None:
        nonlocal received
        await pace.wait()
        received += 1
        if received == count:
            done.set()

    async with open_memory_provider(MemoryConfig(output_buffer=buffer)) as provider:
        provider.router.add_handler("slow", TOPIC, handle)
        publish = provider.publisher.publish
        for _ in range(count):
            await publish(TOPIC, Message(payload))
        await done.wait()
    return received
