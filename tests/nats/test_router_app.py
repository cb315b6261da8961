"""The foundation's router app runs unchanged on memory, core NATS and JetStream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio

from piko_trio_events import (
    JetStreamConfig,
    MemoryConfig,
    Message,
    NatsConfig,
    Provider,
    open_memory_provider,
)
from piko_trio_events.middleware import poison_queue, retry
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing._server import NatsServer

Opener = Callable[[], AbstractAsyncContextManager[Provider]]


async def order_app(provider: Provider, orders: int) -> tuple[list[str], list[str]]:
    """Audit orders (one flaky), collect the audit trail and the poisoned ones."""
    audited: list[str] = []
    poisoned: list[str] = []
    done = trio.Event()
    flaky_failures = 0
    router = provider.router
    router.add_middleware(retry(max_retries=2, initial_interval=0.01, randomization_factor=0))

    @router.handler(
        "orders.created",
        publish_topic="orders.audited",
        middleware=[
            poison_queue(
                provider.publisher,
                "orders.poisoned",
                should_poison=lambda e: isinstance(e, ValueError),
            )
        ],
    )
    async def audit(msg: Message) -> Message:
        nonlocal flaky_failures
        if msg.payload == b"order-3" and flaky_failures < 1:
            flaky_failures += 1
            raise RuntimeError("flaky")
        if msg.payload == b"order-5":
            raise ValueError("always bad")
        return Message(b"audited:" + msg.payload, {"order": msg.uuid})

    def check() -> None:
        if len(audited) >= orders - 1 and poisoned:
            done.set()

    @router.handler("orders.audited")
    async def collect(msg: Message) -> None:
        audited.append(msg.payload.decode())
        check()

    @router.handler("orders.poisoned")
    async def dead_letters(msg: Message) -> None:
        poisoned.append(msg.payload.decode())
        check()

    for i in range(orders):
        await provider.publisher.publish("orders.created", Message(b"order-%d" % i))
    await done.wait()
    return sorted(audited), poisoned


@pytest.fixture(params=["memory", "core", "jetstream"])
def opener(request: pytest.FixtureRequest, nats_server: NatsServer) -> Opener:
    if request.param == "memory":
        return lambda: open_memory_provider(MemoryConfig())
    disabled = request.param == "core"

    @asynccontextmanager
    async def nats() -> AsyncIterator[Provider]:
        config = NatsConfig(url=nats_server.url, jetstream=JetStreamConfig(disabled=disabled))
        async with open_nats_provider(config) as provider:
            yield provider

    return nats


async def test_the_same_app_runs_on_every_provider(opener: Opener) -> None:
    with trio.fail_after(20):
        async with opener() as provider:
            audited, poisoned = await order_app(provider, 8)
    assert audited == sorted(f"audited:order-{i}" for i in range(8) if i != 5)
    assert poisoned == ["order-5"]


async def test_two_replicas_of_a_router_share_a_handlers_messages(nats_server: NatsServer) -> None:
    """Two processes running the same app on JetStream: a handler's default
    group is its name, so the replicas share its messages, each handled once."""
    count = 60
    config = NatsConfig(url=nats_server.url)
    seen: list[bytes] = []
    both_started = trio.Event()
    done = trio.Event()

    async def replica(*, task_status: trio.TaskStatus[None]) -> None:
        async with open_nats_provider(config) as provider:

            @provider.router.handler("replicas.work")
            async def work(msg: Message) -> None:
                await both_started.wait()  # neither replica can finish before the other runs
                seen.append(msg.payload)
                if len(seen) >= count:
                    done.set()

            task_status.started()
            await done.wait()

    with trio.fail_after(30):
        async with open_nats_provider(config) as app:  # stored before any replica exists
            for i in range(count):
                await app.publisher.publish("replicas.work", Message(b"%d" % i))
        async with trio.open_nursery() as nursery:
            await nursery.start(replica)
            await nursery.start(replica)
            both_started.set()
    assert sorted(seen) == sorted(b"%d" % i for i in range(count))  # each once, none twice
