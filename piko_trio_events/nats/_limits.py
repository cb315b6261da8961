"""The NATS provider's tunables in one place: batch sizes, buffers, timeouts."""

from __future__ import annotations

from typing import Final

#: Core publish calls between two schedule points (one outgoing batch).
_YIELD_EVERY: Final = 256

#: Encoded core publishes queued before ``publish`` waits for the pump...
OUT_LIMIT: Final = 1024

#: ... or as many bytes of them (large messages: see :mod:`._bridge`).
OUT_BYTES: Final = 1 << 20

#: Messages a subscription buffers (and, under JetStream, by default holds
#: unsettled: its pull requests never ask for more than its ``prefetch`` room).
_CAPACITY: Final = 256

#: Messages a core NATS subscription buffers before nats-py's queue takes the
#: overflow (core NATS has no flow control: past both, the server's messages
#: are dropped and counted in ``provider.dropped``).
_CORE_BUFFER: Final = 8192

#: nats-py's pending limits per subscription (with -1 its queue is unbounded).
_PENDING_MSGS: Final = 65_536

_PENDING_BYTES: Final = 64 * 1024 * 1024

#: JetStream pull requests: lifetime and idle heartbeat (seconds).
_PULL_EXPIRES: Final = 10.0

_PULL_HEARTBEAT: Final = 1.0

#: Seconds since the last write straight from trio after which the next one
#: may be one too (closer ones are queued and batched: see ``_Connection.send``).
_QUIET: Final = 0.00005

#: At most this many bytes are written straight from trio (see ``_Connection.send``).
_WRITE_NOW_BYTES: Final = 256 * 1024

#: How long a JetStream publish waits for the server's acks (seconds).
_PUBLISH_ACK_TIMEOUT: Final = 5.0

#: How long a confirmed ack waits for the server (seconds).
_ACK_TIMEOUT: Final = 5.0

#: How long JetStream API requests wait (seconds).
_API_TIMEOUT: Final = 5.0
#: The longest nats-py's ``close`` may take at the end of the drain (seconds).
_CLOSE_LIMIT: Final = 2.0
#: Confirmed acks a JetStream subscription remembers (stream sequences), to
#: drop a stale redelivery of a message whose ack() returned True.
_CONFIRMED_KEPT: Final = 4096

#: Seconds a subscription keeps asking a server that refuses its stream or
#: consumer (a cluster without peers for the placement right now) before
#: subscribe raises ConnectError with the server's reason.
_REFUSAL_PATIENCE = 5.0
