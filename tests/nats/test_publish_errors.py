"""JetStream publish errors count exactly the messages the server did not store."""

from __future__ import annotations

import pytest
import trio

from piko_trio_events import Message, NatsConfig, PublishError
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing._server import NatsServer

from .helpers import add_full_stream, stored_messages


async def test_a_partly_refused_batch_reports_only_the_refused_messages(
    nats_server: NatsServer,
) -> None:
    with trio.fail_after(15):
        async with open_nats_provider(NatsConfig(url=nats_server.url)) as provider:
            # A stream that stores one message and refuses the rest.
            await add_full_stream(provider, "FULL", ["full.x"])
            with pytest.raises(PublishError) as info:
                await provider.publisher.publish(
                    "full.x", Message(b"1"), Message(b"2"), Message(b"3")
                )
            assert info.value.unconfirmed == 2
            assert "2 of 3" in str(info.value)
            assert await stored_messages(provider, "FULL") == 1
            # The provider carries on: a batch the stream refuses entirely says so.
            with pytest.raises(PublishError) as info:
                await provider.publisher.publish("full.x", Message(b"4"))
            assert info.value.unconfirmed == 1


async def test_an_oversized_jetstream_payload_is_refused_at_once_and_the_provider_carries_on(
    nats_server: NatsServer,
) -> None:
    with trio.fail_after(15):
        async with open_nats_provider(NatsConfig(url=nats_server.url)) as provider:
            await provider.publisher.publish("big.x", Message(b"small"))  # provisions
            too_big = b"x" * (provider._publisher._max_payload + 1)
            start = trio.current_time()
            with pytest.raises(ValueError, match="exceeds"):
                await provider.publisher.publish("big.x", Message(b"ok"), Message(too_big))
            assert trio.current_time() - start < 1.0
            await provider.publisher.publish("big.x", Message(b"next"))
            assert provider.connected
            assert await stored_messages(provider, "PIKO_big") == 2  # nothing of the refused call
