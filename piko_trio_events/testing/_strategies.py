"""Hypothesis strategies for the inputs every provider accepts.

``topics()``, ``metadata()`` and ``messages()`` generate topics, metadata and
messages that both the memory and the NATS provider take and carry intact,
so a property test of your handler fails because of your handler, not
because a generated input was one the broker would refuse::

    from hypothesis import given, strategies as st
    from piko_trio_events.testing import messages, topics

    @given(topic=topics(), batch=st.lists(messages(), max_size=10))
    async def test_audit_handler(topic, batch): ...

This module imports hypothesis; import it only where hypothesis is installed.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

from hypothesis import strategies as st

from .._errors import ConfigError
from .._message import UUID_HEADER, Message
from .._topics import MAX_TOPIC_LENGTH

__all__ = ["messages", "metadata", "topics"]

#: What topic tokens are made of by default: NATS's recommended subject characters.
TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_"
#: HTTP token characters: what a NATS header name (a metadata key) may hold.
KEY_ALPHABET = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
_MAX_TOKEN_SIZE = 16


def topics(
    *, wildcards: bool = False, max_tokens: int = 5, alphabet: str = TOKEN_ALPHABET
) -> st.SearchStrategy[str]:
    """Valid topics: 1 to ``max_tokens`` non-empty tokens joined by ``.``.

    Every topic passes ``validate_topic(topic, wildcards=wildcards)``. With
    ``wildcards=True`` a topic may also hold ``*`` tokens and end with a
    ``>`` token: a subscription pattern (which may start with a wildcard,
    something JetStream's auto-provisioning refuses). Topics shrink towards
    ``"0"``.

    Args:
        wildcards: generate subscription patterns rather than publish topics.
        max_tokens: the most tokens a topic has (1 to 128); tokens get
            shorter as this grows, so that a topic never exceeds 255 characters.
        alphabet: the characters of literal tokens; never ``.``, ``*``, ``>``,
            whitespace or an ASCII control character.

    Example::

        >>> from hypothesis import find
        >>> find(topics(), lambda t: t.count(".") >= 2)
        '0.0.0'
        >>> find(topics(wildcards=True), lambda t: t.endswith(">"))
        '>'
    """
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= (MAX_TOPIC_LENGTH + 1) // 2:
        raise ConfigError(
            f"max_tokens must be an int from 1 to {(MAX_TOPIC_LENGTH + 1) // 2}, not {max_tokens!r}"
        )
    if not alphabet or any(c in ".*>\x7f" or c < " " or c.isspace() for c in alphabet):
        raise ConfigError(
            "alphabet must be non-empty, without '.', '*', '>', whitespace or control "
            f"characters: {alphabet!r}"
        )
    # n tokens of at most `size` characters and n - 1 dots fit in 255 characters.
    size = min(_MAX_TOKEN_SIZE, (MAX_TOPIC_LENGTH + 1) // max_tokens - 1)
    token = st.text(alphabet, min_size=1, max_size=size)
    if not wildcards:
        return st.lists(token, min_size=1, max_size=max_tokens).map(".".join)
    tokens = st.lists(st.one_of(token, st.just("*")), min_size=1, max_size=max_tokens)
    return st.tuples(tokens, st.booleans()).map(_pattern)


def _pattern(drawn: tuple[list[str], bool]) -> str:
    tokens, rest = drawn
    if rest:
        tokens = [*tokens[:-1], ">"]
    return ".".join(tokens)


def metadata(*, max_size: int = 4, max_value_size: int = 32) -> st.SearchStrategy[dict[str, str]]:
    """Metadata dicts that every provider accepts and delivers unchanged.

    Every dict passes ``validate_metadata``. Keys are NATS header names
    (HTTP token characters, so never whitespace or ``:``), never starting
    with ``Nats-`` (any case) and never the uuid header
    ``_watermill_message_uuid``. Values are any text without CR or LF and
    without spaces, tabs, VT or FF at either end, which NATS clients strip
    from header values. The dicts shrink towards ``{}``.

    Args:
        max_size: the most keys a dict has.
        max_value_size: the longest value, in characters.

    Example::

        >>> from hypothesis import find
        >>> find(metadata(), lambda m: len(m) == 2)
        {'0': '', '00': ''}
    """
    keys = st.text(KEY_ALPHABET, min_size=1, max_size=24).filter(_allowed_key)
    values = st.text(
        st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=max_value_size
    ).map(str.strip)  # what NATS clients strip from a header value's ends
    return st.dictionaries(keys, values, max_size=max_size)


def _allowed_key(key: str) -> bool:
    return not key.lower().startswith("nats-") and key != UUID_HEADER


_metadata = metadata


def messages(
    *,
    payloads: st.SearchStrategy[bytes] | None = None,
    metadata: st.SearchStrategy[Mapping[str, str]] | None = None,
    uuids: st.SearchStrategy[str] | None = None,
) -> st.SearchStrategy[Message]:
    """Unreceived :class:`Message` objects, ready to publish.

    Args:
        payloads: the payloads; by default ``st.binary(max_size=256)``.
        metadata: the metadata; by default :func:`metadata`.
        uuids: the uuids; by default none is drawn and each message gets a
            fresh uuid4, as a message you build does (so a list of messages
            never holds two with one uuid). Draw them, for example from
            ``st.sampled_from(["a", "b"])``, to generate messages that share
            a uuid, as a redelivered or republished message does.

    Example::

        >>> from hypothesis import find, strategies as st
        >>> msg = find(messages(payloads=st.just(b"hi")), lambda m: len(m.metadata) == 1)
        >>> msg.payload, msg.metadata
        (b'hi', {'0': ''})
    """
    payload_strategy = st.binary(max_size=256) if payloads is None else payloads
    metadata_strategy = _metadata() if metadata is None else metadata
    if uuids is None:
        return st.builds(Message, payload_strategy, metadata_strategy)
    return st.builds(Message, payload_strategy, metadata_strategy, uuid=uuids)
