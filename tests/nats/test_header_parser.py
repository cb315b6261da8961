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

from piko_trio_events.nats._wire import _parse_header_lines, _raw_metadata

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
