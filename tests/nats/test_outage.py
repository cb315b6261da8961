"""A server outage while a handler subscribes: the provider waits it out."""

from __future__ import annotations

import trio

from piko_trio_events import Message, NatsConfig
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing import NatsServer

from .helpers import eventually


async def test_a_handler_added_during_an_outage_subscribes_once_the_server_is_back(
    nats_server: NatsServer,
) -> None:
    handled: list[bytes] = []
    with trio.fail_after(60):
        config = NatsConfig(url=nats_server.url, reconnect_wait=0.1)
        async with open_nats_provider(config) as provider:
            await provider.publisher.publish("outage.before", Message(b"stored first"))
            await nats_server.stop()
            await eventually(lambda: not provider.connected)

            async def handle(msg: Message) -> None:
                handled.append(msg.payload)

            # Creating its consumer times out (the JetStream API waits 5 s) while
            # the server is down; the subscription retries instead of failing.
            provider.router.add_handler("outage", "outage.>", handle)
            await trio.sleep(6)  # the outage outlasts one API timeout (real time)
            assert provider.running
            await nats_server.start()
            await eventually(lambda: provider.connected)
            await provider.publisher.publish("outage.after", Message(b"after the outage"))
            await eventually(lambda: len(handled) == 2)
    assert sorted(handled) == [b"after the outage", b"stored first"]
