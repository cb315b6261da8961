"""Deterministic server-side names for streams, consumers and queue groups.

Stream and consumer names may not contain ``.``, ``*``, ``>``, whitespace or
path separators (nats-py raises a bare ``ValueError``), and a topic such as
``orders.created`` is not a valid stream name. Names here keep the readable
characters and add a short hash whenever something was replaced or cut, so
two different inputs never share a name.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["consumer_name", "queue_group", "stream_name", "topic_root"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_PART = 48


def _digest(text: str) -> str:
    return hashlib.blake2s(text.encode(), digest_size=4).hexdigest()


def _safe(text: str) -> str:
    """``text`` reduced to name-safe characters, with a hash if anything changed."""
    cleaned = _UNSAFE.sub("_", text.replace("*", "STAR").replace(">", "ALL"))
    if cleaned == text and len(cleaned) <= _MAX_PART:
        return cleaned
    return f"{cleaned[:_MAX_PART]}_{_digest(text)}"


def topic_root(topic: str) -> str:
    """The first token of a topic: one stream per root holds ``root`` and ``root.>``."""
    return topic.split(".", 1)[0]


def stream_name(prefix: str, root: str) -> str:
    """The auto-provisioned stream for ``root``: ``<PREFIX>_<root>``."""
    return f"{prefix.upper()}_{_safe(root)}"


def consumer_name(prefix: str, group: str, topic: str) -> str:
    """The durable consumer of ``group`` on ``topic``: prefix, group and topic."""
    return f"{prefix}_{_safe(group)}_{_safe(topic)}"


def queue_group(prefix: str, group: str) -> str:
    """The core NATS queue group of ``group``."""
    return f"{prefix}_{_safe(group)}"
