"""The order pipeline that ``piko-events demo`` runs (``make demo``).

Orders are published to ``orders.created``; router handlers validate them
(an order with a non-positive amount is poisoned to ``orders.poison``),
charge them (every fourth order's first charge fails once and is retried)
and notify. It runs on the memory provider, or on NATS: a server at a URL,
or an embedded nats-server (:data:`EMBEDDED`). The command line is in
:mod:`piko_trio_events.__main__`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from . import (
    MemoryConfig,
    Message,
    NatsConfig,
    Provider,
    RouterConfig,
    cancel_on_signals,
    open_memory_provider,
    open_nats_provider,
)
from .middleware import (
    REASON_POISONED_KEY,
    correlation_id,
    poison_queue,
    retry,
    set_correlation_id,
)

__all__ = ["EMBEDDED", "GatewayHiccup", "InvalidOrder", "run_demo"]

#: ``nats=EMBEDDED``: run on an embedded nats-server (``testing.open_nats_server``).
EMBEDDED = ""


class InvalidOrder(ValueError):
    """An order that no retry can fix: it goes to the poison queue."""


class GatewayHiccup(RuntimeError):
    """A transient payment failure: retried."""


@asynccontextmanager
async def _open_provider(nats: str | None) -> AsyncIterator[Provider]:
    router = RouterConfig(close_timeout=5.0)
    if nats is None:
        async with open_memory_provider(MemoryConfig(router=router)) as provider:
            yield provider
        return
    if nats != EMBEDDED:
        async with open_nats_provider(NatsConfig(url=nats, router=router)) as nats_provider:
            yield nats_provider
        return
    from .testing import open_nats_server

    async with open_nats_server(jetstream=True) as server:
        print(f"embedded nats-server at {server.url}")
        async with open_nats_provider(NatsConfig(url=server.url, router=router)) as nats_provider:
            yield nats_provider


async def run_demo(orders: int, *, nats: str | None, forever: bool) -> int:
    """The order pipeline; returns the process exit code."""
    charged: set[int] = set()
    poisoned: set[int] = set()
    all_done = trio.Event()
    hiccups: set[int] = set()

    def account() -> None:
        if not forever and len(charged) + len(poisoned) >= orders:
            all_done.set()

    async with cancel_on_signals() as stopped, _open_provider(nats) as provider:
        router = provider.router
        router.add_middleware(
            correlation_id(),
            poison_queue(
                provider.publisher,
                "orders.poison",
                should_poison=lambda exc: isinstance(exc, InvalidOrder),
            ),
            retry(
                max_retries=3,
                initial_interval=0.05,
                max_interval=0.5,
                should_retry=lambda exc: not isinstance(exc, InvalidOrder),
            ),
        )

        @router.handler("orders.created", publish_topic="orders.validated", name="validate")
        async def validate(msg: Message) -> Message:
            order = json.loads(msg.payload)
            if order["amount"] <= 0:
                raise InvalidOrder(f"order {order['id']}: amount must be positive")
            print(f"  validate  order {order['id']:>3}  amount {order['amount']:>4}")
            return Message(msg.payload)

        @router.handler("orders.validated", publish_topic="payments.charged", name="charge")
        async def charge(msg: Message) -> Message:
            order = json.loads(msg.payload)
            if order["id"] % 4 == 0 and order["id"] not in hiccups:
                hiccups.add(order["id"])
                print(f"  charge    order {order['id']:>3}  gateway hiccup, retrying")
                raise GatewayHiccup("payment gateway timed out")
            return Message(json.dumps({**order, "charged": True}).encode())

        @router.handler("payments.charged", name="notify")
        async def notify(msg: Message) -> None:
            order = json.loads(msg.payload)
            print(f"  notify    order {order['id']:>3}  charged")
            charged.add(order["id"])
            account()

        @router.handler("orders.poison", name="poison-report")
        async def poison_report(msg: Message) -> None:
            order = json.loads(msg.payload)
            print(f"  poison    order {order['id']:>3}  {msg.metadata[REASON_POISONED_KEY]}")
            poisoned.add(order["id"])
            account()

        print(f"publishing {'orders until SIGTERM / Ctrl-C' if forever else orders} orders")
        order_id = 0
        while forever or order_id < orders:
            order_id += 1
            amount = -5 if order_id % 7 == 0 else 10 * order_id
            msg = Message(json.dumps({"id": order_id, "amount": amount}).encode())
            set_correlation_id(msg, f"order-{order_id}")
            await provider.publisher.publish("orders.created", msg)
            if forever:
                await trio.sleep(0.5)
        with trio.fail_after(60):
            await all_done.wait()
    if stopped.cancelled_caught:
        print("stopped by signal; drained the pipeline")
    print(f"done: {len(charged)} charged, {len(poisoned)} poisoned")
    return 0
