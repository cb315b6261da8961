"""Peer contenders: FastStream's ``NatsBroker`` (an optional ``bench`` extra).

The same scenarios as :mod:`._peer_nats_py`, written as a FastStream user would:
``@broker.subscriber`` handlers taking the body as ``bytes``,
``broker.publish`` with the same uuid header, JetStream through ``JStream``
and a pull subscriber (``PullSub``) with FastStream's default ack after the
handler returns (nats-py's fire-and-forget ``ack()``), or for confirmed acks
``AckPolicy.MANUAL`` and ``await msg.ack_sync()`` in the handler.
Per-message logging is switched off (``logger=None``), which favours
FastStream.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any
from uuid import uuid4

from ._peer_nats_py import FETCH_BATCH, _headers, _run, _wait, fill
from ._stats import percentiles

__all__ = ["run_core", "run_js_consume", "run_js_publish", "run_latency"]


def _broker(params: Mapping[str, Any]) -> Any:
    from faststream.nats import NatsBroker

    return NatsBroker(str(params["url"]), logger=None)


async def _core(params: Mapping[str, Any]) -> dict[str, Any]:
    count, warmup, size = int(params["messages"]), int(params["warmup"]), int(params["size"])
    payload = os.urandom(size)
    broker = _broker(params)
    subject = f"bench.core.{uuid4().hex}"
    received = 0
    goal = warmup
    reached = asyncio.Event()
    total = count + warmup + 1

    @broker.subscriber(  # type: ignore[untyped-decorator,unused-ignore]
        subject, pending_msgs_limit=total, pending_bytes_limit=total * (size + 1024)
    )
    async def handle(body: bytes) -> None:
        nonlocal received
        received += 1
        if received == goal:
            reached.set()

    await broker.start()
    publish = broker.publish
    seconds = 0.0
    for phase, n in (("warmup", warmup), ("timed", count)):
        if n == 0:
            continue
        goal = received + n
        reached.clear()
        started = time.perf_counter()
        for _ in range(n):
            await publish(payload, subject, headers=_headers())
        await _wait(reached, float(params["timeout"]), lambda: f"{received} received")
        if phase == "timed":
            seconds = time.perf_counter() - started
    await broker.stop()
    return {"messages": count, "seconds": seconds, "received": received - warmup}


run_core = _run(_core)


async def _js_publish(params: Mapping[str, Any]) -> dict[str, Any]:
    count = int(params["messages"])
    if int(params["batch"]) != 1:
        raise RuntimeError("FastStream has no batch publish for NATS")
    payload = os.urandom(int(params["size"]))
    broker = _broker(params)
    await broker.start()
    root = f"fspub{uuid4().hex[:12]}"
    stream = f"FS_{root}"
    await _add_stream(params, stream, root)
    subject = f"{root}.x"
    publish = broker.publish
    for _ in range(int(params["warmup"]) or 1):
        await publish(payload, subject, headers=_headers(), stream=stream)
    tasks = int(params.get("tasks", 1))
    count -= count % tasks

    async def publisher(n: int) -> None:
        for _ in range(n):
            await publish(payload, subject, headers=_headers(), stream=stream)

    started = time.perf_counter()
    if tasks == 1:
        await publisher(count)
    else:
        await asyncio.gather(*(publisher(count // tasks) for _ in range(tasks)))
    seconds = time.perf_counter() - started
    await broker.stop()
    return {"messages": count, "seconds": seconds}


async def _add_stream(
    params: Mapping[str, Any], stream: str, root: str, fill_count: int = 0, size: int = 0
) -> None:
    import nats

    nc = await nats.connect(str(params["url"]))
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[root, root + ".>"])
    if fill_count:
        await fill(js, f"{root}.x", os.urandom(size), fill_count)
    await nc.close()


run_js_publish = _run(_js_publish)


async def _js_consume(params: Mapping[str, Any]) -> dict[str, Any]:
    from faststream import AckPolicy
    from faststream.nats import JStream, NatsMessage, PullSub

    count = int(params["messages"])
    confirmed = params["ack"] == "confirmed"
    root = f"fscon{uuid4().hex[:12]}"
    stream = f"FS_{root}"
    await _add_stream(params, stream, root, count, int(params["size"]))
    broker = _broker(params)
    received = 0
    done = asyncio.Event()

    def count_one() -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    subscriber = broker.subscriber(
        f"{root}.x",
        stream=JStream(stream, declare=False),
        durable="fs",
        pull_sub=PullSub(batch_size=FETCH_BATCH),
        # FastStream's own ack after the handler is nats-py's fire-and-forget
        # ack(); a confirmed ack is the handler's, by hand.
        ack_policy=AckPolicy.MANUAL if confirmed else AckPolicy.REJECT_ON_ERROR,
    )
    if confirmed:

        @subscriber  # type: ignore[untyped-decorator,unused-ignore]
        async def handle_confirmed(body: bytes, msg: NatsMessage) -> None:
            await msg.ack_sync()
            count_one()

    else:

        @subscriber  # type: ignore[untyped-decorator,unused-ignore]
        async def handle(body: bytes) -> None:
            count_one()

    started = time.perf_counter()
    await broker.start()
    await _wait(done, float(params["timeout"]), lambda: f"{received} of {count} consumed")
    await broker.stop()  # drains: the last acks reach the server
    seconds = time.perf_counter() - started
    return {"messages": count, "seconds": seconds, "received": received}


run_js_consume = _run(_js_consume)


async def _latency(params: Mapping[str, Any]) -> dict[str, Any]:
    count, warmup, rate = int(params["messages"]), int(params["warmup"]), float(params["rate"])
    broker = _broker(params)
    tag = uuid4().hex
    requests, replies = f"bench.req.{tag}", f"bench.rep.{tag}"
    total = warmup + count
    sent = [0.0] * total
    samples: list[float] = []
    done = asyncio.Event()

    @broker.subscriber(requests)  # type: ignore[untyped-decorator,unused-ignore]
    @broker.publisher(replies)  # type: ignore[untyped-decorator,unused-ignore]
    async def handle(body: bytes) -> bytes:
        return body

    @broker.subscriber(replies)  # type: ignore[untyped-decorator,unused-ignore]
    async def on_reply(body: bytes) -> None:
        now = time.perf_counter()
        index = int.from_bytes(body[:8], "big")
        if index >= warmup:
            samples.append((now - sent[index]) * 1e6)
        if index == total - 1 or len(samples) == count:
            done.set()

    await broker.start()
    padding = os.urandom(max(0, int(params["size"]) - 8))
    publish = broker.publish
    started = time.perf_counter()
    for index in range(total):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[index] = time.perf_counter()
        await publish(index.to_bytes(8, "big") + padding, requests, headers=_headers())
    await _wait(done, float(params["timeout"]), lambda: f"{len(samples)} of {count} replies")
    seconds = time.perf_counter() - sent[warmup]
    await broker.stop()
    return {"messages": count, "seconds": seconds, **percentiles(samples)}


run_latency = _run(_latency)
