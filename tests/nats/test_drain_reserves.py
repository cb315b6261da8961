"""The drain's reserves on NATS (piko_trio_events._lifecycle, nats/_provider.py):
what waits on the server gives up before the connection step, and a router
that uses its whole share still leaves the subscriptions the time to nack."""

from __future__ import annotations

import signal

import trio

from piko_trio_events import JetStreamConfig, Message, NatsConfig, RouterConfig
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing._server import NatsServer

from .helpers import wait_until_stopped

SLACK = 0.5  # scheduling noise on a shared machine


def _config(url: str, budget: float) -> NatsConfig:
    return NatsConfig(
        url=url,
        close_timeout=budget,
        router=RouterConfig(close_timeout=budget),
        ack_wait_timeout=30.0,
        jetstream=JetStreamConfig(ack_async=False),  # confirmed acks wait on the server
    )


async def test_a_confirmed_ack_in_flight_gives_up_before_the_connection_step(
    nats_server: NatsServer,
) -> None:
    """The server freezes as a handler's confirmed ack is sent: the ack would
    wait 5 s for it, but the drain's deadline for such work comes first."""
    budget = 2.0
    process = nats_server._process
    assert process is not None
    received = trio.Event()
    returning = trio.Event()
    go = trio.Event()
    try:
        with trio.fail_after(20):
            async with open_nats_provider(_config(nats_server.url, budget)) as provider:

                @provider.router.handler("frozen.ack", name="acker")
                async def handle(msg: Message) -> None:
                    received.set()
                    await go.wait()
                    returning.set()  # the router's confirmed ack follows at once

                await provider.publisher.publish("frozen.ack", Message(b"x"))
                await received.wait()
                process.send_signal(signal.SIGSTOP)
                wait_until_stopped(process.pid)
                go.set()
                await returning.wait()
                began = trio.current_time()
            drain = trio.current_time() - began
    finally:
        process.send_signal(signal.SIGCONT)
    assert drain <= budget + SLACK, f"the drain took {drain:.2f}s of a {budget}s budget"


async def test_a_handler_slow_to_unwind_still_leaves_the_subscriptions_time_to_nack(
    nats_server: NatsServer,
) -> None:
    """The stuck handler, cancelled, takes longer than its unwind time: the
    router's step runs to its deadline. The subscriptions' step still has its
    reserve, so the message is nacked while the connection is up and comes
    back at once (not after the 30 s ack wait)."""
    budget = 4.0
    started = trio.Event()
    with trio.fail_after(30):
        async with open_nats_provider(_config(nats_server.url, budget)) as provider:

            @provider.router.handler("unwind.x", name="slow")
            async def slow(msg: Message) -> None:
                started.set()
                try:
                    await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True):
                        await trio.sleep(0.5)  # longer than the unwind reserve (0.2 s)

            await provider.publisher.publish("unwind.x", Message(b"x", uuid="slow-1"))
            await started.wait()

    got: list[tuple[str, int]] = []
    with trio.fail_after(5 + SLACK):
        async with open_nats_provider(_config(nats_server.url, budget)) as provider:
            done = trio.Event()

            @provider.router.handler("unwind.x", name="slow")
            async def again(msg: Message) -> None:
                assert msg.delivery is not None
                got.append((msg.uuid, msg.delivery.attempt))
                done.set()

            await done.wait()
    assert got == [("slow-1", 2)]
