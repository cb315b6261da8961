"""One drain budget with the default settings' proportions (issue 12, items 1 and 6).

The defaults give the router and the provider the same ``close_timeout``.
The router's share must fit inside the provider's budget: a handler stuck at
the deadline is cancelled while the connection is still up, so its message
is nacked at once (not after the ack wait), the subscriptions are closed,
the publisher is flushed, and the whole drain ends within the budget.
"""

from __future__ import annotations

import signal

import pytest
import trio

from piko_trio_events import JetStreamConfig, Message, NatsConfig, RouterConfig
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing._server import NatsServer

from .helpers import wait_until_stopped

BUDGET = 2.0  # the provider's and the router's close_timeout: equal, as by default
SLACK = 0.5  # scheduling noise on a shared machine, far below the ack wait


def same_budgets(url: str, **kw: object) -> NatsConfig:
    return NatsConfig(
        url=url,
        close_timeout=BUDGET,
        router=RouterConfig(close_timeout=BUDGET),
        ack_wait_timeout=30.0,
        **kw,  # type: ignore[arg-type]
    )


async def test_jetstream_stuck_handler_is_nacked_at_once_and_the_drain_fits_the_budget(
    nats_server: NatsServer,
) -> None:
    stuck_started = trio.Event()
    relay_started = trio.Event()
    leaving = trio.Event()
    with trio.fail_after(20):
        async with open_nats_provider(same_budgets(nats_server.url)) as provider:

            @provider.router.handler("stuck.x", name="stuck")
            async def stuck(msg: Message) -> None:
                stuck_started.set()
                await trio.sleep_forever()

            @provider.router.handler("relay.in", publish_topic="relay.out", name="relay")
            async def relay(msg: Message) -> Message:
                relay_started.set()
                await leaving.wait()  # returns as the drain begins: its publish is in flight
                return Message(b"out:" + msg.payload)

            await provider.publisher.publish("stuck.x", Message(b"stuck", uuid="stuck-1"))
            await provider.publisher.publish("relay.in", Message(b"r", uuid="relay-1"))
            await stuck_started.wait()
            await relay_started.wait()
            leaving.set()
            began = trio.current_time()
        drain = trio.current_time() - began

    assert drain <= BUDGET + SLACK, f"the drain took {drain:.2f}s of a {BUDGET}s budget"

    # The stuck message was nacked while the connection was up: it comes back
    # at once, far inside the 30 s ack wait.
    got: list[tuple[str, int]] = []
    outputs: list[bytes] = []
    with trio.fail_after(5 + SLACK):
        async with open_nats_provider(same_budgets(nats_server.url)) as provider:
            done = trio.Event()

            @provider.router.handler("stuck.x", name="stuck")
            async def again(msg: Message) -> None:
                assert msg.delivery is not None
                got.append((msg.uuid, msg.delivery.attempt))
                done.set()

            async with provider.subscriber.subscribe("relay.out", group="check") as out:
                outputs.append((await out.receive()).payload)
                await done.wait()
    assert got == [("stuck-1", 2)]
    # The relay's JetStream publish, in flight when the drain began, was
    # stored once and its input acked (not redelivered to the new provider).
    assert outputs == [b"out:r"]


async def test_core_stuck_handler_does_not_cost_a_buffered_publish(
    nats_server: NatsServer,
) -> None:
    n = 3000
    core = JetStreamConfig(disabled=True)
    received: list[bytes] = []
    all_in = trio.Event()
    stuck_started = trio.Event()
    with trio.fail_after(20):
        async with (
            open_nats_provider(same_budgets(nats_server.url, jetstream=core)) as reader,
            reader.subscriber.subscribe("core.out") as inbox,
        ):
            await reader.publisher.flush()  # the SUB reached the server (core: at-most-once)

            async def read() -> None:
                async for msg in inbox:
                    received.append(msg.payload)
                    await msg.ack()
                    if len(received) == n:
                        all_in.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                async with open_nats_provider(
                    same_budgets(nats_server.url, jetstream=core)
                ) as provider:

                    @provider.router.handler("core.stuck", name="stuck")
                    async def stuck(msg: Message) -> None:
                        stuck_started.set()
                        await trio.sleep_forever()

                    await provider.publisher.publish("core.stuck", Message(b"s"))
                    await stuck_started.wait()
                    # Left in the outgoing batch: core publish does not wait for the wire.
                    await provider.publisher.publish(
                        "core.out", *[Message(b"%d" % i) for i in range(n)]
                    )
                    began = trio.current_time()
                drain = trio.current_time() - began
                with trio.fail_after(5):
                    await all_in.wait()
                nursery.cancel_scope.cancel()
    assert drain <= BUDGET + SLACK, f"the drain took {drain:.2f}s of a {BUDGET}s budget"
    assert sorted(received, key=int) == [b"%d" % i for i in range(n)]


@pytest.mark.parametrize(("provider_budget", "router_budget"), [(1.0, 30.0), (2.0, 2.0)])
async def test_a_router_budget_at_or_above_the_providers_still_fits_inside_it(
    nats_server: NatsServer, provider_budget: float, router_budget: float
) -> None:
    """The router's share is cut to fit; the steps after it keep their time."""
    config = NatsConfig(
        url=nats_server.url,
        close_timeout=provider_budget,
        router=RouterConfig(close_timeout=router_budget),
    )
    cancelled = trio.Event()
    started = trio.Event()
    with trio.fail_after(20):
        async with open_nats_provider(config) as provider:

            @provider.router.handler("fit.x", name="fit")
            async def stuck(msg: Message) -> None:
                started.set()
                try:
                    await trio.sleep_forever()
                finally:
                    cancelled.set()

            await provider.publisher.publish("fit.x", Message(b"x"))
            await started.wait()
            began = trio.current_time()
        drain = trio.current_time() - began
    assert cancelled.is_set()
    assert drain <= provider_budget + SLACK


async def test_a_server_that_stops_answering_does_not_stretch_the_budget(
    nats_server: NatsServer,
) -> None:
    """Flushing and draining the connection wait on the server: frozen
    (SIGSTOP), it never answers, and the drain still ends inside the budget."""
    process = nats_server._process
    assert process is not None
    try:
        with trio.fail_after(20):
            async with open_nats_provider(same_budgets(nats_server.url)) as provider:
                await provider.publisher.publish("frozen.x", Message(b"x"))
                process.send_signal(signal.SIGSTOP)
                wait_until_stopped(process.pid)
                began = trio.current_time()
            drain = trio.current_time() - began
    finally:
        process.send_signal(signal.SIGCONT)
    assert drain <= BUDGET + SLACK, f"the drain took {drain:.2f}s of a {BUDGET}s budget"
