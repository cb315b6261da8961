"""Connecting: clear errors within the connect timeout, secrets never shown."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from piko_trio_events import ConfigError, ConnectError, JetStreamConfig, NatsConfig
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing import free_port, open_nats_server


async def test_no_server_fails_within_connect_timeout_naming_the_url() -> None:
    port = free_port()
    config = NatsConfig(url=f"nats://alice:s3cr3t-pw@127.0.0.1:{port}", connect_timeout=1.0)
    start = trio.current_time()
    with trio.fail_after(10), pytest.raises(ConnectError) as info:
        async with open_nats_provider(config):
            pytest.fail("connected to nothing")  # pragma: no cover
    assert trio.current_time() - start < 3.0
    text = str(info.value)
    assert f"127.0.0.1:{port}" in text
    assert "s3cr3t-pw" not in text
    assert "alice:***@" in text


async def test_wrong_password_fails_fast_as_authorization_and_is_scrubbed() -> None:
    with trio.fail_after(20):
        async with open_nats_server(
            jetstream=False, args=["--user", "app", "--pass", "right-one"]
        ) as server:
            url = server.url.replace("nats://", "nats://app:wrong-secret@")
            config = NatsConfig(url=url, connect_timeout=5.0)
            start = trio.current_time()
            with pytest.raises(ConnectError) as info:
                async with open_nats_provider(config):
                    pytest.fail("connected with a wrong password")  # pragma: no cover
            assert trio.current_time() - start < 3.0
            text = str(info.value)
            assert "authorization" in text.lower()
            assert "wrong-secret" not in text
            assert repr(config).count("wrong-secret") == 0

            good = NatsConfig(
                url=server.url,
                nats_options={"user": "app", "password": "right-one"},
                jetstream=JetStreamConfig(disabled=True),
            )
            async with open_nats_provider(good) as provider:
                assert provider.connected
                assert "right-one" not in repr(provider)


async def test_wrong_token_is_scrubbed_from_the_error() -> None:
    with trio.fail_after(20):
        async with open_nats_server(jetstream=False, args=["--auth", "the-token"]) as server:
            config = NatsConfig(url=server.url, nats_options={"token": "bad-token-value"})
            with pytest.raises(ConnectError) as info:
                async with open_nats_provider(config):
                    pytest.fail("connected with a wrong token")  # pragma: no cover
            assert "bad-token-value" not in str(info.value)
            assert "authorization" in str(info.value).lower()


async def test_invalid_config_raises_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="connect_timeout"):
        NatsConfig(connect_timeout=-1)
    with pytest.raises(ConfigError, match="open_nats_provider takes a NatsConfig"):
        async with open_nats_provider("nats://x"):  # type: ignore[arg-type]
            pass  # pragma: no cover


async def test_connection_name_is_cluster_id() -> None:
    with trio.fail_after(20):
        async with open_nats_server(jetstream=False) as server:
            config = NatsConfig(
                url=server.url, cluster_id="my-app", jetstream=JetStreamConfig(disabled=True)
            )
            async with open_nats_provider(config) as provider:
                nc = provider._conn.nc
                assert nc is not None
                assert nc.options["name"] == "my-app"
                assert nc.options["max_reconnect_attempts"] == -1
                assert nc.options["reconnect_time_wait"] == 2.0


async def test_options_the_provider_sets_itself_are_rejected() -> None:
    for key in ("servers", "name", "max_reconnect_attempts", "error_cb"):
        config = NatsConfig(nats_options={key: None})
        with pytest.raises(ConfigError, match=key):
            async with open_nats_provider(config):
                pass  # pragma: no cover


async def test_a_server_that_never_answers_fails_within_the_connect_timeout() -> None:
    """A peer that accepts TCP but never speaks NATS: a ConnectError, never a hang."""
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, _silent, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            config = NatsConfig(url=f"nats://127.0.0.1:{port}", connect_timeout=1.0)
            start = trio.current_time()
            with pytest.raises(ConnectError, match=str(port)):
                async with open_nats_provider(config):
                    pytest.fail("connected to a silent peer")  # pragma: no cover
            assert trio.current_time() - start < 1.5
            nursery.cancel_scope.cancel()


async def _silent(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()
