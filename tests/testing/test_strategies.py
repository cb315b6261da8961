"""Properties of the hypothesis strategies in ``piko_trio_events.testing``."""

from __future__ import annotations

import pytest
import trio
from hypothesis import find, given, settings
from hypothesis import strategies as st

from piko_trio_events import MemoryConfig, Message, NatsConfig, open_memory_provider
from piko_trio_events._message import _HEADER_KEY, UUID_HEADER, validate_metadata
from piko_trio_events._topics import MAX_TOPIC_LENGTH, validate_topic
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing._server import open_nats_server
from piko_trio_events.testing._strategies import messages, metadata, topics


@given(topics())
def test_topics_are_valid_publish_topics(topic: str) -> None:
    assert validate_topic(topic) == topic
    assert "*" not in topic.split(".")
    assert ">" not in topic.split(".")


@given(topics(wildcards=True))
def test_wildcard_topics_are_valid_patterns(pattern: str) -> None:
    assert validate_topic(pattern, wildcards=True) == pattern


@given(st.data(), st.integers(1, 128), st.booleans())
def test_topics_respect_max_tokens_and_length(
    data: st.DataObject, max_tokens: int, wildcards: bool
) -> None:
    topic = data.draw(topics(wildcards=wildcards, max_tokens=max_tokens))
    assert len(topic.split(".")) <= max_tokens
    assert len(topic) <= MAX_TOPIC_LENGTH
    validate_topic(topic, wildcards=wildcards)


def test_wildcard_topics_reach_both_wildcards() -> None:
    pattern = find(topics(wildcards=True), lambda p: "*" in p.split(".") and p.endswith(".>"))
    assert pattern == "*.>"


@pytest.mark.parametrize("max_tokens", [0, 129, -1])
def test_topics_rejects_an_impossible_max_tokens(max_tokens: int) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        topics(max_tokens=max_tokens)


@pytest.mark.parametrize("alphabet", ["", "a.b", "a b", "a\u2003", "ab*", "a>", "a\x7f"])
def test_topics_rejects_a_bad_alphabet(alphabet: str) -> None:
    with pytest.raises(ValueError, match="alphabet"):
        topics(alphabet=alphabet)


@given(metadata())
def test_metadata_is_accepted_by_every_provider(meta: dict[str, str]) -> None:
    validate_metadata(meta)  # what the memory provider checks
    for key, value in meta.items():
        assert _HEADER_KEY.fullmatch(key)  # what every provider requires (validate_metadata)
        assert not key.lower().startswith("nats-")
        assert key != UUID_HEADER
        assert value == value.strip(" \t\x0b\x0c")  # what NATS clients would strip
    assert Message(b"", meta).metadata == meta


def test_metadata_reaches_several_keys_and_unusual_values() -> None:
    assert len(find(metadata(), lambda m: len(m) == 4)) == 4
    assert find(metadata(), lambda m: any(not v.isascii() for v in m.values()))


@given(messages(uuids=st.sampled_from(["one", "two"])))
def test_messages_use_drawn_uuids(msg: Message) -> None:
    assert msg.uuid in ("one", "two")
    assert msg.delivery is None


@given(st.lists(messages(payloads=st.just(b"x"), metadata=st.just({"k": "v"})), max_size=5))
def test_messages_take_payload_and_metadata_strategies(batch: list[Message]) -> None:
    assert all(m.payload == b"x" and m.metadata == {"k": "v"} for m in batch)
    assert len({m.uuid for m in batch}) == len(batch)  # fresh uuids by default


@settings(max_examples=30)
@given(topic=topics(), batch=st.lists(messages(), min_size=1, max_size=8))
async def test_messages_round_trip_through_the_memory_provider(
    topic: str, batch: list[Message]
) -> None:
    with trio.fail_after(5):
        async with (
            open_memory_provider(MemoryConfig()) as provider,
            provider.subscriber.subscribe(topic) as received,
        ):
            await provider.publisher.publish(topic, *batch)
            got = [await received.receive() for _ in batch]
            for msg in got:
                assert await msg.ack()
    _check_intact(topic, batch, got)


@pytest.mark.nats
@settings(max_examples=8)
@given(topic=topics(), batch=st.lists(messages(), min_size=1, max_size=5))
async def test_messages_round_trip_through_nats(topic: str, batch: list[Message]) -> None:
    with trio.fail_after(20):
        async with (
            open_nats_server() as server,
            open_nats_provider(NatsConfig(url=server.url)) as provider,
            provider.subscriber.subscribe(topic) as received,
        ):
            await provider.publisher.publish(topic, *batch)
            got = [await received.receive() for _ in batch]
            for msg in got:
                assert await msg.ack()
    _check_intact(topic, batch, got)


def _check_intact(topic: str, sent: list[Message], got: list[Message]) -> None:
    assert got == sent
    for s, g in zip(sent, got, strict=True):
        assert (g.uuid, g.payload, g.metadata) == (s.uuid, s.payload, s.metadata)
        assert g.delivery is not None
        assert g.delivery.topic == topic
        assert g.delivery.attempt == 1
