"""The in-process provider (Watermill's GoChannel, made trio-native)."""

from ._provider import MemoryProvider as MemoryProvider
from ._provider import MemoryPublisher as MemoryPublisher
from ._provider import MemorySubscriber as MemorySubscriber
from ._provider import MemorySubscription as MemorySubscription
from ._provider import Undelivered as Undelivered
from ._provider import open_memory_provider as open_memory_provider

__all__ = [
    "MemoryProvider",
    "MemoryPublisher",
    "MemorySubscriber",
    "MemorySubscription",
    "Undelivered",
    "open_memory_provider",
]
