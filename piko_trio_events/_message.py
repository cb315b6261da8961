"""Messages, delivery information and acknowledgement."""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

from ._errors import InvalidMessageError
from ._util import utf8_encodable
from ._uuid import new_uuid

__all__ = ["UUID_HEADER", "Delivery", "Message", "checked_payload", "validate_metadata"]

#: The NATS header that carries a message's uuid (Watermill's NATS adapter's name).
UUID_HEADER: Final = "_watermill_message_uuid"

_PENDING: Final = 0
_ACKED: Final = 1
_NACKED: Final = 2


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a received message reached this subscriber.

    Attributes:
        topic: the topic the message was published to (not the pattern).
        attempt: 1 on the first delivery, counting up with each redelivery
            within one group.
        redelivered: whether ``attempt > 1``.
        sequence: the stream sequence under JetStream, else ``None``.
        timestamp: when the message was stored, where the provider knows it.
    """

    topic: str
    attempt: int = 1
    redelivered: bool = False
    sequence: int | None = None
    timestamp: datetime | None = None


class Acker(Protocol):
    """What a provider gives a received message so that it can settle it.

    An acker may name its provider in a ``system`` attribute (``"memory"``,
    ``"nats"``, ...): telemetry's ``messaging.system`` (``"piko"`` without).
    """

    def ack_message(self, message: Message) -> Awaitable[None] | None:
        """Settle ``message`` as acked: at once, returning None (an in-process
        provider: no coroutine to create and drive per message), or return an
        awaitable that completes once it is settled (an ``async def`` does)."""

    async def nack_message(self, message: Message, delay: float | None) -> None: ...


class Message:
    """A message: a uuid, an opaque payload and string metadata.

    A message you build has ``delivery is None``; a received one carries its
    :class:`Delivery` and must be settled with :meth:`ack` or :meth:`nack`.
    Two messages are equal when their uuid, payload and metadata are equal.
    """

    __slots__ = (
        "_acker",
        "_source",
        "_state",
        "_uuid",
        "_uuid_given",
        "delivery",
        "metadata",
        "payload",
    )

    payload: bytes
    metadata: dict[str, str]
    delivery: Delivery | None

    def __init__(
        self,
        payload: bytes | bytearray | memoryview = b"",
        metadata: Mapping[str, str] | None = None,
        *,
        uuid: str | None = None,
    ) -> None:
        if type(payload) is not bytes:
            payload = checked_payload(payload)
        if uuid is not None:
            _check_uuid(uuid)
        self.payload = payload
        self.metadata = {} if metadata is None else _checked_metadata(metadata)
        self._uuid = uuid
        self._uuid_given = uuid is not None
        self._source: Message | None = None
        self.delivery = None
        self._state = _PENDING
        self._acker: Acker | None = None

    @classmethod
    def _received(
        cls,
        uuid: str | Message,
        payload: bytes,
        metadata: dict[str, str],
        delivery: Delivery,
        acker: Acker,
    ) -> Message:
        """Build a delivered message without re-validating (provider use).

        ``uuid`` may be the published message itself (in-process providers):
        its uuid is then made only if someone reads one of them, and shared.
        """
        self = cls.__new__(cls)
        if isinstance(uuid, str):
            self._uuid = uuid
            self._source = None
        else:
            self._uuid = None
            self._source = uuid
        self._uuid_given = True
        self.payload = payload
        self.metadata = metadata
        self.delivery = delivery
        self._state = _PENDING
        self._acker = acker
        return self

    @property
    def uuid(self) -> str:
        """The message's id: a random uuid4 string unless one was given."""
        u = self._uuid
        if u is None:
            source = self._source
            u = self._uuid = new_uuid() if source is None else source.uuid
        return u

    @property
    def acked(self) -> bool:
        return self._state == _ACKED

    @property
    def nacked(self) -> bool:
        return self._state == _NACKED

    async def ack(self) -> bool:
        """Acknowledge the message: it will not be delivered again to this group.

        Returns True once acked (again True if it already was), False if it
        was already nacked. Where the provider confirms acks it returns only
        once the server confirmed, and raises :class:`AckError` if it could not.
        """
        state = self._state
        if state == _ACKED:
            return True
        if state == _NACKED:
            return False
        self._state = _ACKED
        acker = self._acker
        if acker is not None:
            try:
                pending = acker.ack_message(self)
                if pending is not None:
                    await pending
            except BaseException:
                self._state = _PENDING
                raise
        return True

    async def nack(self, delay: float | None = None) -> bool:
        """Ask for redelivery, after ``delay`` seconds if given.

        Returns True once nacked (again True if it already was), False if it
        was already acked.
        """
        if delay is not None and (
            not isinstance(delay, int | float) or not delay >= 0 or math.isinf(delay)
        ):
            raise InvalidMessageError(
                f"nack delay must be a finite number of seconds >= 0, not {delay!r}"
            )
        state = self._state
        if state == _NACKED:
            return True
        if state == _ACKED:
            return False
        self._state = _NACKED
        acker = self._acker
        if acker is not None:
            await acker.nack_message(self, delay)
        return True

    def _mark_nacked(self) -> None:
        """The provider gave the message back itself (its subscription closed
        before it was settled): ``ack()`` returns False from now on."""
        self._state = _NACKED

    def copy(self) -> Message:
        """A new, unreceived message with the same uuid, payload and metadata."""
        return Message(self.payload, dict(self.metadata), uuid=self.uuid)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.uuid == other.uuid
            and self.payload == other.payload
            and self.metadata == other.metadata
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        payload = self.payload if len(self.payload) <= 32 else self.payload[:32] + b"..."
        extra = "" if self.delivery is None else f", delivery={self.delivery!r}"
        return (
            f"Message(uuid={self.uuid!r}, payload={payload!r}, metadata={self.metadata!r}{extra})"
        )


def checked_payload(payload: object) -> bytes:
    """``payload`` as bytes: a bytearray or memoryview is copied, anything else
    is a TypeError. Providers call it on publish for a payload that is not
    ``bytes`` (``Message.payload`` can be replaced after construction)."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
    return bytes(payload)


#: A NATS header name: an HTTP token (RFC 9110).
_HEADER_KEY: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _checked_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    result = dict(metadata)
    for key, value in result.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata keys and values must be str: {key!r}: {value!r}")
    return result


def validate_metadata(metadata: Mapping[str, str]) -> None:
    """Reject metadata that NATS headers cannot carry faithfully (InvalidMessageError).

    Every provider calls this on publish, so that the memory provider accepts
    exactly what the NATS provider will.
    """
    for key, value in metadata.items():
        if type(value) is str and type(key) is str and key in _GOOD_KEYS:
            if value and (
                "\r" in value
                or "\n" in value
                or value[0].isspace()
                or value[-1].isspace()
                or not (value.isascii() or utf8_encodable(value))
            ):
                raise InvalidMessageError(
                    f"metadata value of {key!r} {_header_value_problem(value)}"
                )
            continue
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata keys and values must be str: {key!r}: {value!r}")
        if not _HEADER_KEY.fullmatch(key):
            raise InvalidMessageError(
                f"metadata key {key!r} is not a valid header name (letters, digits and "
                "!#$%&'*+-.^_`|~ only)"
            )
        if key.lower().startswith("nats-"):
            raise InvalidMessageError(
                f"metadata key {key!r}: keys starting with 'Nats-' are reserved"
            )
        if key == UUID_HEADER:
            raise InvalidMessageError(f"metadata key {key!r} is reserved for the message uuid")
        problem = _header_value_problem(value)
        if problem is not None:
            raise InvalidMessageError(f"metadata value of {key!r} {problem}")
        if type(key) is str and len(_GOOD_KEYS) < _GOOD_KEYS_MAX:
            _GOOD_KEYS.add(key)


#: Metadata keys already found valid (applications use a few): the next
#: message with them skips the key checks. Bounded: keys past it are checked
#: every time, never forgotten wrongly.
_GOOD_KEYS: set[str] = set()
_GOOD_KEYS_MAX: Final = 4096


def _header_value_problem(value: str) -> str | None:
    """Why a NATS header cannot carry ``value`` unchanged, or None if it can."""
    if "\r" in value or "\n" in value:
        return "holds a line break"
    if value and (value[0].isspace() or value[-1].isspace()):
        # NATS clients strip it on the way (nats-py's publish any Unicode
        # whitespace, as str.strip() does): refuse rather than alter.
        return "starts or ends with whitespace"
    if not value.isascii() and not utf8_encodable(value):
        return "has no UTF-8 form (a lone surrogate)"
    return None


def _check_uuid(uuid: object) -> None:
    """A given uuid travels as a header value (and as ``Nats-Msg-Id``): the same rules."""
    if not isinstance(uuid, str) or not uuid:
        raise InvalidMessageError(f"uuid must be a non-empty str, not {uuid!r}")
    problem = _header_value_problem(uuid)
    if problem is not None:
        raise InvalidMessageError(f"uuid {uuid!r} {problem}")
