"""The public-API fallback of the core publish fast path."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from piko_trio_events import Message
from piko_trio_events.nats._wire import _decode_command, _encode
from piko_trio_events.testing import metadata, topics


@given(
    topic=topics(),
    payload=st.binary(max_size=64),
    meta=metadata(),
    track=st.booleans(),
    reply=st.sampled_from([b"", b"_INBOX.x.1"]),
)
def test_decode_inverts_encode(
    topic: str, payload: bytes, meta: dict[str, str], track: bool, reply: bytes
) -> None:
    msg = Message(payload, meta)
    prefix = b"HPUB " + topic.encode() + b" " + (reply + b" " if reply else b"")
    subject, decoded_reply, headers, body = _decode_command(_encode(prefix, msg, track))
    assert (subject, decoded_reply, body) == (topic, reply.decode(), payload)
    expected = {"_watermill_message_uuid": msg.uuid, **meta}
    if track:
        expected["Nats-Msg-Id"] = msg.uuid
    assert headers == expected


def test_decode_plain_pub() -> None:
    assert _decode_command(b"PUB a.b _INBOX.r 4\r\n+ACK\r\n") == ("a.b", "_INBOX.r", None, b"+ACK")
