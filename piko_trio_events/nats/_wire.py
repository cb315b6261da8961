"""The NATS wire format of messages: PUB/HPUB commands built here, headers read back.

The uuid travels in header ``_watermill_message_uuid`` (Watermill's NATS
adapter), the metadata as headers, ``Nats-Msg-Id`` with ``track_message_id``.
"""

from __future__ import annotations

import json
import re
from typing import Final

from .._errors import InvalidMessageError
from .._message import _HEADER_KEY, UUID_HEADER, Message, checked_payload
from .._uuid import new_uuid


def _check_message(msg: object) -> None:
    if not isinstance(msg, Message):
        raise TypeError(f"publish() takes Message objects, not {type(msg).__name__}")


_UUID_LINE: Final = b"NATS/1.0\r\n" + UUID_HEADER.encode() + b": "


def _encode(prefix: bytes, msg: Message, track_id: bool | bytes, limit: int = 1024 * 1024) -> bytes:
    """The HPUB command for ``msg`` (``prefix`` is ``b"HPUB <subject> "``).

    The same bytes nats-py's ``publish(subject, payload, headers=...)``
    writes, built in one go: the uuid in ``_watermill_message_uuid``, the
    metadata as headers, and with ``track_id`` a ``Nats-Msg-Id``: the uuid,
    after ``track_id`` itself when it is bytes (a topic qualifier).

    The caller has checked the metadata (``validate_metadata``). Raises
    InvalidMessageError when headers and payload together exceed ``limit`` (the
    server's max_payload: it would close the connection, and nats-py the
    client, for good), TypeError when the payload is not bytes-like.
    """
    uuid = msg.uuid.encode()
    metadata = msg.metadata
    if metadata or track_id:
        parts = [_UUID_LINE, uuid, b"\r\n"]
        for key, value in metadata.items():
            parts += (key.encode(), b": ", value.encode(), b"\r\n")
        if track_id:
            qualifier = track_id if type(track_id) is bytes else b""
            parts += (b"Nats-Msg-Id: ", qualifier, uuid, b"\r\n")
        parts.append(b"\r\n")
        header = b"".join(parts)
    else:
        header = _UUID_LINE + uuid + b"\r\n\r\n"
    payload = msg.payload
    if type(payload) is not bytes:  # replaced after construction
        payload = msg.payload = checked_payload(payload)
    size = len(header)
    total = size + len(payload)
    if total > limit:
        raise InvalidMessageError(
            f"message {msg.uuid!r} exceeds the server's limit of {limit} bytes (max_payload): "
            f"{len(payload)} bytes of payload and {size} of headers"
        )
    return b"%b%d %d\r\n%b%b\r\n" % (prefix, size, total, header, payload)


def _decode_command(command: bytes) -> tuple[str, str, dict[str, str] | None, bytes]:
    """(subject, reply, headers, payload) of a PUB / HPUB command built here."""
    line, _, body = command.partition(b"\r\n")
    words = line.split(b" ")
    body = body[:-2]  # the closing CRLF
    if words[0] == b"PUB":
        reply = words[2].decode() if len(words) == 4 else ""
        return words[1].decode(), reply, None, body
    reply = words[2].decode() if len(words) == 5 else ""
    header_size = int(words[-2])
    headers: dict[str, str] = {}
    for header_line in body[:header_size].split(b"\r\n")[1:]:
        if header_line:
            key, _, value = header_line.partition(b": ")
            headers[key.decode()] = value.decode()
    return words[1].decode(), reply, headers, body[header_size:]


def _raw_metadata(headers: bytes | None) -> tuple[str, dict[str, str]]:
    """The uuid and the user metadata of a raw header block (fast path).

    The block this library writes for a message without metadata (the uuid
    alone) is sliced, not parsed; any other goes through nats-py's parser.
    """
    if not headers:
        return new_uuid(), {}
    start = len(_UUID_LINE)
    if headers.startswith(_UUID_LINE):
        end = headers.find(b"\r\n", start)
        uuid = headers[start:end].strip().decode("utf-8", "replace")
        if end == len(headers) - 4:
            return uuid or new_uuid(), {}
        if end > 0:  # the uuid line sliced, the metadata after it parsed
            parsed = _parse_header_lines(headers[end + 2 :])
            later = parsed.pop(UUID_HEADER, None)  # (a later line wins, as in a parse)
            return (uuid if later is None else later) or new_uuid(), _without_nats(parsed)
    first = headers.find(b"\r\n")
    parsed = _parse_header_lines(headers[first + 2 :]) if first >= 0 else {}
    return _metadata_of(parsed)


#: A header name made of token characters only (what ``validate_metadata``
#: lets through, and so what this library writes), as bytes.
_TOKEN: Final = re.compile(_HEADER_KEY.pattern.encode())


def _parse_header_lines(block: bytes) -> dict[str, str]:
    """The ``Name: Value`` lines of a header block (after ``NATS/1.0``),
    parsed exactly as nats-py's ``Client._parse_header_lines`` parses them
    on the public path (``tests/nats/test_header_parser.py`` checks it
    against nats-py's): a name with whitespace or non-ASCII bytes is
    skipped, values are stripped of ASCII whitespace and decoded as UTF-8
    with replacement, a later line wins. A name of token characters, the
    common case, is taken without the character-by-character check.
    """
    out: dict[str, str] = {}
    token = _TOKEN.fullmatch
    for line in block.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        if token(name) is not None:
            key = name.decode()
        else:
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue
            if any(c.isspace() for c in key):
                continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


def _metadata_of(headers: dict[str, str] | None) -> tuple[str, dict[str, str]]:
    """The uuid and the user metadata of received headers (consumes ``headers``)."""
    if not headers:
        return new_uuid(), {}
    uuid = headers.pop(UUID_HEADER, None) or new_uuid()
    return uuid, _without_nats(headers)


def _without_nats(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` without the ``Nats-`` ones (the server's and the client's own)."""
    if headers:
        for key in [k for k in headers if k[:5].lower() == "nats-"]:
            del headers[key]
    return headers


def _nak(delay: float | None) -> bytes:
    if not delay:
        return b"-NAK"
    return b"-NAK " + json.dumps({"delay": int(delay * 1e9)}).encode()
