from __future__ import annotations

import re
import uuid

import pytest

from piko_trio_events import Delivery, InvalidMessageError, Message
from piko_trio_events._message import validate_metadata
from piko_trio_events._uuid import derived_uuid, new_uuid

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_uuid_is_a_fresh_uuid4_unless_given() -> None:
    a, b = Message(b"x"), Message(b"x")
    assert UUID4.match(a.uuid), a.uuid
    assert uuid.UUID(a.uuid).version == 4
    assert a.uuid != b.uuid
    assert a.uuid == a.uuid  # stable once drawn
    assert Message(b"x", uuid="my-id").uuid == "my-id"


def test_pooled_uuids_are_unique_and_valid() -> None:
    ids = [new_uuid() for _ in range(3000)]
    assert len(set(ids)) == len(ids)
    assert all(UUID4.match(u) for u in ids)
    variants = {u[19] for u in ids}
    assert variants == set("89ab")


def test_derived_uuid_is_deterministic() -> None:
    assert derived_uuid("p", "h", 0) == derived_uuid("p", "h", 0)
    assert derived_uuid("p", "h", 0) != derived_uuid("p", "h", 1)
    assert derived_uuid("p", "h", 0) != derived_uuid("p", "g", 0)


def test_payload_and_metadata() -> None:
    msg = Message(bytearray(b"abc"), {"k": "v"})
    assert msg.payload == b"abc"
    assert type(msg.payload) is bytes
    assert msg.metadata == {"k": "v"}
    assert msg.delivery is None
    with pytest.raises(TypeError, match="bytes"):
        Message("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str"):
        Message(b"", {"k": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="uuid"):
        Message(b"", uuid="")


def test_equality_is_uuid_payload_metadata() -> None:
    a = Message(b"p", {"k": "v"}, uuid="u")
    assert a == Message(b"p", {"k": "v"}, uuid="u")
    assert a != Message(b"p", {"k": "w"}, uuid="u")
    assert a != Message(b"q", {"k": "v"}, uuid="u")
    assert a != Message(b"p", {"k": "v"}, uuid="other")
    assert a.copy() == a
    assert a.copy() is not a


class RecordingAcker:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None]] = []

    async def ack_message(self, message: Message) -> None:
        self.calls.append(("ack", None))

    async def nack_message(self, message: Message, delay: float | None) -> None:
        self.calls.append(("nack", delay))


def received(acker: RecordingAcker) -> Message:
    return Message._received("u", b"p", {}, Delivery("t"), acker)


async def test_ack_is_idempotent_and_final() -> None:
    acker = RecordingAcker()
    msg = received(acker)
    assert await msg.ack() is True
    assert await msg.ack() is True
    assert await msg.nack() is False
    assert msg.acked
    assert not msg.nacked
    assert acker.calls == [("ack", None)]


async def test_nack_is_idempotent_and_final() -> None:
    acker = RecordingAcker()
    msg = received(acker)
    assert await msg.nack(delay=1.5) is True
    assert await msg.nack() is True
    assert await msg.ack() is False
    assert msg.nacked
    assert not msg.acked
    assert acker.calls == [("nack", 1.5)]


@pytest.mark.parametrize("delay", [-1, float("nan"), float("inf"), "1"])
async def test_bad_nack_delay_is_rejected_and_loses_nothing(delay: object) -> None:
    acker = RecordingAcker()
    msg = received(acker)
    with pytest.raises(ValueError, match="delay"):
        await msg.nack(delay=delay)  # type: ignore[arg-type]
    assert not msg.nacked
    assert await msg.ack() is True


async def test_failed_confirmed_ack_can_be_retried() -> None:
    class Failing(RecordingAcker):
        async def ack_message(self, message: Message) -> None:
            raise RuntimeError("server gone")

    msg = received(Failing())
    with pytest.raises(RuntimeError):
        await msg.ack()
    assert not msg.acked


def test_delivery_is_frozen() -> None:
    d = Delivery("t", 2, True, 7)
    with pytest.raises(AttributeError):
        d.attempt = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "metadata",
    [
        {"Nats-Msg-Id": "x"},
        {"nats-expected-stream": "x"},
        {"_watermill_message_uuid": "x"},
        {"a b": "x"},
        {"a:b": "x"},
        {"": "x"},
        {"k": "line\nbreak"},
        {"a/b": "x"},
        {"clé": "x"},
        {"k": " padded"},
        {"k": "padded\t"},
    ],
)
def test_metadata_that_nats_cannot_carry_is_rejected(metadata: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="metadata"):
        validate_metadata(metadata)


def test_plain_metadata_passes() -> None:
    validate_metadata({"correlation_id": "abc", "X-Thing": "a: b"})


@pytest.mark.parametrize("bad", ["a\r\nNats-Msg-Id: x", " edge", "edge ", "\ud800", 1])
def test_a_key_checked_before_does_not_let_a_bad_value_through(bad: object) -> None:
    """Valid keys are remembered (the key checks are skipped next time); the
    value is still checked on every message."""
    validate_metadata({"remembered-key": "fine"})
    with pytest.raises((InvalidMessageError, TypeError)):
        validate_metadata({"remembered-key": bad})  # type: ignore[dict-item]
