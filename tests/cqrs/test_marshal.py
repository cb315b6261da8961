"""Marshalers: values round-trip; what does not fit raises DecodeError naming it."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from piko_trio_events import Message, PikoEventsError
from piko_trio_events.cqrs import (
    NAME_KEY,
    DecodeError,
    JSONMarshaler,
    Marshaler,
    MsgspecMarshaler,
    PydanticMarshaler,
    values_of,
)

from .types import Colour, Everything, Line, OrderPlaced, Positive, Shipped

EVERYTHING = Everything(
    lines=[Line("a", 2), Line("b")],
    tags=frozenset({"x", "y"}),
    pair=(1, "one"),
    counts={"k": 3},
    colour=Colour.BLUE,
    kind="b",
    at=dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
    day=dt.date(2024, 5, 1),
    ref=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    amount=Decimal("12.50"),
    maybe="text",
)


def test_decode_error_is_a_value_error_of_the_library() -> None:
    assert issubclass(DecodeError, ValueError)
    assert issubclass(DecodeError, PikoEventsError)


def test_json_round_trips_nested_types_and_names_the_type() -> None:
    marshaler = JSONMarshaler()
    message = marshaler.marshal(EVERYTHING)
    assert message.metadata == {NAME_KEY: "Everything"}
    assert marshaler.unmarshal(message, Everything) == EVERYTHING
    assert isinstance(marshaler, Marshaler)


def test_json_payload_is_plain_json() -> None:
    message = JSONMarshaler().marshal(OrderPlaced(1, "ann", 9.5, True))
    assert message.payload == (b'{"id":1,"customer":"ann","total":9.5,"express":true,"note":null}')


def test_typed_dict_takes_its_type_from_the_caller() -> None:
    marshaler = JSONMarshaler()
    value: Shipped = {"order": 1, "carrier": "post"}
    message = marshaler.marshal(value, Shipped)
    assert message.metadata[NAME_KEY] == "Shipped"
    assert marshaler.unmarshal(message, Shipped) == value
    extra = Message(b'{"order": 2, "carrier": "van", "unknown": 1}')
    assert marshaler.unmarshal(extra, Shipped) == {"order": 2, "carrier": "van"}


def test_name_of_replaces_the_naming_rule() -> None:
    marshaler = JSONMarshaler(name_of=lambda cls: f"orders.{cls.__name__}")
    assert marshaler.marshal(Line("a")).metadata[NAME_KEY] == "orders.Line"


@pytest.mark.parametrize(
    ("payload", "cls", "says"),
    [
        (b"{not json", OrderPlaced, "not JSON"),
        (b"\xff\xfe", OrderPlaced, "not JSON"),
        (b"[1, 2]", OrderPlaced, r"expected an object \(OrderPlaced\)"),
        (
            b'{"id": "1", "customer": "a", "total": 1, "express": true}',
            OrderPlaced,
            "id: expected int",
        ),
        (b'{"id": 1, "customer": "a", "total": 1}', OrderPlaced, "express: missing"),
        (
            b'{"id": true, "customer": "a", "total": 1, "express": true}',
            OrderPlaced,
            "id: expected int",
        ),
        (b'{"id": 1, "customer": "a", "total": "x", "express": true}', OrderPlaced, "total"),
        (b'{"sku": "a", "quantity": 1.5}', Line, "quantity: expected int"),
        (b'{"n": 0}', Positive, "n must be > 0"),
        (b'{"order": 1}', Shipped, "carrier: missing"),
        (b'{"order": 1, "carrier": "x", "tracking": 5}', Shipped, "tracking: expected str"),
    ],
)
def test_json_refuses_what_does_not_fit(payload: bytes, cls: Any, says: str) -> None:
    with pytest.raises(DecodeError, match=says):
        JSONMarshaler().unmarshal(Message(payload), cls)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("lines", [{"sku": 1}], r"lines\[0\].sku: expected str"),
        ("colour", "green", "colour: expected a Colour value"),
        ("kind", "c", "kind: expected 'a' or 'b'"),
        ("at", "yesterday", "at: expected datetime"),
        ("pair", [1], "pair: expected an array of 2"),
        ("counts", {"k": "3"}, "counts.k: expected int"),
        ("ref", "nope", "ref: expected UUID"),
        ("maybe", 1.5, "maybe: expected"),
    ],
)
def test_json_names_the_nested_field_that_does_not_fit(field: str, value: Any, says: str) -> None:
    import json

    marshaler = JSONMarshaler()
    good = json.loads(marshaler.marshal(EVERYTHING).payload)
    good[field] = value
    with pytest.raises(DecodeError, match=says):
        marshaler.unmarshal(Message(json.dumps(good).encode()), Everything)


def test_json_refuses_types_it_cannot_decode_when_checked() -> None:
    with pytest.raises(TypeError, match="cannot decode"):
        JSONMarshaler().check(bytes)
    with pytest.raises(TypeError, match="keys are strings"):
        JSONMarshaler().check(dict[int, str])


def test_json_refuses_nan() -> None:
    with pytest.raises(ValueError, match="cannot encode"):
        JSONMarshaler().marshal(OrderPlaced(1, "a", float("nan"), True))


def test_json_refuses_a_value_that_contains_itself() -> None:
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(ValueError, match="contains itself"):
        JSONMarshaler().marshal(looped, list[Any])


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200)
@given(value=_JSON)
def test_json_writes_what_the_standard_encoder_writes(value: Any) -> None:
    """The marshaler's encoder, built once, writes the standard one's text."""
    standard = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    assert JSONMarshaler().marshal(value, Any).payload == standard


@pytest.mark.parametrize(
    "payload",
    [b'\xef\xbb\xbf{"x": 1}', '{"x": 1}'.encode("utf-16"), b' {"x": 1} '],
    ids=["utf-8 with BOM", "utf-16", "spaces"],
)
def test_json_reads_what_json_loads_reads(payload: bytes) -> None:
    assert JSONMarshaler().unmarshal(Message(payload), dict[str, int]) == {"x": 1}


@settings(max_examples=60)
@given(value=values_of(Everything))
def test_every_drawn_value_round_trips_through_json(value: Everything) -> None:
    marshaler = JSONMarshaler()
    assert marshaler.unmarshal(marshaler.marshal(value), Everything) == value


@settings(max_examples=30)
@given(value=values_of(Shipped))
def test_drawn_typed_dicts_round_trip(value: Shipped) -> None:
    marshaler = JSONMarshaler()
    assert marshaler.unmarshal(marshaler.marshal(value, Shipped), Shipped) == value


MARSHALERS = [
    pytest.param("msgspec", id="msgspec"),
    pytest.param("pydantic", id="pydantic"),
]


def _extra(kind: str) -> Marshaler:
    pytest.importorskip(kind)
    return MsgspecMarshaler() if kind == "msgspec" else PydanticMarshaler()


@pytest.mark.parametrize("kind", MARSHALERS)
def test_optional_marshalers_round_trip_and_refuse_bad_payloads(kind: str) -> None:
    marshaler = _extra(kind)
    value = OrderPlaced(1, "ann", 9.5, True, "gift")
    message = marshaler.marshal(value)
    assert message.metadata == {NAME_KEY: "OrderPlaced"}
    assert marshaler.unmarshal(message, OrderPlaced) == value
    with pytest.raises(DecodeError, match="not a OrderPlaced"):
        marshaler.unmarshal(Message(b'{"id": "x"}'), OrderPlaced)
    with pytest.raises(DecodeError):
        marshaler.unmarshal(Message(b"{not json"), OrderPlaced)


@pytest.mark.parametrize("kind", MARSHALERS)
def test_optional_marshalers_read_what_json_wrote(kind: str) -> None:
    marshaler = _extra(kind)
    message = JSONMarshaler().marshal(OrderPlaced(2, "bo", 1.0, False))
    assert marshaler.unmarshal(message, OrderPlaced) == OrderPlaced(2, "bo", 1.0, False)


def test_importing_cqrs_loads_no_optional_library() -> None:
    code = (
        "import sys, piko_trio_events.cqrs;"
        "print(','.join(m for m in ('msgspec', 'pydantic', 'hypothesis', 'nats', 'asyncio')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
