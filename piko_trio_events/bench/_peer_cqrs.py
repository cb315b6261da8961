"""Peer contenders of the cqrs request/reply scenario: raw nats-py and FastStream.

``nc.request`` against a subscription that answers with ``msg.respond`` (one
connection), and FastStream's ``broker.request`` against a subscriber that
returns its decoded JSON body: round trips one after another, each timed.
A peer contender (a ``_peer_*`` module) may import asyncio, nats-py and
FastStream; the trio side is :mod:`._cqrs`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any
from uuid import uuid4

from ._peer_nats_py import _connect, _run
from ._stats import percentiles

__all__ = ["run_faststream_request", "run_raw_request"]


async def _raw_request(params: Mapping[str, Any]) -> dict[str, Any]:
    count, warmup = int(params["messages"]), int(params["warmup"])
    payload = str(params["payload"]).encode()
    nc = await _connect(params)
    subject = f"bench.request.{uuid4().hex}"

    async def respond(msg: Any) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(subject, cb=respond)
    await nc.flush()
    samples: list[float] = []
    started = time.perf_counter()
    rate = float(params["rate"])
    paced = time.perf_counter()
    for index in range(warmup + count):
        if index == warmup:
            started = time.perf_counter()
        delay = paced + index / rate - time.perf_counter()
        if delay > 0:  # a fixed rate, as the latency scenario: no request waits on another
            await asyncio.sleep(delay)
        sent = time.perf_counter()
        reply = await nc.request(subject, payload, timeout=5)
        if index >= warmup:
            samples.append((time.perf_counter() - sent) * 1e6)
        if reply.data != payload:
            raise RuntimeError("raw nats-py: a wrong reply")
    seconds = time.perf_counter() - started
    await nc.close()
    return {"messages": count, "seconds": seconds, **percentiles(samples)}


run_raw_request = _run(_raw_request)


async def _faststream_request(params: Mapping[str, Any]) -> dict[str, Any]:
    from faststream.nats import NatsBroker

    count, warmup = int(params["messages"]), int(params["warmup"])
    body = dict(params["body"])
    broker = NatsBroker(str(params["url"]), logger=None)
    subject = f"bench.request.{uuid4().hex}"

    @broker.subscriber(subject)  # type: ignore[untyped-decorator,unused-ignore]
    async def handle(order: dict[str, Any]) -> dict[str, Any]:
        return order

    await broker.start()
    samples: list[float] = []
    started = time.perf_counter()
    rate = float(params["rate"])
    paced = time.perf_counter()
    for index in range(warmup + count):
        if index == warmup:
            started = time.perf_counter()
        delay = paced + index / rate - time.perf_counter()
        if delay > 0:  # a fixed rate, as the latency scenario: no request waits on another
            await asyncio.sleep(delay)
        sent = time.perf_counter()
        response = await broker.request(body, subject, timeout=5)
        reply = await response.decode()
        if index >= warmup:
            samples.append((time.perf_counter() - sent) * 1e6)
        if reply != body:
            raise RuntimeError(f"faststream: a wrong reply {reply!r}")
    seconds = time.perf_counter() - started
    await broker.stop()
    return {"messages": count, "seconds": seconds, **percentiles(samples)}


run_faststream_request = _run(_faststream_request)
