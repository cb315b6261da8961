"""Migrating: Piko's (Go) NATS and GoChannel provider configs, in Python.

Each keyword below is commented with the Go field it replaces. Runs as is:
``python docs/examples/migrating.py``.
"""

from __future__ import annotations

from piko_trio_events import JetStreamConfig, MemoryConfig, NatsConfig, RouterConfig

# Piko's NATS provider (Go) -> NatsConfig. Go durations become float seconds.
nats_config = NatsConfig(
    url="nats://nats-1:4222,nats://nats-2:4222",  # URL (comma-separated seeds)
    cluster_id="billing-service",  # ClusterID: the connection name
    connect_timeout=5.0,  # nats.Timeout(5 * time.Second) in NATSOptions
    queue_group_prefix="piko",  # QueueGroupPrefix
    subscribers_count=4,  # SubscribersCount: handler concurrency
    ack_wait_timeout=30.0,  # AckWaitTimeout
    close_timeout=30.0,  # CloseTimeout: bounds the drain
    router=RouterConfig(close_timeout=25.0),  # RouterConfig.CloseTimeout
    reconnect_wait=2.0,  # nats.ReconnectWait(2 * time.Second), set by Piko
    max_reconnect_attempts=-1,  # nats.MaxReconnects(-1), set by Piko: forever
    nats_options={"user": "billing"},  # NATSOptions (user, tls, creds, nkeys, ...)
    jetstream=JetStreamConfig(  # JetStream
        disabled=False,  # Disabled
        auto_provision=False,  # AutoProvision: off in production
        durable_prefix="piko",  # DurablePrefix
        track_message_id=True,  # TrackMessageID
        ack_async=False,  # AckAsync
    ),
)

# Piko's GoChannel provider Config (Watermill's gochannel.Config) -> MemoryConfig.
memory_config = MemoryConfig(
    output_buffer=8192,  # OutputChannelBuffer
    persistent=False,  # Persistent
    block_publish_until_ack=False,  # BlockPublishUntilSubscriberAck
)

if __name__ == "__main__":
    print(nats_config)  # secrets (passwords, tokens, seeds) are never shown
    print(memory_config)
