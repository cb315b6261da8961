"""JetStream inspection for tools (``piko_trio_events.nats._admin``)."""

from __future__ import annotations

import pytest
import trio

from piko_trio_events import JetStreamConfig, Message, NatsConfig, PikoEventsError
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.nats._admin import list_streams
from piko_trio_events.testing import open_nats_server
from piko_trio_events.testing._server import NatsServer


async def test_list_streams_reports_streams_and_consumers(nats_server: NatsServer) -> None:
    async with open_nats_provider(NatsConfig(url=nats_server.url)) as provider:
        assert await list_streams(provider) == []
        await provider.publisher.publish("orders.created", Message(b"1"), Message(b"2"))
        await provider.publisher.publish("audit", Message(b"a"))
        with trio.fail_after(10):
            async with provider.subscriber.subscribe("orders.created", group="g") as messages:
                msg = await messages.receive()
                await msg.ack()
                streams = await list_streams(provider)
    assert [(s.name, s.subjects, s.messages) for s in streams] == [
        ("PIKO_audit", ("audit", "audit.>"), 1),
        ("PIKO_orders", ("orders", "orders.>"), 2),
    ]
    assert streams[0].consumers == ()
    (consumer,) = streams[1].consumers
    assert consumer.durable
    assert consumer.filter_subject == "orders.created"
    assert consumer.pending + consumer.ack_pending == 1


async def test_list_streams_errors_are_library_errors(nats_server: NatsServer) -> None:
    config = NatsConfig(url=nats_server.url, jetstream=JetStreamConfig(disabled=True))
    async with open_nats_provider(config) as provider:
        with pytest.raises(PikoEventsError, match="JetStream is disabled"):
            await list_streams(provider)
    async with (
        open_nats_server(jetstream=False) as plain,
        open_nats_provider(NatsConfig(url=plain.url)) as provider,
    ):
        with pytest.raises(PikoEventsError, match=r"nats-server -js") as info:
            await list_streams(provider)
        assert plain.url in str(info.value)
