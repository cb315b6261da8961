"""The NATS provider (core NATS and JetStream), trio-native over nats-py.

Importing this package loads neither asyncio's event loop machinery for
nats-py, nor nats-py, nor trio-asyncio: they are imported when a provider
opens.
"""

from ._provider import NatsProvider as NatsProvider
from ._provider import open_nats_provider as open_nats_provider
from ._publisher import NatsPublisher as NatsPublisher
from ._subscriber import NatsSubscriber as NatsSubscriber
from ._subscription import NatsSubscription as NatsSubscription

__all__ = [
    "NatsProvider",
    "NatsPublisher",
    "NatsSubscriber",
    "NatsSubscription",
    "open_nats_provider",
]
