"""correlation_id: the input's correlation id is carried to the outputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from piko_trio_events import ConfigError, HandlerFunc, Message
from piko_trio_events.middleware import (
    CORRELATION_ID_KEY,
    correlation_id,
    get_correlation_id,
    set_correlation_id,
)


def test_set_and_get() -> None:
    msg = Message()
    assert get_correlation_id(msg) is None
    set_correlation_id(msg, "req-1")
    assert get_correlation_id(msg) == "req-1"
    assert msg.metadata == {CORRELATION_ID_KEY: "req-1"}


def test_set_does_not_overwrite_an_existing_id() -> None:
    msg = Message(metadata={CORRELATION_ID_KEY: "first"})
    set_correlation_id(msg, "second")
    assert get_correlation_id(msg) == "first"


def test_an_empty_id_counts_as_none() -> None:
    msg = Message(metadata={CORRELATION_ID_KEY: ""})
    assert get_correlation_id(msg) is None
    set_correlation_id(msg, "req-2")
    assert get_correlation_id(msg) == "req-2"


@pytest.mark.parametrize("bad", ["", "a\nb", "a\rb", None, 42])
def test_set_refuses_invalid_ids(bad: Any) -> None:
    msg = Message()
    with pytest.raises(ConfigError, match="correlation_id"):
        set_correlation_id(msg, bad)
    assert msg.metadata == {}


def returning(result: Sequence[Message] | Message | None) -> HandlerFunc:
    async def handler(msg: Message) -> Sequence[Message] | Message | None:
        return result

    return handler


async def test_outputs_without_an_id_get_the_inputs() -> None:
    plain = Message(b"a")
    own = Message(b"b", {CORRELATION_ID_KEY: "theirs"})
    empty = Message(b"c", {CORRELATION_ID_KEY: ""})
    outputs = [plain, own, empty]
    msg = Message(metadata={CORRELATION_ID_KEY: "req-7"})
    result = await correlation_id()(returning(outputs))(msg)
    assert result is outputs
    assert [get_correlation_id(m) for m in outputs] == ["req-7", "theirs", "req-7"]


async def test_a_single_output_message_gets_the_id() -> None:
    out = Message(b"a", {CORRELATION_ID_KEY: ""})
    msg = Message(metadata={CORRELATION_ID_KEY: "req-8"})
    assert await correlation_id()(returning(out))(msg) is out
    assert get_correlation_id(out) == "req-8"


async def test_tuple_outputs_get_the_id() -> None:
    outputs = (Message(b"a"), Message(b"b"))
    msg = Message(metadata={CORRELATION_ID_KEY: "req-9"})
    await correlation_id()(returning(outputs))(msg)
    assert [get_correlation_id(m) for m in outputs] == ["req-9", "req-9"]


async def test_an_input_without_an_id_changes_nothing() -> None:
    out = Message(b"a", {"x": "y"})
    await correlation_id()(returning([out]))(Message())
    assert out.metadata == {"x": "y"}


async def test_no_output_is_passed_through() -> None:
    msg = Message(metadata={CORRELATION_ID_KEY: "req-1"})
    assert await correlation_id()(returning(None))(msg) is None


async def test_handler_errors_propagate() -> None:
    async def handler(msg: Message) -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError):
        await correlation_id()(handler)(Message(metadata={CORRELATION_ID_KEY: "r"}))
