"""The error hierarchy: one base class, each subclass with one meaning.

Bad input raises a subclass that is also a :class:`ValueError`, at once, naming
what was wrong. Trouble outside the caller's control (a server, a network)
raises a plain :class:`PikoEventsError` subclass.
"""

from __future__ import annotations

__all__ = [
    "AckError",
    "AuthError",
    "ConfigError",
    "ConnectError",
    "DecodeError",
    "InvalidMessageError",
    "InvalidTopicError",
    "NoResponderError",
    "PikoEventsError",
    "ProviderClosedError",
    "PublishError",
    "RequestError",
    "StreamNotFoundError",
]


class PikoEventsError(Exception):
    """Base class of every error raised by piko_trio_events."""


class ConfigError(PikoEventsError, ValueError):
    """A configuration value is invalid; the message names the field.

    A provider or router config, a handler's options (name, group,
    concurrency, start), a subscription's group or start, a middleware's
    arguments, or a testing helper's.
    """


class InvalidTopicError(PikoEventsError, ValueError):
    """A topic does not follow the NATS subject rules; the message names it."""


class InvalidMessageError(PikoEventsError, ValueError):
    """A message, or what was asked of it, cannot be carried as given.

    A uuid or metadata that NATS headers cannot carry unchanged (an empty
    uuid, a ``Nats-`` key, a line break in a value, ...), a message larger
    than the server's ``max_payload``, or a nack delay that is not a finite
    number of seconds >= 0. Raised at once, before anything of the call is
    sent; the message names the field.
    """


class ProviderClosedError(PikoEventsError):
    """The provider (or its publisher / subscriber) was closed: you closed it."""


class ConnectError(PikoEventsError):
    """The first connection to the server could not be made."""


class AuthError(ConnectError):
    """The server refused this client, or a TLS certificate check failed.

    A wrong user, password, token or nkey, a server certificate this client
    does not trust, or a missing or untrusted client certificate (mutual
    TLS). Retrying with the same settings cannot succeed, so the first
    connect raises it at once rather than after the connect timeout. A
    running provider whose reconnects are refused several times in a row
    (the password was changed under it) gives up with it too. The message
    never contains the secret itself.
    """


class StreamNotFoundError(PikoEventsError):
    """No JetStream stream holds the topic and auto-provisioning is off."""


class PublishError(PikoEventsError):
    """A publish could not complete.

    Attributes:
        unconfirmed: how many messages of the call are not known to be stored.
        retry_after: seconds after which publishing the same messages again
            may succeed, when the failure is transient: the server did not
            answer in time, answered "no responders" (a stream's leader is
            moving, say), refused them for now (a ``5xx`` error: a full
            stream, JetStream temporarily unavailable), or the connection is
            down; ``None`` when the publisher has no reason to expect a retry
            to do better (JetStream not enabled, a message the stream refuses
            for good, the provider closed). The NATS publisher sets 0.1 s. A
            router handler whose output publish fails with it nacks its
            message with a delay that starts there and doubles with each
            delivery attempt, up to 5 s (see the router docs).
    """

    def __init__(self, message: str, *, unconfirmed: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.unconfirmed = unconfirmed
        self.retry_after = retry_after


class AckError(PikoEventsError):
    """An ack that the provider confirms could not be confirmed.

    The message may be redelivered. (``ack()`` returning ``False`` means
    something else: the message was already nacked.)
    """


class DecodeError(PikoEventsError, ValueError):
    """A message does not decode to the type expected (:mod:`piko_trio_events.cqrs`).

    Its payload is not a valid value of the type, its ``name`` metadata is
    missing or names no type the receiver knows, or a reply is of another
    type than the one asked for. The message says which, and names the
    message's uuid and topic where it has them.
    """


class RequestError(PikoEventsError):
    """The handler of a request raised: its error, as the requester sees it.

    Only the remote error's type name and message travel, never its
    traceback or locals.

    Attributes:
        remote_type: the name of the handler's exception class.
        remote_message: ``str()`` of it.
    """

    def __init__(self, remote_type: str, remote_message: str) -> None:
        super().__init__(f"{remote_type}: {remote_message}" if remote_message else remote_type)
        self.remote_type = remote_type
        self.remote_message = remote_message


class NoResponderError(PikoEventsError):
    """No one serves the request's topic: the server said so (core NATS).

    Where the provider cannot tell (JetStream stores the request for a
    handler that may come later, the memory provider), a request nobody
    serves ends with ``trio.TooSlowError`` at its timeout instead.
    """
