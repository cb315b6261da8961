"""JetStream inspection for tools (the ``streams`` command), trio-facing.

The provider's connection and its asyncio bridge do the work; callers get
plain frozen dataclasses and never touch asyncio or nats-py objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._config import redact_url
from .._errors import PikoEventsError

if TYPE_CHECKING:
    from ._provider import NatsProvider

__all__ = ["ConsumerSummary", "StreamSummary", "list_streams"]


@dataclass(frozen=True)
class ConsumerSummary:
    """One consumer of a stream, as the server reports it now."""

    name: str
    durable: bool
    filter_subject: str | None
    #: Messages of the stream the consumer has not been delivered yet.
    pending: int
    #: Messages delivered and not acknowledged yet.
    ack_pending: int
    redelivered: int


@dataclass(frozen=True)
class StreamSummary:
    """One JetStream stream and its consumers."""

    name: str
    subjects: tuple[str, ...]
    messages: int
    bytes: int
    consumers: tuple[ConsumerSummary, ...]


async def list_streams(provider: NatsProvider) -> list[StreamSummary]:
    """Every stream of the server the provider is connected to, with its
    consumers, sorted by name. Raises :class:`PikoEventsError` when the
    provider has JetStream disabled or the server cannot answer."""
    conn = provider._conn
    jsm = conn.jsm
    if jsm is None:
        raise PikoEventsError("JetStream is disabled on this provider")

    async def collect() -> list[StreamSummary]:
        result = []
        for info in await jsm.streams_info():
            config, state = info.config, info.state
            name = config.name or ""
            consumers = [_consumer(c) for c in await jsm.consumers_info(name)]
            result.append(
                StreamSummary(
                    name=name,
                    subjects=tuple(config.subjects or ()),
                    messages=state.messages,
                    bytes=state.bytes,
                    consumers=tuple(sorted(consumers, key=lambda c: c.name)),
                )
            )
        return sorted(result, key=lambda s: s.name)

    from nats.js.errors import ServiceUnavailableError

    try:
        return await conn.bridge.call(collect)
    except PikoEventsError:
        raise
    except ServiceUnavailableError as exc:
        raise PikoEventsError(
            f"the NATS server at {redact_url(conn.config.url)} does not answer JetStream "
            "requests (is JetStream enabled on it? nats-server -js)"
        ) from exc
    except Exception as exc:
        reason = conn.scrub(str(exc) or type(exc).__name__)
        raise PikoEventsError(f"could not list JetStream streams: {reason}") from exc


def _consumer(info: Any) -> ConsumerSummary:
    config = info.config
    return ConsumerSummary(
        name=info.name,
        durable=bool(config.durable_name),
        filter_subject=config.filter_subject,
        pending=info.num_pending or 0,
        ack_pending=info.num_ack_pending or 0,
        redelivered=info.num_redelivered or 0,
    )
