from __future__ import annotations

from typing import Any

import pytest

from piko_trio_events import (
    ConfigError,
    JetStreamConfig,
    MemoryConfig,
    NatsConfig,
    RouterConfig,
    open_memory_provider,
)


def test_nats_defaults_match_the_contract() -> None:
    c = NatsConfig()
    assert c.url == "nats://127.0.0.1:4222"
    assert c.cluster_id == "piko-events"
    assert (c.connect_timeout, c.ack_wait_timeout, c.close_timeout) == (5.0, 30.0, 30.0)
    assert (c.queue_group_prefix, c.subscribers_count) == ("piko", 1)
    assert (c.reconnect_wait, c.max_reconnect_attempts) == (2.0, -1)
    assert c.router == RouterConfig(close_timeout=30.0)
    assert c.jetstream == JetStreamConfig(
        disabled=False,
        auto_provision=True,
        durable_prefix="piko",
        track_message_id=False,
        ack_async=False,
        replicas=1,
        duplicate_window=120.0,
    )


def test_memory_defaults() -> None:
    c = MemoryConfig()
    assert (c.output_buffer, c.persistent, c.block_publish_until_ack) == (8192, False, False)
    assert c.router.close_timeout == 30.0


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: RouterConfig(close_timeout=-1), "close_timeout"),
        (lambda: MemoryConfig(output_buffer=0), "output_buffer"),
        (lambda: MemoryConfig(output_buffer=True), "output_buffer"),
        (lambda: MemoryConfig(history_size=-5), "history_size"),
        (lambda: MemoryConfig(persistent="yes"), "persistent"),  # type: ignore[arg-type]
        (lambda: NatsConfig(url=""), "url"),
        (lambda: NatsConfig(url="nats://a:4222,,nats://b:4222"), "url"),
        (lambda: NatsConfig(subscribers_count=0), "subscribers_count"),
        (lambda: NatsConfig(ack_wait_timeout=0), "ack_wait_timeout"),
        (lambda: NatsConfig(connect_timeout=-1), "connect_timeout"),
        (lambda: NatsConfig(close_timeout=float("nan")), "close_timeout"),
        (lambda: NatsConfig(max_reconnect_attempts=-2), "max_reconnect_attempts"),
        (lambda: NatsConfig(queue_group_prefix="a.b"), "queue_group_prefix"),
        (lambda: JetStreamConfig(replicas=0), "replicas"),
        (lambda: JetStreamConfig(durable_prefix=""), "durable_prefix"),
        (lambda: JetStreamConfig(duplicate_window=-1.0), "duplicate_window"),
    ],
)
def test_invalid_values_name_the_field(factory: Any, field: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        factory()
    assert isinstance(info.value, ValueError)


async def test_memory_provider_rejects_a_wrong_config_type() -> None:
    with pytest.raises(ConfigError, match="MemoryConfig"):
        async with open_memory_provider(NatsConfig()):  # type: ignore[arg-type]
            pass  # pragma: no cover


def test_secrets_never_appear_in_repr() -> None:
    c = NatsConfig(
        url="nats://alice:s3cr3t@127.0.0.1:4222,nats://tok3n@10.0.0.1:4222",
        nats_options={"password": "hunter2", "token": "t0k", "nkeys_seed": "SUAX", "name": "ok"},
    )
    text = repr(c) + str(c)
    for secret in ("s3cr3t", "tok3n", "hunter2", "t0k", "SUAX"):
        assert secret not in text
    assert "alice" in text
    assert "'name': 'ok'" in text
