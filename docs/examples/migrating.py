"""Migrating: a Piko (Go) NATS provider config and a Watermill GoChannel config, in Python.

Each keyword below is commented with the Go field it replaces. Runs as is:
``python docs/examples/migrating.py``.
"""

from __future__ import annotations

from piko_trio_events import JetStreamConfig, MemoryConfig, NatsConfig, RouterConfig

# Piko's NATS provider (Go) -> NatsConfig. Go durations become float seconds.
nats_config = NatsConfig(
    url="nats://nats-1:4222,nats://nats-2:4222",  # URL (comma-separated seeds)
    cluster_id="billing-service",  # ClusterID: the connection name
    connect_timeout=5.0,  # ConnectTimeout (5 * time.Second)
    queue_group_prefix="piko",  # QueueGroupPrefix
    subscribers_count=4,  # SubscribersCount: handler concurrency
    ack_wait_timeout=30.0,  # AckWaitTimeout
    close_timeout=30.0,  # CloseTimeout: bounds the whole drain
    router=RouterConfig(close_timeout=25.0),  # the router's CloseTimeout
    reconnect_wait=2.0,  # nats.ReconnectWait(...)
    max_reconnect_attempts=-1,  # nats.MaxReconnects(-1): forever
    nats_options={"user": "billing"},  # other nats.Option values (tls, creds, nkeys, ...)
    jetstream=JetStreamConfig(  # JetStream: watermill-nats's JetStreamConfig
        disabled=False,  # Disabled
        auto_provision=False,  # AutoProvision: off in production
        durable_prefix="piko",  # DurablePrefix
        track_message_id=True,  # TrackMsgId
        ack_async=False,  # AckAsync
    ),
)

# Watermill's gochannel.Config -> MemoryConfig.
memory_config = MemoryConfig(
    output_buffer=8192,  # OutputChannelBuffer
    persistent=False,  # Persistent
    block_publish_until_ack=False,  # BlockPublishUntilSubscriberAck
)

if __name__ == "__main__":
    print(nats_config)  # secrets (passwords, tokens, seeds) are never shown
    print(memory_config)
