"""piko_trio_events: trio-native pub/sub event providers with real delivery guarantees.

One provider port, two providers: in-memory (:func:`open_memory_provider`)
and NATS (:func:`open_nats_provider`). Swapping one for the other is a
one-line change.
"""

import logging as _logging

from ._abc import Provider as Provider
from ._abc import Publisher as Publisher
from ._abc import StartPosition as StartPosition
from ._abc import Subscriber as Subscriber
from ._config import JetStreamConfig as JetStreamConfig
from ._config import MemoryConfig as MemoryConfig
from ._config import NatsConfig as NatsConfig
from ._config import RouterConfig as RouterConfig
from ._errors import AckError as AckError
from ._errors import AuthError as AuthError
from ._errors import ConfigError as ConfigError
from ._errors import ConnectError as ConnectError
from ._errors import DecodeError as DecodeError
from ._errors import InvalidMessageError as InvalidMessageError
from ._errors import InvalidTopicError as InvalidTopicError
from ._errors import NoResponderError as NoResponderError
from ._errors import PikoEventsError as PikoEventsError
from ._errors import ProviderClosedError as ProviderClosedError
from ._errors import PublishError as PublishError
from ._errors import RequestError as RequestError
from ._errors import StreamNotFoundError as StreamNotFoundError
from ._message import Delivery as Delivery
from ._message import Message as Message
from ._router import Handler as Handler
from ._router import HandlerOutputError as HandlerOutputError
from ._router import Router as Router
from ._signals import cancel_on_signals as cancel_on_signals
from ._types import HandlerFunc as HandlerFunc
from ._types import Middleware as Middleware
from ._types import current_handler_name as current_handler_name
from .memory import open_memory_provider as open_memory_provider
from .nats import open_nats_provider as open_nats_provider

__all__ = [
    "AckError",
    "AuthError",
    "ConfigError",
    "ConnectError",
    "DecodeError",
    "Delivery",
    "Handler",
    "HandlerFunc",
    "HandlerOutputError",
    "InvalidMessageError",
    "InvalidTopicError",
    "JetStreamConfig",
    "MemoryConfig",
    "Message",
    "Middleware",
    "NatsConfig",
    "NoResponderError",
    "PikoEventsError",
    "Provider",
    "ProviderClosedError",
    "PublishError",
    "Publisher",
    "RequestError",
    "Router",
    "RouterConfig",
    "StartPosition",
    "StreamNotFoundError",
    "Subscriber",
    "cancel_on_signals",
    "current_handler_name",
    "open_memory_provider",
    "open_nats_provider",
]

__version__ = "0.1.0"

# A library adds no handler of its own (the application configures logging).
_logging.getLogger("piko_trio_events").addHandler(_logging.NullHandler())
