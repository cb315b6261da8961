"""Metadata values that end in Unicode whitespace, on both publish paths (issue 14).

Found by running the bad-input fuzz test on the public path
(``PIKO_NATS_PUBLIC_PATH=1``): nats-py's ``publish`` builds header values
with ``str.strip()``, which strips Unicode whitespace (``\\x1c``-``\\x1f``,
``\\x85``, ``\\xa0``, ``\\u2000``, ...), not only the ASCII spaces and tabs
every NATS client strips on receipt. Such a value could not arrive unchanged
on that path, so ``validate_metadata`` refuses it on every provider and both
paths (``InvalidMessageError``, at once), as it refuses ASCII edge whitespace:
refuse rather than alter. A value with whitespace inside arrives unchanged.
"""

from __future__ import annotations

import pytest
import trio

from piko_trio_events import InvalidMessageError, JetStreamConfig, Message, NatsConfig
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing import NatsServer

EDGES = ["\x1f", "a\x1c", "\x85b", "\u2000c\xa0", "d\u3000"]
INSIDE = ["a\x1fb", "c\xa0d", "e\u2000f"]


@pytest.mark.parametrize("core", [False, True], ids=["jetstream", "core"])
async def test_values_ending_in_unicode_whitespace_are_refused_and_inner_ones_kept(
    nats_server: NatsServer, core: bool
) -> None:
    config = NatsConfig(url=nats_server.url, jetstream=JetStreamConfig(disabled=core))
    kept = Message(b"kept", {f"k{i}": value for i, value in enumerate(INSIDE)})
    with trio.fail_after(10):
        async with (
            open_nats_provider(config) as provider,
            provider.subscriber.subscribe("ws.x", group="g") as channel,
        ):
            for value in EDGES:
                with pytest.raises(InvalidMessageError, match="whitespace"):
                    await provider.publisher.publish("ws.x", Message(b"x", {"k": value}))
            await provider.publisher.publish("ws.x", kept)
            got = await channel.receive()  # the first to arrive: nothing refused was sent
            await got.ack()
    assert (got.payload, got.metadata) == (kept.payload, kept.metadata)
