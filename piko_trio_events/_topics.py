"""Topic rules shared by every provider: NATS subject syntax.

Tokens are separated by ``.``; no token is empty or holds whitespace or an
ASCII control character; at most 255 characters, all of them encodable as
UTF-8 (the wire form). ``*`` (exactly one token) and ``>`` (one or more
tokens; last token only) are wildcards, allowed when subscribing and never
when publishing; they are never part of a longer token (``a*`` is invalid:
NATS clients refuse it and JetStream streams read it as a wildcard).
"""

from __future__ import annotations

import re
from functools import lru_cache

from ._errors import InvalidTopicError
from ._util import utf8_encodable

__all__ = ["MAX_TOPIC_LENGTH", "is_wildcard", "topic_matches", "validate_topic"]

MAX_TOPIC_LENGTH = 255
_WHITESPACE = frozenset(" \t\r\n\f\v")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@lru_cache(maxsize=4096)
def _check(topic: str, wildcards: bool) -> None:
    if not isinstance(topic, str):
        raise InvalidTopicError(f"topic must be a str, not {type(topic).__name__}: {topic!r}")
    if not topic:
        raise InvalidTopicError("topic must not be empty")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise InvalidTopicError(
            f"topic {topic[:40]!r}... is {len(topic)} characters long; the limit is "
            f"{MAX_TOPIC_LENGTH}"
        )
    if not _WHITESPACE.isdisjoint(topic):
        raise InvalidTopicError(f"topic {topic!r} contains whitespace")
    if _CONTROL.search(topic):
        # JetStream consumers never deliver a subject holding DEL, for one
        raise InvalidTopicError(f"topic {topic!r} contains a control character")
    if not topic.isascii() and not utf8_encodable(topic):
        raise InvalidTopicError(f"topic {topic!r} has no UTF-8 form (a lone surrogate)")
    tokens = topic.split(".")
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if not token:
            raise InvalidTopicError(f"topic {topic!r} has an empty token")
        if token in ("*", ">"):
            if not wildcards:
                raise InvalidTopicError(
                    f"topic {topic!r} contains the wildcard {token!r}; "
                    "wildcards are allowed only when subscribing"
                )
            if token == ">" and i != last:
                raise InvalidTopicError(f"topic {topic!r}: '>' may only be the last token")
        elif "*" in token or ">" in token:
            # NATS clients refuse such a subscription, and a stream's subjects
            # read it as a wildcard: never a literal part of a token.
            raise InvalidTopicError(
                f"topic {topic!r}: '*' and '>' are wildcards, allowed only as whole tokens"
            )


def validate_topic(topic: str, *, wildcards: bool = False) -> str:
    """Return ``topic`` unchanged, or raise :class:`InvalidTopicError` naming it."""
    try:
        _check(topic, wildcards)
    except TypeError:  # unhashable: certainly not a str
        raise InvalidTopicError(f"topic must be a str, not {type(topic).__name__}") from None
    return topic


def is_wildcard(pattern: str) -> bool:
    """Whether a (valid) subscription pattern holds a wildcard token."""
    return pattern == "*" or pattern == ">" or "*" in pattern.split(".") or pattern.endswith(".>")


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether a concrete ``topic`` matches a subscription ``pattern``."""
    if pattern == topic:
        return True
    p_tokens = pattern.split(".")
    t_tokens = topic.split(".")
    for i, p in enumerate(p_tokens):
        if p == ">":
            return len(t_tokens) > i
        if i >= len(t_tokens):
            return False
        if p != "*" and p != t_tokens[i]:
            return False
    return len(p_tokens) == len(t_tokens)
