"""Configuration of the router and of each provider.

Every config is a frozen dataclass that validates itself when built and again
when a provider opens; an invalid value raises :class:`ConfigError` naming the
field. Times are seconds (float).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ._errors import ConfigError

__all__ = ["JetStreamConfig", "MemoryConfig", "NatsConfig", "RouterConfig", "redact_url"]


def _number(
    owner: str, name: str, value: object, *, minimum: float = 0.0, strict: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(f"{owner}.{name} must be a number, not {value!r}")
    if (value <= minimum) if strict else (value < minimum):
        op = ">" if strict else ">="
        raise ConfigError(f"{owner}.{name} must be {op} {minimum:g}, not {value!r}")


def _integer(owner: str, name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}.{name} must be an int, not {value!r}")
    if value < minimum:
        raise ConfigError(f"{owner}.{name} must be >= {minimum}, not {value!r}")


def _boolean(owner: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{owner}.{name} must be a bool, not {value!r}")


def _name(owner: str, name: str, value: object) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise ConfigError(
            f"{owner}.{name} must be a non-empty name of letters, digits, '-' or '_', not {value!r}"
        )


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Router settings.

    Attributes:
        close_timeout: on close, how long in-flight handlers may run before
            they are cancelled and their messages nacked. Inside a provider
            the handlers get at most this, and never more than the router's
            share of the provider's one drain budget (see the lifecycle docs).
    """

    close_timeout: float = 30.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _number("RouterConfig", "close_timeout", self.close_timeout)


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """Settings of the in-memory provider (Watermill's GoChannel).

    Attributes:
        output_buffer: messages a subscription or group buffers before
            ``publish`` waits (backpressure, never unbounded memory).
        persistent: a new subscription (or new group) first receives every
            earlier message of its topic, from a bounded history.
        history_size: how many messages ``persistent`` keeps per topic (the
            oldest are dropped first).
        block_publish_until_ack: ``publish`` returns only once every
            subscriber acked each message.
        router: the router's settings; its ``close_timeout`` bounds the drain.
    """

    output_buffer: int = 8192
    persistent: bool = False
    history_size: int = 100_000
    block_publish_until_ack: bool = False
    router: RouterConfig = field(default_factory=RouterConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _integer("MemoryConfig", "output_buffer", self.output_buffer, minimum=1)
        _boolean("MemoryConfig", "persistent", self.persistent)
        _integer("MemoryConfig", "history_size", self.history_size, minimum=1)
        _boolean("MemoryConfig", "block_publish_until_ack", self.block_publish_until_ack)
        if not isinstance(self.router, RouterConfig):
            raise ConfigError(f"MemoryConfig.router must be a RouterConfig, not {self.router!r}")
        self.router.validate()


@dataclass(frozen=True, slots=True)
class JetStreamConfig:
    """JetStream settings of the NATS provider.

    Attributes:
        disabled: use core NATS (at-most-once) instead of JetStream.
        auto_provision: create a stream per topic root on first use (turn it
            off in production and provision streams yourself).
        durable_prefix: prefix of durable consumer names.
        track_message_id: send ``<topic>:<uuid>`` as ``Nats-Msg-Id`` so the
            server stores a message republished to the same topic once
            (within ``duplicate_window``).
        ack_async: ``ack()`` returns without waiting for the server.
        replicas: replicas of auto-provisioned streams.
        duplicate_window: de-duplication window of auto-provisioned streams.
    """

    disabled: bool = False
    auto_provision: bool = True
    durable_prefix: str = "piko"
    track_message_id: bool = False
    ack_async: bool = False
    replicas: int = 1
    duplicate_window: float = 120.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("disabled", "auto_provision", "track_message_id", "ack_async"):
            _boolean("JetStreamConfig", name, getattr(self, name))
        _name("JetStreamConfig", "durable_prefix", self.durable_prefix)
        _integer("JetStreamConfig", "replicas", self.replicas, minimum=1)
        if self.replicas > 5:
            raise ConfigError(f"JetStreamConfig.replicas must be <= 5, not {self.replicas!r}")
        _number("JetStreamConfig", "duplicate_window", self.duplicate_window)


_SECRET_OPTIONS = frozenset(
    {
        "password",
        "token",
        "user_credentials",
        "nkeys_seed",
        "nkeys_seed_str",
        "signature_cb",
        "user_jwt_cb",
        "tls",
        "tls_hostname",
        "ws_connection_headers",  # may carry an Authorization header
    }
)


def redact_url(url: str) -> str:
    """``url`` with any password (or token in the user part) replaced by ``***``.

    Works on any text (an error message naming several URLs); a password
    that holds an unescaped ``@`` is hidden whole.
    """
    return re.sub(
        r"(?<=://)([^:/@\s]*)(:[^/\s]*)?@",
        lambda m: ("***" if m.group(2) is None else m.group(1) + ":***") + "@",
        url,
    )


@dataclass(frozen=True, slots=True)
class NatsConfig:
    """Settings of the NATS provider; ``NatsConfig()`` carries working defaults.

    Secrets (passwords, tokens, credentials, nkey seeds, in ``url`` or
    ``nats_options``) never appear in ``repr`` or ``str``.

    Attributes:
        url: server URL; several cluster seeds separated by commas.
        cluster_id: the connection's name, as the server shows it.
        connect_timeout: the first connect fails with ``ConnectError`` after this.
        queue_group_prefix: prefix of core NATS queue group names.
        subscribers_count: the router's default handler concurrency.
        ack_wait_timeout: JetStream's AckWait for the consumers created here.
        close_timeout: the one budget of the whole drain when the provider
            closes: router, subscriptions, publisher flush, connection and
            the asyncio bridge all end within it.
        router: the router's settings (its ``close_timeout`` bounds in-flight
            handlers inside the drain, within the router's share of it).
        reconnect_wait: seconds between reconnect attempts after a successful
            first connect.
        max_reconnect_attempts: -1 for forever.
        nats_options: passed to nats-py's ``connect`` (tls, user, password,
            token, user_credentials, nkeys_seed, ...).
        jetstream: JetStream settings; ``JetStreamConfig(disabled=True)`` is
            core NATS (at-most-once).
    """

    url: str = "nats://127.0.0.1:4222"
    cluster_id: str = "piko-events"
    connect_timeout: float = 5.0
    queue_group_prefix: str = "piko"
    subscribers_count: int = 1
    ack_wait_timeout: float = 30.0
    close_timeout: float = 30.0
    router: RouterConfig = field(default_factory=RouterConfig)
    reconnect_wait: float = 2.0
    max_reconnect_attempts: int = -1
    nats_options: dict[str, Any] = field(default_factory=dict)
    jetstream: JetStreamConfig = field(default_factory=JetStreamConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.url, str) or not self.url.strip():
            raise ConfigError("NatsConfig.url must be a non-empty str (comma-separated seeds)")
        for seed in self.url.split(","):
            if not seed.strip():
                raise ConfigError(f"NatsConfig.url has an empty seed: {redact_url(self.url)!r}")
        if not isinstance(self.cluster_id, str) or not self.cluster_id:
            raise ConfigError(
                f"NatsConfig.cluster_id must be a non-empty str, not {self.cluster_id!r}"
            )
        _number("NatsConfig", "connect_timeout", self.connect_timeout, strict=True)
        _name("NatsConfig", "queue_group_prefix", self.queue_group_prefix)
        _integer("NatsConfig", "subscribers_count", self.subscribers_count, minimum=1)
        _number("NatsConfig", "ack_wait_timeout", self.ack_wait_timeout, strict=True)
        _number("NatsConfig", "close_timeout", self.close_timeout)
        _number("NatsConfig", "reconnect_wait", self.reconnect_wait)
        _integer("NatsConfig", "max_reconnect_attempts", self.max_reconnect_attempts, minimum=-1)
        if not isinstance(self.nats_options, dict):
            raise ConfigError("NatsConfig.nats_options must be a dict")
        if not isinstance(self.router, RouterConfig):
            raise ConfigError(f"NatsConfig.router must be a RouterConfig, not {self.router!r}")
        self.router.validate()
        if not isinstance(self.jetstream, JetStreamConfig):
            raise ConfigError("NatsConfig.jetstream must be a JetStreamConfig")
        self.jetstream.validate()

    def __repr__(self) -> str:
        options = {k: ("***" if k in _SECRET_OPTIONS else v) for k, v in self.nats_options.items()}
        return (
            f"NatsConfig(url={redact_url(self.url)!r}, cluster_id={self.cluster_id!r}, "
            f"connect_timeout={self.connect_timeout!r}, "
            f"queue_group_prefix={self.queue_group_prefix!r}, "
            f"subscribers_count={self.subscribers_count!r}, "
            f"ack_wait_timeout={self.ack_wait_timeout!r}, close_timeout={self.close_timeout!r}, "
            f"router={self.router!r}, reconnect_wait={self.reconnect_wait!r}, "
            f"max_reconnect_attempts={self.max_reconnect_attempts!r}, "
            f"nats_options={options!r}, jetstream={self.jetstream!r})"
        )

    __str__ = __repr__
