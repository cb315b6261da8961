"""Peer contenders: raw nats-py on asyncio, written the natural way.

Each ``run_*`` function is a contender of a NATS scenario of
:mod:`piko_trio_events.bench` (see :mod:`._nats`): it runs alone in a fresh
interpreter, takes the scenario's parameters and returns
``{"messages": n, "seconds": s, ...}`` for the timed part only. It does the
same work on the wire as the library: a fresh ``str(uuid4())`` in the
``_watermill_message_uuid`` header of every message it publishes.

A peer contender (a ``_peer_*`` module) is, with :mod:`piko_trio_events.nats`,
the only code that imports asyncio or nats-py; it uses nothing of this
library but the uuid header's name. The other peers reuse this module's
helpers (``_run``, ``_wait``, ``_headers``, ``_connect``, ``fill``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from uuid import uuid4

from .._message import UUID_HEADER
from ._stats import percentiles

__all__ = [
    "run_core",
    "run_js_consume",
    "run_js_publish",
    "run_latency",
]

#: Messages a JetStream pull asks for at once (the library's consumer pulls as many).
FETCH_BATCH = 256


def _run(
    main: Callable[[Mapping[str, Any]], Coroutine[Any, Any, dict[str, Any]]],
) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    def run(params: Mapping[str, Any]) -> dict[str, Any]:
        return asyncio.run(main(params))

    run.__name__ = main.__name__.lstrip("_")
    return run


async def _wait(event: asyncio.Event, limit: float, what: Callable[[], str]) -> None:
    try:
        async with asyncio.timeout(limit):
            await event.wait()
    except TimeoutError:
        raise RuntimeError(f"timed out after {limit:g} s: {what()}") from None


def _headers() -> dict[str, str]:
    return {UUID_HEADER: str(uuid4())}


async def _connect(params: Mapping[str, Any]) -> Any:
    import nats

    return await nats.connect(str(params["url"]))


# -- core publish -> subscriber callback ------------------------------------------------------


async def _core(params: Mapping[str, Any]) -> dict[str, Any]:
    count, warmup, size = int(params["messages"]), int(params["warmup"]), int(params["size"])
    payload = os.urandom(size)
    nc = await _connect(params)
    subject = f"bench.core.{uuid4().hex}"
    received = 0
    goal = warmup
    reached = asyncio.Event()

    async def on_message(msg: Any) -> None:
        nonlocal received
        received += 1
        if received == goal:
            reached.set()

    total = count + warmup + 1
    await nc.subscribe(
        subject, cb=on_message, pending_msgs_limit=total, pending_bytes_limit=total * (size + 512)
    )
    await nc.flush()
    publish = nc.publish
    seconds = 0.0
    for phase, n in (("warmup", warmup), ("timed", count)):
        if n == 0:
            continue
        goal = received + n
        reached.clear()
        started = time.perf_counter()
        for _ in range(n):
            await publish(subject, payload, headers={UUID_HEADER: str(uuid4())})
        await _wait(reached, float(params["timeout"]), lambda: f"{received} received")
        if phase == "timed":
            seconds = time.perf_counter() - started
    await nc.close()
    return {"messages": count, "seconds": seconds, "received": received - warmup}


run_core = _run(_core)


# -- JetStream publish --------------------------------------------------------------------------


async def _stream(js: Any, root: str) -> None:
    await js.add_stream(name=f"RAW_{root}", subjects=[root, root + ".>"])


async def _js_publish(params: Mapping[str, Any]) -> dict[str, Any]:
    count, batch = int(params["messages"]), int(params["batch"])
    payload = os.urandom(int(params["size"]))
    nc = await _connect(params)
    js = nc.jetstream()
    root = f"rawpub{uuid4().hex[:12]}"
    subject = f"{root}.x"
    await _stream(js, root)
    calls = count // batch
    for _ in range(int(params["warmup"]) // batch or 1):
        await _publish_batch(js, subject, payload, batch)
    tasks = int(params.get("tasks", 1))
    calls -= calls % tasks

    async def publisher(n: int) -> None:
        for _ in range(n):
            await _publish_batch(js, subject, payload, batch)

    started = time.perf_counter()
    if tasks == 1:
        await publisher(calls)
    else:  # concurrent tasks, one message a call each
        await asyncio.gather(*(publisher(calls // tasks) for _ in range(tasks)))
    seconds = time.perf_counter() - started
    await nc.close()
    return {"messages": calls * batch, "seconds": seconds}


async def _publish_batch(js: Any, subject: str, payload: bytes, batch: int) -> None:
    if batch == 1:
        await js.publish(subject, payload, headers=_headers())
        return
    # publish_async returns a future per message; wait for the store acks together.
    futures = [await js.publish_async(subject, payload, headers=_headers()) for _ in range(batch)]
    await asyncio.gather(*futures)


run_js_publish = _run(_js_publish)


# -- JetStream consume + ack --------------------------------------------------------------------


async def fill(js: Any, subject: str, payload: bytes, count: int) -> None:
    """Store ``count`` messages on ``subject`` (untimed set-up of a consume run)."""
    for start in range(0, count, 500):
        futures = [
            await js.publish_async(subject, payload, headers=_headers())
            for _ in range(min(500, count - start))
        ]
        await asyncio.gather(*futures)


async def _js_consume(params: Mapping[str, Any]) -> dict[str, Any]:
    count = int(params["messages"])
    confirmed = params["ack"] == "confirmed"
    payload = os.urandom(int(params["size"]))
    nc = await _connect(params)
    js = nc.jetstream()
    root = f"rawcon{uuid4().hex[:12]}"
    subject = f"{root}.x"
    await _stream(js, root)
    await fill(js, subject, payload, count)
    deadline = time.monotonic() + float(params["timeout"])
    started = time.perf_counter()
    sub = await js.pull_subscribe(subject, durable="raw")
    received = 0
    while received < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {received} of {count} consumed")
        for msg in await sub.fetch(FETCH_BATCH, timeout=5):
            if confirmed:
                await msg.ack_sync()
            else:
                await msg.ack()
            received += 1
    await nc.flush()
    seconds = time.perf_counter() - started
    await nc.close()
    return {"messages": count, "seconds": seconds, "received": received}


run_js_consume = _run(_js_consume)


# -- round trip latency: request -> handler -> reply topic --------------------------------------


async def _latency(params: Mapping[str, Any]) -> dict[str, Any]:
    count, warmup, rate = int(params["messages"]), int(params["warmup"]), float(params["rate"])
    nc = await _connect(params)
    tag = uuid4().hex
    requests, replies = f"bench.req.{tag}", f"bench.rep.{tag}"
    total = warmup + count
    sent = [0.0] * total
    samples: list[float] = []
    done = asyncio.Event()

    async def handle(msg: Any) -> None:
        await nc.publish(replies, msg.data, headers=_headers())

    async def on_reply(msg: Any) -> None:
        now = time.perf_counter()
        index = int.from_bytes(msg.data[:8], "big")
        if index >= warmup:
            samples.append((now - sent[index]) * 1e6)
        if index == total - 1 or len(samples) == count:
            done.set()

    await nc.subscribe(requests, cb=handle)
    await nc.subscribe(replies, cb=on_reply)
    await nc.flush()
    padding = os.urandom(max(0, int(params["size"]) - 8))
    started = time.perf_counter()
    for index in range(total):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[index] = time.perf_counter()
        await nc.publish(requests, index.to_bytes(8, "big") + padding, headers=_headers())
    await _wait(done, float(params["timeout"]), lambda: f"{len(samples)} of {count} replies")
    seconds = time.perf_counter() - sent[warmup]
    await nc.close()
    return {"messages": count, "seconds": seconds, **percentiles(samples)}


run_latency = _run(_latency)
