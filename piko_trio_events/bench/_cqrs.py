"""The cqrs scenarios: the typed path against the bytes path, and request/reply.

``cqrs-memory`` and ``cqrs-core``: publish -> handler -> ack of a five-field
dataclass as JSON, three ways, on the memory provider and on core NATS:

- ``bytes-raw``: a pre-encoded payload, a router handler that decodes nothing
  (what the provider itself costs);
- ``bytes-json``: what a user writes on the bytes API today: ``json.dumps``
  of the dataclass's fields on publish, ``Order(**json.loads(payload))`` in
  a router handler (no checks);
- ``typed``: ``EventBus.publish(order)`` and ``@events.handler`` taking
  ``order: Order`` (the JSON marshaler: the type's name in metadata, every
  field checked on decode).

``cqrs-request``: request -> handler -> reply round trips on core NATS, one
after another at 1,000 a second (as the ``latency`` scenario), each timed
(p50 / p99): raw nats-py ``nc.request`` against a subscription that answers
with ``msg.respond`` (bytes both ways), FastStream's ``broker.request``
against a subscriber returning its ``dict`` body, and ``CommandBus.request``
against a typed command handler returning a typed reply. Each side runs
requester and handler on one connection.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from uuid import uuid4

import trio
from trio.testing import wait_all_tasks_blocked

from .. import (
    JetStreamConfig,
    MemoryConfig,
    Message,
    NatsConfig,
    Provider,
    open_memory_provider,
    open_nats_provider,
)
from ._runner import Column, Contender, Scenario, Target
from ._server import nats_server
from ._stats import percentiles

__all__ = ["request_scenario", "throughput_scenario"]

#: The raw nats-py and FastStream contenders of ``cqrs-request``.
_PEER = "piko_trio_events.bench._peer_cqrs"


@dataclasses.dataclass(frozen=True)
class Order:
    """The benchmark's message: five fields."""

    id: int
    customer: str
    sku: str
    quantity: int
    price: float


@dataclasses.dataclass(frozen=True)
class Reply:
    id: int
    accepted: bool


ORDER = Order(1, "customer-0001", "sku-000042", 3, 19.99)


def throughput_scenario(kind: str, messages: int, timeout: float) -> Scenario:
    """``cqrs-memory`` (kind ``memory``) or ``cqrs-core`` (kind ``core``)."""
    where = "the memory provider" if kind == "memory" else "core NATS"
    contenders = tuple(
        Contender(name, f"{__name__}:run_{name.replace('-', '_')}", requires=requires)
        for name in ("bytes-raw", "bytes-json", "typed")
        for requires in [() if kind == "memory" else ("nats", "trio_asyncio")]
    )
    return Scenario(
        name=f"cqrs-{kind}",
        title=(
            f"publish -> handler -> ack on {where}, a five-field dataclass as JSON,"
            f" {messages:,} a run: typed (EventBus) vs bytes (json by hand) vs bytes (no JSON)"
        ),
        contenders=contenders,
        baselines=("bytes-json", "bytes-raw"),
        targets=(Target("typed", "bytes-json", 0.85),),
        params={"messages": messages, "kind": kind, "timeout": timeout},
        setup=None if kind == "memory" else nats_server,
    )


def request_scenario(messages: int, timeout: float) -> Scenario:
    from ._nats import FASTSTREAM, LATENCY_COLUMNS, RAW

    body = dataclasses.asdict(ORDER)
    return Scenario(
        name="cqrs-request",
        title=(
            f"request -> handler -> reply round trip on core NATS, 1,000 requests/s, one at a time,"
            f" {messages:,} timed (raw: nc.request + msg.respond; faststream: broker.request;"
            " piko: CommandBus.request, typed both ways)"
        ),
        contenders=(
            Contender(RAW, f"{_PEER}:run_raw_request", requires=("nats",)),
            Contender(
                FASTSTREAM,
                f"{_PEER}:run_faststream_request",
                requires=("faststream", "nats"),
            ),
            Contender("piko", f"{__name__}:run_request", requires=("nats", "trio_asyncio")),
        ),
        baselines=(RAW, FASTSTREAM),
        targets=(
            Target("piko", RAW, 1.5, metric="p99_us"),
            Target("piko", FASTSTREAM, 1.0, metric="p99_us"),
        ),
        params={
            "messages": messages,
            "warmup": min(500, messages),
            "rate": 1_000.0,
            "timeout": timeout,
            "payload": json.dumps(body),
            "body": body,
        },
        setup=nats_server,
        columns=(*LATENCY_COLUMNS, Column("max_us", "max us")),
    )


# -- throughput contenders -------------------------------------------------------------------


@asynccontextmanager
async def _provider(params: Mapping[str, Any]) -> AsyncIterator[Provider]:
    if params["kind"] == "memory":
        async with open_memory_provider(MemoryConfig(output_buffer=8192)) as memory:
            yield memory
    else:
        config = NatsConfig(url=str(params["url"]), jetstream=JetStreamConfig(disabled=True))
        async with open_nats_provider(config) as nats:
            yield nats


def _timed(fn: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    count = int(params["messages"])
    trio.run(fn, params, max(1000, count // 10))  # warm up
    gc.collect()
    seconds: float = trio.run(fn, params, count)
    return {"messages": count, "seconds": seconds}


async def _pump(
    provider: Provider, count: int, publish_one: Any, done: trio.Event, limit: float
) -> float:
    await wait_all_tasks_blocked()
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:

        async def produce() -> None:
            for _ in range(count):
                await publish_one()

        nursery.start_soon(produce)
        with trio.move_on_after(limit) as scope:
            await done.wait()
        if scope.cancelled_caught:
            raise RuntimeError(f"timed out after {limit:g} s")
    return time.perf_counter() - started


def run_bytes_raw(params: Mapping[str, Any]) -> dict[str, Any]:
    return _timed(_bytes_raw, params)


async def _bytes_raw(params: Mapping[str, Any], count: int) -> float:
    payload = json.dumps(dataclasses.asdict(ORDER)).encode()
    topic = f"bench.cqrs.{uuid4().hex}"
    done = trio.Event()
    seen = 0

    async def handle(msg: Message) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            done.set()

    async with _provider(params) as provider:
        provider.router.add_handler("raw", topic, handle)
        publish = provider.publisher.publish

        async def one() -> None:
            await publish(topic, Message(payload))

        return await _pump(provider, count, one, done, float(params["timeout"]))


def run_bytes_json(params: Mapping[str, Any]) -> dict[str, Any]:
    return _timed(_bytes_json, params)


async def _bytes_json(params: Mapping[str, Any], count: int) -> float:
    topic = f"bench.cqrs.{uuid4().hex}"
    done = trio.Event()
    seen = 0
    dumps, loads = json.dumps, json.loads

    async def handle(msg: Message) -> None:
        nonlocal seen
        order = Order(**loads(msg.payload))
        seen += 1
        if seen == count and order.id == 1:
            done.set()

    async with _provider(params) as provider:
        provider.router.add_handler("json", topic, handle)
        publish = provider.publisher.publish
        fields = [f.name for f in dataclasses.fields(Order)]

        async def one() -> None:
            body = {name: getattr(ORDER, name) for name in fields}
            await publish(topic, Message(dumps(body).encode()))

        return await _pump(provider, count, one, done, float(params["timeout"]))


def run_typed(params: Mapping[str, Any]) -> dict[str, Any]:
    return _timed(_typed, params)


async def _typed(params: Mapping[str, Any], count: int) -> float:
    from ..cqrs import EventBus, default_topic

    done = trio.Event()
    seen = 0

    async with _provider(params) as provider:
        events = EventBus(provider, topic_of=default_topic(f"bench{uuid4().hex}"))

        @events.handler
        async def handle(order: Order) -> None:
            nonlocal seen
            seen += 1
            if seen == count and order.id == 1:
                done.set()

        publish = events.publish

        async def one() -> None:
            await publish(ORDER)

        return await _pump(provider, count, one, done, float(params["timeout"]))


# -- request/reply ---------------------------------------------------------------------------


def run_request(params: Mapping[str, Any]) -> dict[str, Any]:
    return trio.run(_request, params)


async def _request(params: Mapping[str, Any]) -> dict[str, Any]:
    from ..cqrs import CommandBus, default_topic

    count, warmup = int(params["messages"]), int(params["warmup"])
    config = NatsConfig(url=str(params["url"]), jetstream=JetStreamConfig(disabled=True))
    samples: list[float] = []
    async with open_nats_provider(config) as provider:
        commands = CommandBus(provider, topic_of=default_topic(f"bench{uuid4().hex}"))

        @commands.handler
        async def accept(order: Order) -> Reply:
            return Reply(order.id, order.quantity > 0)

        await wait_all_tasks_blocked()
        request = commands.request
        started = time.perf_counter()
        rate = float(params["rate"])
        paced = time.perf_counter()
        for index in range(warmup + count):
            if index == warmup:
                started = time.perf_counter()
            delay = paced + index / rate - time.perf_counter()
            if delay > 0:  # a fixed rate, as the latency scenario: no request waits on another
                await trio.sleep(delay)
            sent = time.perf_counter()
            reply = await request(ORDER, timeout=5, reply_type=Reply)
            if index >= warmup:
                samples.append((time.perf_counter() - sent) * 1e6)
            if reply != Reply(1, True):
                raise RuntimeError(f"piko: a wrong reply {reply!r}")
        seconds = time.perf_counter() - started
    return {"messages": count, "seconds": seconds, **percentiles(samples)}
