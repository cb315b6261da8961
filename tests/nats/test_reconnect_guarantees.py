"""What the reconnect watcher does at once after a server restart (not later, by a fallback)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from piko_trio_events import Message, NatsConfig, PublishError
from piko_trio_events.nats import _provider, open_nats_provider
from piko_trio_events.testing._server import NatsServer

from .helpers import eventually


async def test_pull_requests_are_renewed_as_soon_as_the_connection_is_back(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Push the puller's own idle fallback (3 heartbeats of silence) far beyond the
    # test: only the reconnect watcher can renew the pull requests the restart lost.
    monkeypatch.setattr(_provider, "_PULL_HEARTBEAT", 30.0)
    monkeypatch.setattr(_provider, "_PULL_EXPIRES", 120.0)
    config = NatsConfig(url=nats_server.url, reconnect_wait=0.1)
    with trio.fail_after(30):
        async with (
            open_nats_provider(config) as provider,
            provider.subscriber.subscribe("renew.x", group="g") as channel,
        ):
            await provider.publisher.publish("renew.x", Message(b"before"))
            assert (await channel.receive()).payload == b"before"
            # A crash (no "server shutdown" status reaches the pull requests), then
            # a start from the same store: stream and consumer survive, the pull
            # requests do not.
            await nats_server.kill()
            await nats_server.start()
            await eventually(lambda: provider.connected)
            while True:
                try:
                    await provider.publisher.publish("renew.x", Message(b"after"))
                    break
                except PublishError:  # JetStream may need a moment after the start
                    await trio.sleep(0.1)
            with trio.fail_after(10):
                msg = await channel.receive()
                # "before" was never acked: after kill -9 the server may deliver it
                # again first (at least once), ahead of "after".
                while msg.payload == b"before":
                    msg = await channel.receive()
            assert msg.payload == b"after"
            assert await msg.ack()


async def test_a_stream_the_restarted_server_lost_is_provisioned_again_before_publishing(
    nats_server: NatsServer,
) -> None:
    config = NatsConfig(url=nats_server.url, reconnect_wait=0.1)
    errors: list[str] = []
    with trio.fail_after(30):
        async with open_nats_provider(config) as provider:
            await provider.publisher.publish("lost2.x", Message(b"before"))
            await nats_server.stop()
            shutil.rmtree(Path(nats_server.store_dir) / "jetstream")
            await nats_server.start()
            await eventually(lambda: provider.connected)
            while True:
                try:
                    await provider.publisher.publish("lost2.x", Message(b"after"))
                    break
                except PublishError as exc:  # JetStream may need a moment after the start
                    errors.append(str(exc))
                    await trio.sleep(0.1)
    # The provider knew the stream might be gone: it never sent to a stream that
    # no longer existed (which the server answers "no responders").
    assert not [e for e in errors if "no stream holds" in e], errors
