"""Worked example: fault-test a handler pipeline on a real 3-node cluster.

An invoicing service turns every ``orders.placed`` message into one
``invoices.issued`` message. It runs on JetStream with R3 streams and
``track_message_id=True``, so whatever the faults, every order the service
accepted must end up invoiced exactly once. The test proves it under
schedules of faults that hypothesis draws (and shrinks when one breaks it):
nodes killed and restarted, stopped gracefully, cut off from the others,
their clients' links cut, slowed or stalled.

Run it with ``pytest docs/examples/test_fault_tools.py`` (it needs the
``nats`` extra, and hypothesis).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from hypothesis import given, settings

from piko_trio_events import JetStreamConfig, Message, NatsConfig, Provider, PublishError
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing import (
    FaultSchedule,
    FaultStep,
    Link,
    NatsCluster,
    fault_schedules,
    free_port,
    open_link,
    open_nats_cluster,
    open_nats_server,
    run_fault_schedule,
)

pytestmark = [
    pytest.mark.nats,
    # nats-py 2.16 leaves a socket open when a connection attempt fails in its
    # handshake (a node that is down behind a link): with warnings as errors,
    # its ResourceWarning would fail the test. Not an error of the application.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function StreamWriter.__del__"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]

# -- the application ---------------------------------------------------------------------


def add_invoicing(provider: Provider) -> None:
    """The service: one invoice per order (its uuid derived from the order's)."""

    @provider.router.handler("orders.placed", publish_topic="invoices.issued", name="invoice")
    async def invoice(order: Message) -> Message:
        return Message(b"invoice for order " + order.payload)


async def place_orders(provider: Provider, orders: list[Message]) -> None:
    """What the service's clients do: publish, and publish again what failed
    (the same messages, so JetStream stores each once)."""
    for order in orders:
        while True:
            try:
                await provider.publisher.publish("orders.placed", order)
                break
            except PublishError:
                await trio.sleep(0.2)  # the cluster is electing leaders: try again


# -- the cluster, with a link between the service and each node ---------------------------


@asynccontextmanager
async def service_on_a_cluster() -> AsyncIterator[tuple[NatsCluster, list[Link], Provider]]:
    async with (
        open_nats_cluster(3, route_links=True) as cluster,
        AsyncExitStack() as stack,
    ):
        # The service reaches node i through links[i]: a "client_cut" or a "stall"
        # of node i acts on it.
        links = [await stack.enter_async_context(open_link(node.port)) for node in cluster]
        config = NatsConfig(
            url=",".join(link.url for link in links),
            reconnect_wait=0.1,
            ack_wait_timeout=2.0,
            close_timeout=5.0,
            jetstream=JetStreamConfig(track_message_id=True, replicas=3),
        )
        await cluster.wait_healthy()
        async with open_nats_provider(config) as provider:
            add_invoicing(provider)
            # The service is up once an order went through: its streams and
            # consumers exist before the first fault.
            await place_orders(provider, [Message(b"warm-up")])
            yield cluster, links, provider


async def invoices(url: str, expected: int) -> Counter[bytes]:
    """Every invoice the stream holds, counted (read until quiet)."""
    seen: Counter[bytes] = Counter()
    async with (
        open_nats_provider(NatsConfig(url=url)) as reader,
        reader.subscriber.subscribe("invoices.issued", start="all") as channel,
    ):
        while True:
            with trio.move_on_after(1.0 if sum(seen.values()) >= expected else 20.0):
                msg = await channel.receive()
                seen[msg.payload] += 1
                await msg.ack()
                continue
            return seen


# -- the property: every order invoiced exactly once, whatever the faults -------------------


async def check_invoicing(schedule: FaultSchedule) -> None:
    orders = [Message(b"%d" % i) for i in range(40)]
    with trio.fail_after(120):
        async with service_on_a_cluster() as (cluster, links, provider):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(place_orders, provider, orders)
                await run_fault_schedule(
                    schedule, cluster, client_links={i: [link] for i, link in enumerate(links)}
                )
            seen = await invoices(cluster[0].url, len(orders) + 1)
    wanted = Counter(b"invoice for order " + order.payload for order in orders)
    wanted[b"invoice for order warm-up"] = 1
    assert seen == wanted


@settings(max_examples=2, deadline=None)
@given(schedule=fault_schedules(max_steps=2, max_hold=1.0, max_rest=0.5))
def test_every_order_is_invoiced_exactly_once(schedule: FaultSchedule) -> None:
    trio.run(check_invoicing, schedule)


# -- a schedule found once, pinned as a plain regression test ----------------------------


def test_the_leader_node_killed_then_a_partition() -> None:
    schedule = FaultSchedule(
        (
            FaultStep("kill", node=0, hold=1.0),
            FaultStep("partition", node=1, hold=1.0),
        )
    )
    trio.run(check_invoicing, schedule)


# -- free_port(): a port of your own, here the server's monitoring port ------------------


async def test_a_monitoring_port_of_our_own() -> None:
    monitor = free_port()  # free now, not reserved: bind it at once
    with trio.fail_after(20):
        async with open_nats_server(args=["-m", str(monitor)]):
            stream = await trio.open_tcp_stream("127.0.0.1", monitor)
            async with stream:
                await stream.send_all(b"GET /healthz HTTP/1.0\r\n\r\n")
                reply = b""
                while chunk := await stream.receive_some():
                    reply += chunk
    status, _, body = reply.partition(b"\r\n")
    assert b" 200 " in status
    assert b'"status":"ok"' in body
