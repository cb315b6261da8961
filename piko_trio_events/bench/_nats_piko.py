"""Benchmark contenders: this library's NATS provider on trio.

The same scenarios as the raw nats-py contenders
(:mod:`._peer_nats_py`), through the public API: a
``publisher.publish`` per message (or per batch), router handlers, and the
uuid the library puts in every message. Each ``run_*`` function runs alone in
a fresh interpreter and returns ``{"messages": n, "seconds": s, ...}`` for the
timed part only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any
from uuid import uuid4

import trio
from trio.testing import wait_all_tasks_blocked

from .. import JetStreamConfig, Message, NatsConfig, open_nats_provider
from ._stats import percentiles

__all__ = [
    "run_core",
    "run_group_member",
    "run_js_consume",
    "run_js_group",
    "run_js_publish",
    "run_latency",
]


def _core_config(params: Mapping[str, Any]) -> NatsConfig:
    return NatsConfig(url=str(params["url"]), jetstream=JetStreamConfig(disabled=True))


async def _wait(event: trio.Event, limit: float, what: str) -> None:
    with trio.move_on_after(limit) as scope:
        await event.wait()
    if scope.cancelled_caught:
        raise RuntimeError(f"timed out after {limit:g} s: {what}")


# -- core publish -> router handler --------------------------------------------------------------


def run_core(params: Mapping[str, Any]) -> dict[str, Any]:
    return trio.run(_core, params)


async def _core(params: Mapping[str, Any]) -> dict[str, Any]:
    count, warmup = int(params["messages"]), int(params["warmup"])
    payload = os.urandom(int(params["size"]))
    topic = f"bench.core.{uuid4().hex}"
    received = 0
    goal = warmup
    reached = trio.Event()

    async def handle(msg: Message) -> None:
        nonlocal received
        received += 1
        if received == goal:
            reached.set()

    seconds = 0.0
    async with open_nats_provider(_core_config(params)) as provider:
        provider.router.add_handler("bench", topic, handle)
        await wait_all_tasks_blocked()  # the handler has subscribed
        publish = provider.publisher.publish
        await provider.publisher.flush()
        for phase, n in (("warmup", warmup), ("timed", count)):
            if n == 0:
                continue
            goal = received + n
            reached = trio.Event()
            started = time.perf_counter()
            for _ in range(n):
                await publish(topic, Message(payload))
            await _wait(reached, float(params["timeout"]), f"{received} of {goal} handled")
            if phase == "timed":
                seconds = time.perf_counter() - started
    return {"messages": count, "seconds": seconds, "received": received - warmup}


# -- JetStream publish ---------------------------------------------------------------------------


def run_js_publish(params: Mapping[str, Any]) -> dict[str, Any]:
    return trio.run(_js_publish, params)


async def _js_publish(params: Mapping[str, Any]) -> dict[str, Any]:
    count, batch = int(params["messages"]), int(params["batch"])
    payload = os.urandom(int(params["size"]))
    topic = f"pikopub{uuid4().hex[:12]}.x"
    calls = count // batch
    async with open_nats_provider(NatsConfig(url=str(params["url"]))) as provider:
        publish = provider.publisher.publish
        for _ in range(int(params["warmup"]) // batch or 1):  # provisions the stream too
            await publish(topic, *[Message(payload) for _ in range(batch)])
        tasks = int(params.get("tasks", 1))
        calls -= calls % tasks

        async def publisher(n: int) -> None:
            for _ in range(n):
                await publish(topic, Message(payload))

        started = time.perf_counter()
        if batch == 1 and tasks == 1:
            await publisher(calls)
        elif batch == 1:  # concurrent tasks, one message a call each
            async with trio.open_nursery() as nursery:
                for _ in range(tasks):
                    nursery.start_soon(publisher, calls // tasks)
        else:
            for _ in range(calls):
                await publish(topic, *[Message(payload) for _ in range(batch)])
        seconds = time.perf_counter() - started
    return {"messages": calls * batch, "seconds": seconds}


# -- JetStream consume + ack through the router --------------------------------------------------


def _js_config(params: Mapping[str, Any], concurrency: int) -> NatsConfig:
    return NatsConfig(
        url=str(params["url"]),
        subscribers_count=concurrency,
        jetstream=JetStreamConfig(ack_async=params["ack"] == "async"),
    )


async def _fill(params: Mapping[str, Any], topic: str) -> None:
    count = int(params["messages"])
    payload = os.urandom(int(params["size"]))
    async with open_nats_provider(NatsConfig(url=str(params["url"]))) as provider:
        for start in range(0, count, 500):
            n = min(500, count - start)
            await provider.publisher.publish(topic, *[Message(payload) for _ in range(n)])


def run_js_consume(params: Mapping[str, Any]) -> dict[str, Any]:
    return trio.run(_js_consume, params)


async def _js_consume(params: Mapping[str, Any]) -> dict[str, Any]:
    count = int(params["messages"])
    topic = f"pikocon{uuid4().hex[:12]}.x"
    await _fill(params, topic)
    received = 0
    done = trio.Event()

    async def handle(msg: Message) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    async with open_nats_provider(
        _js_config(params, int(params.get("concurrency", 1)))
    ) as provider:
        started = time.perf_counter()
        provider.router.add_handler("consume", topic, handle)
        await _wait(done, float(params["timeout"]), f"{received} of {count} consumed")
        await provider.publisher.flush()  # the last acks are on their way
        seconds = time.perf_counter() - started
    return {"messages": count, "seconds": seconds, "received": received}


# -- scaling: two processes in one group ---------------------------------------------------------

_GROUP = "scale"


def run_js_group(params: Mapping[str, Any]) -> dict[str, Any]:
    """``processes`` members of one group share a pre-filled stream.

    Each member (:func:`run_group_member`) opens its provider, says it is
    ready, waits for the go (a file appearing), handles messages until none
    has come for a while, and reports how many it handled and the wall clock
    time of its last one. The time is from the go to the last message handled
    anywhere; the members' start-up and their idle wait are not timed.
    """
    count, processes = int(params["messages"]), int(params["processes"])
    topic = f"pikogrp{uuid4().hex[:12]}.x"
    trio.run(_fill, params, topic)
    go = os.path.join(tempfile.gettempdir(), f"piko-bench-go-{uuid4().hex}")
    member = {**params, "topic": topic, "go": go}
    spec = json.dumps({"target": f"{__name__}:run_group_member", "params": member})
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "piko_trio_events.bench._worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert child.stdin is not None
            child.stdin.write(spec)
            child.stdin.close()
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("a group member did not start")
        started = time.time()
        with open(go, "w"):
            pass
        reports = []
        for child in children:
            assert child.stdout is not None
            out = child.stdout.read()
            child.wait(timeout=float(params["timeout"]))
            if child.returncode != 0:
                raise RuntimeError(f"a group member failed with status {child.returncode}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        if os.path.exists(go):
            os.unlink(go)
    handled = sum(int(r["handled"]) for r in reports)
    if handled != count:
        raise RuntimeError(f"group: {handled} of {count} handled")
    last = max(float(r["last"]) for r in reports)
    return {"messages": count, "seconds": last - started, "shares": [r["handled"] for r in reports]}


def run_group_member(params: Mapping[str, Any]) -> dict[str, Any]:
    return trio.run(_group_member, params)


async def _group_member(params: Mapping[str, Any]) -> dict[str, Any]:
    handled = 0
    last = 0.0
    idle = trio.Event()

    async def handle(msg: Message) -> None:
        nonlocal handled, last
        handled += 1
        last = time.time()

    config = _js_config(params, int(params.get("concurrency", 1)))
    async with open_nats_provider(config) as provider:
        print("ready", file=sys.__stdout__, flush=True)
        go = trio.Path(str(params["go"]))
        # The go comes from another process, as a file: poll for it.
        while not await go.exists():  # noqa: ASYNC110
            await trio.sleep(0.001)
        provider.router.add_handler("member", str(params["topic"]), handle, group=_GROUP)
        # The members do not know each other's counts: stop once nothing has
        # arrived for a while after the last message (it is not timed).
        begun = trio.current_time()
        deadline = begun + float(params["timeout"])
        seen = -1
        while trio.current_time() < deadline and not idle.is_set():
            await trio.sleep(0.25)
            if handled == seen and (handled > 0 or trio.current_time() > begun + 3):
                idle.set()
            seen = handled
        await provider.publisher.flush()
    return {"messages": max(handled, 1), "seconds": 1.0, "handled": handled, "last": last}


# -- round trip latency: request -> handler -> reply topic ---------------------------------------


def run_latency(params: Mapping[str, Any]) -> dict[str, Any]:
    return trio.run(_latency, params)


async def _latency(params: Mapping[str, Any]) -> dict[str, Any]:
    count, warmup, rate = int(params["messages"]), int(params["warmup"]), float(params["rate"])
    tag = uuid4().hex
    requests, replies = f"bench.req.{tag}", f"bench.rep.{tag}"
    total = warmup + count
    sent = [0.0] * total
    samples: list[float] = []
    done = trio.Event()

    async def handle(msg: Message) -> Message:
        return Message(msg.payload)

    async def on_reply(msg: Message) -> None:
        now = time.perf_counter()
        index = int.from_bytes(msg.payload[:8], "big")
        if index >= warmup:
            samples.append((now - sent[index]) * 1e6)
        if index == total - 1 or len(samples) == count:
            done.set()

    padding = os.urandom(max(0, int(params["size"]) - 8))
    async with open_nats_provider(_core_config(params)) as provider:
        provider.router.add_handler("echo", requests, handle, publish_topic=replies)
        provider.router.add_handler("replies", replies, on_reply)
        await wait_all_tasks_blocked()  # both handlers have subscribed
        publish = provider.publisher.publish
        await provider.publisher.flush()
        started = time.perf_counter()
        for index in range(total):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await trio.sleep(delay)
            sent[index] = time.perf_counter()
            await publish(requests, Message(index.to_bytes(8, "big") + padding))
        await _wait(done, float(params["timeout"]), f"{len(samples)} of {count} replies")
        seconds = time.perf_counter() - sent[warmup]
    return {"messages": count, "seconds": seconds, **percentiles(samples)}
