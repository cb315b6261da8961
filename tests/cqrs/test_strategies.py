"""values_of: values of a handler's type, that the JSON marshaler carries unchanged."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from piko_trio_events.cqrs import JSONMarshaler, values_of

from .types import ChargeCard, Everything, OrderPlaced, Shipped


async def on_order(event: OrderPlaced) -> None: ...


@settings(max_examples=40)
@given(event=values_of(on_order))
def test_a_handlers_parameter_type_is_drawn(event: OrderPlaced) -> None:
    assert type(event) is OrderPlaced
    marshaler = JSONMarshaler()
    assert marshaler.unmarshal(marshaler.marshal(event), OrderPlaced) == event


@settings(max_examples=40)
@given(data=st.data())
def test_drawn_values_fit_their_type(data: st.DataObject) -> None:
    for cls in (Everything, ChargeCard, Shipped):
        value: Any = data.draw(values_of(cls))
        if dataclasses.is_dataclass(cls):
            assert type(value) is cls
        else:
            assert set(value) >= {"order", "carrier"}


def test_types_it_does_not_know_come_from_from_type() -> None:
    class Opaque:
        pass

    assert repr(values_of(Opaque)) == repr(st.from_type(Opaque))
