"""Memory provider throughput against a bare trio memory channel pipe.

Both sides move the same messages (``Message(payload)`` built per message by
the producer, ``size`` random bytes each) between two tasks through a buffer
of the same size:

- ``bare-channel``: ``await send.send(msg)`` -> ``async for msg in receive``;
- ``handler-pipe``: the stricter pipe an application without this library
  writes: a small object per message (not a ``Message``) through the same
  channel, and the consumer awaits a handler coroutine for each one;
- ``memory-provider``: ``await publisher.publish(topic, msg)`` -> a router
  handler (returns None) -> the router acks the message.

The clock runs from the producer's start until the consumer has taken the
last message (the provider acks it before the consumer task next yields).
Each contender warms up with ``warmup`` messages in a separate ``trio.run``
first. Targets: the provider at >= 0.9x the bare pipe (the foundation issue)
and >= 0.9x the handler pipe (issue 11).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Mapping
from typing import Any

import trio
from trio.testing import wait_all_tasks_blocked

from .. import MemoryConfig, Message, open_memory_provider
from .._metrics import provider_metrics
from ._runner import Contender, Scenario, Target

__all__ = ["scenario"]

TOPIC = "bench.memory"


def scenario(
    *, messages: int = 200_000, size: int = 128, buffer: int = 8192, warmup: int = 20_000
) -> Scenario:
    """The memory scenario with these counts."""
    return Scenario(
        name="memory",
        title=(
            f"publish -> router handler -> ack, {size} B messages, buffer {buffer},"
            f" {messages:,} messages a run"
        ),
        contenders=(
            Contender("bare-channel", f"{__name__}:run_bare_channel"),
            Contender("handler-pipe", f"{__name__}:run_handler_pipe"),
            Contender("memory-provider", f"{__name__}:run_memory_provider"),
        ),
        baselines=("bare-channel", "handler-pipe"),
        targets=(
            Target("memory-provider", "bare-channel", 0.9),
            Target("memory-provider", "handler-pipe", 0.9),
        ),
        params={"messages": messages, "size": size, "buffer": buffer, "warmup": warmup},
    )


def _timed(fn: Any, count: int, payload: bytes, buffer: int, warmup: int) -> dict[str, Any]:
    if warmup > 0:
        trio.run(fn, warmup, payload, buffer)
    gc.collect()
    seconds, extra = trio.run(fn, count, payload, buffer)
    return {"messages": count, "seconds": seconds, **extra}


def _args(params: Mapping[str, Any]) -> tuple[int, bytes, int, int]:
    return (
        int(params["messages"]),
        os.urandom(int(params["size"])),
        int(params["buffer"]),
        int(params["warmup"]),
    )


# -- bare trio memory channel ----------------------------------------------------------------


def run_bare_channel(params: Mapping[str, Any]) -> dict[str, Any]:
    return _timed(_bare_channel, *_args(params))


async def _bare_channel(count: int, payload: bytes, buffer: int) -> tuple[float, dict[str, Any]]:
    send, receive = trio.open_memory_channel[Message](buffer)
    done = trio.Event()
    received = 0

    async def produce() -> None:
        async with send:
            for _ in range(count):
                await send.send(Message(payload))

    async def consume() -> None:
        nonlocal received
        async with receive:
            async for _msg in receive:
                received += 1
                if received == count:
                    done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await wait_all_tasks_blocked()
        started = time.perf_counter()
        nursery.start_soon(produce)
        await done.wait()
        seconds = time.perf_counter() - started
    if received != count:
        raise RuntimeError(f"bare channel: {received} of {count} messages received")
    return seconds, {}


# -- a channel of small objects, a handler coroutine awaited per object -----------------------


class _Event:
    """The small object an application would pass through its own pipe."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


def run_handler_pipe(params: Mapping[str, Any]) -> dict[str, Any]:
    return _timed(_handler_pipe, *_args(params))


async def _handler_pipe(count: int, payload: bytes, buffer: int) -> tuple[float, dict[str, Any]]:
    send, receive = trio.open_memory_channel[_Event](buffer)
    done = trio.Event()
    received = 0

    async def handle(event: _Event) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    async def produce() -> None:
        async with send:
            for _ in range(count):
                await send.send(_Event(payload))

    async def consume() -> None:
        async with receive:
            async for event in receive:
                await handle(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await wait_all_tasks_blocked()
        started = time.perf_counter()
        nursery.start_soon(produce)
        await done.wait()
        seconds = time.perf_counter() - started
    if received != count:
        raise RuntimeError(f"handler pipe: {received} of {count} messages received")
    return seconds, {}


# -- memory provider -------------------------------------------------------------------------


def run_memory_provider(params: Mapping[str, Any]) -> dict[str, Any]:
    return _timed(_memory_provider, *_args(params))


async def _memory_provider(count: int, payload: bytes, buffer: int) -> tuple[float, dict[str, Any]]:
    acked = provider_metrics("memory").acked
    acked_before = acked[TOPIC]
    done = trio.Event()
    received = 0

    async def handle(msg: Message) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    async with open_memory_provider(MemoryConfig(output_buffer=buffer)) as provider:
        provider.router.add_handler("bench", TOPIC, handle)
        publish = provider.publisher.publish

        async def produce() -> None:
            for _ in range(count):
                await publish(TOPIC, Message(payload))

        async with trio.open_nursery() as nursery:
            await wait_all_tasks_blocked()
            started = time.perf_counter()
            nursery.start_soon(produce)
            await done.wait()
            seconds = time.perf_counter() - started
    acks = acked[TOPIC] - acked_before
    if received != count or acks != count or provider.undelivered:
        raise RuntimeError(
            f"memory provider: {received} handled, {acks} acked of {count};"
            f" {len(provider.undelivered)} undelivered"
        )
    return seconds, {"acked": acks}
