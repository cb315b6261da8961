from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from piko_trio_events import InvalidTopicError
from piko_trio_events._topics import is_wildcard, topic_matches, validate_topic


@pytest.mark.parametrize("topic", ["orders", "orders.created", "a.b.c.d", "a-b_c.D9", "x" * 255])
def test_valid_publish_topics(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize(
    ("topic", "fragment"),
    [
        ("", "empty"),
        ("orders..created", "empty token"),
        (".orders", "empty token"),
        ("orders.", "empty token"),
        ("orders created", "whitespace"),
        ("orders\tcreated", "whitespace"),
        ("orders.*", "wildcard"),
        ("orders.>", "wildcard"),
        ("x" * 256, "limit"),
    ],
)
def test_invalid_publish_topics_name_the_topic(topic: str, fragment: str) -> None:
    with pytest.raises(InvalidTopicError, match=fragment) as info:
        validate_topic(topic)
    assert isinstance(info.value, ValueError)
    if topic and len(topic) < 50:
        assert repr(topic) in str(info.value)


@pytest.mark.parametrize("pattern", ["orders.*", "orders.>", "*.created", ">", "*", "a.*.c.>"])
def test_wildcards_allowed_when_subscribing(pattern: str) -> None:
    assert validate_topic(pattern, wildcards=True) == pattern
    assert is_wildcard(pattern)


@pytest.mark.parametrize("pattern", ["orders.>.x", ">.a"])
def test_full_wildcard_only_last(pattern: str) -> None:
    with pytest.raises(InvalidTopicError, match="last token"):
        validate_topic(pattern, wildcards=True)


def test_non_str_topic() -> None:
    with pytest.raises(InvalidTopicError, match="str"):
        validate_topic(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidTopicError, match="str"):
        validate_topic(["a"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("orders.created", "orders.created", True),
        ("orders.*", "orders.created", True),
        ("orders.*", "orders.created.eu", False),
        ("orders.*", "orders", False),
        ("orders.>", "orders.created.eu", True),
        ("orders.>", "orders", False),
        ("*.created", "orders.created", True),
        ("*.created", "orders.deleted", False),
        (">", "anything.at.all", True),
        ("*", "one", True),
        ("*", "one.two", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.d", False),
    ],
)
def test_matching(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected
    assert is_wildcard(pattern) is ("*" in pattern.split(".") or pattern.endswith(">"))


tokens = st.text(alphabet="abcxyz019-_", min_size=1, max_size=4)


@given(st.lists(tokens, min_size=1, max_size=5), st.data())
def test_matching_agrees_with_a_token_model(subject: list[str], data: st.DataObject) -> None:
    topic = ".".join(subject)
    pattern_tokens = [data.draw(st.sampled_from([t, "*", "other"])) for t in subject]
    cut = data.draw(st.integers(0, len(subject)))
    if cut < len(subject) and data.draw(st.booleans()):
        pattern_tokens = [*pattern_tokens[:cut], ">"]
    pattern = ".".join(pattern_tokens)
    validate_topic(pattern, wildcards=True)
    expected = all(
        p == ">" or p == "*" or p == t for p, t in zip(pattern_tokens, subject, strict=False)
    ) and (
        len(pattern_tokens) == len(subject)
        or (pattern_tokens[-1] == ">" and len(subject) >= len(pattern_tokens))
    )
    assert topic_matches(pattern, topic) is expected
