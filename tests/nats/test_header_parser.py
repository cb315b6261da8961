"""The fast path's header parser reads every block as nats-py's public path does.

On the fast path the provider parses raw header blocks itself
(``_wire._parse_header_lines``); on the public path nats-py does
(``Client._parse_header_lines``). The same bytes must give the same
metadata either way, whatever another client wrote.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from nats.aio.client import Client

from piko_trio_events.nats._wire import _metadata_of, _parse_header_lines, _raw_metadata

# Bytes that matter to the parser, and a few that do not.
_PIECES = st.sampled_from(
    [b":", b": ", b" ", b"\t", b"\x0b", b"\x1f", b"\xc3\xa9", b"\xff", b"a", b"Z", b"-", b"_", b"9"]
)
_LINE = st.lists(_PIECES | st.binary(max_size=4), max_size=8).map(b"".join)
_TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcxyzABCXYZ"
_NAME = st.text(alphabet=_TOKEN_CHARS, min_size=1, max_size=12).map(str.encode)
_VALUE = st.text(max_size=12).map(lambda v: v.encode("utf-8", "surrogatepass"))


@given(st.lists(_LINE, max_size=6))
@example([b"Name:Value", b"  spaced : x ", b"bad name: y", b"\xff: z", b": empty name"])
@example([b"k: 1", b"k: 2", b"no colon", b""])
def test_any_block_parses_as_nats_py_parses_it(lines: list[bytes]) -> None:
    block = b"\r\n".join(lines) + b"\r\n\r\n"
    assert _parse_header_lines(block) == Client._parse_header_lines(block)


@given(st.lists(st.tuples(_NAME, _VALUE), max_size=6))
def test_token_names_parse_as_nats_py_parses_them(pairs: list[tuple[bytes, bytes]]) -> None:
    block = b"".join(name + b": " + value + b"\r\n" for name, value in pairs) + b"\r\n"
    assert _parse_header_lines(block) == Client._parse_header_lines(block)


def test_a_block_with_metadata_gives_uuid_and_metadata() -> None:
    block = b"NATS/1.0\r\n_watermill_message_uuid: u-1\r\nname: Order\r\nNats-Msg-Id: u-1\r\n\r\n"
    assert _raw_metadata(block) == ("u-1", {"name": "Order"})


@given(st.text(min_size=1, max_size=8).filter(str.strip), st.lists(_LINE, max_size=5))
@example("u-1", [b"_watermill_message_uuid: u-2", b"k: v"])
@example("u-1", [b"_watermill_message_uuid:", b"Nats-Msg-Id: u-1"])
def test_a_block_that_starts_with_the_uuid_reads_as_a_full_parse(
    uuid: str, lines: list[bytes]
) -> None:
    """The uuid line sliced and the rest parsed: what parsing every line gives."""
    rest = b"".join(line + b"\r\n" for line in lines)
    block = b"NATS/1.0\r\n_watermill_message_uuid: " + uuid.encode() + b"\r\n" + rest + b"\r\n"
    got_uuid, got = _raw_metadata(block)
    parsed = Client._parse_header_lines(block[len(b"NATS/1.0\r\n") :])
    given = parsed.get("_watermill_message_uuid")
    assert got == _metadata_of(parsed)[1]
    if given:
        assert got_uuid == given
    else:  # none (or an empty one) in the block: a fresh one
        assert got_uuid
        assert got_uuid != uuid
