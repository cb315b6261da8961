"""A server that refuses a subscription's stream or consumer: a clear error.

Found reading a nemesis run: an R3 stream created while a node was down
failed the provider with nats-py's ``BadRequestError``, not a library error.
Here the refusal is permanent (replicas on a single server), so it is seen
on demand: subscribe asks again for ``_REFUSAL_PATIENCE`` seconds, then
raises ConnectError naming the server's reason.
"""

from __future__ import annotations

import pytest
import trio

from piko_trio_events import ConnectError, JetStreamConfig, NatsConfig
from piko_trio_events.nats import _limits, open_nats_provider
from piko_trio_events.testing import NatsServer


async def test_a_refused_stream_fails_subscribe_with_the_servers_reason(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_limits, "_REFUSAL_PATIENCE", 0.5)
    config = NatsConfig(url=nats_server.url, jetstream=JetStreamConfig(replicas=3))
    with trio.fail_after(10):
        async with open_nats_provider(config) as provider:
            started = trio.current_time()
            with pytest.raises(ConnectError, match="replicas > 1 not supported") as caught:
                async with provider.subscriber.subscribe("refused.x", group="g"):
                    pass  # pragma: no cover - never subscribed
            waited = trio.current_time() - started
            # Asked again for the patience, not given up at the first answer.
            assert waited >= 0.5
            assert "refused.x" in str(caught.value)
            # The refusal ended this subscribe only: the provider is still up.
            assert provider.connected
