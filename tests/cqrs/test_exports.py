"""piko_trio_events.cqrs exports the API.md names of its section, each once."""

from __future__ import annotations

import piko_trio_events
import piko_trio_events.cqrs as cqrs

CONTRACT = {
    "EventBus",
    "CommandBus",
    "JSONMarshaler",
    "DecodeError",
    "RequestError",
    "NoResponderError",
}
EXTRA = {
    "Marshaler",
    "MsgspecMarshaler",
    "PydanticMarshaler",
    "NAME_KEY",
    "default_topic",
    "type_name",
    "values_of",
}


def test_all_matches_the_contract() -> None:
    exported = set(cqrs.__all__)
    assert exported >= CONTRACT, f"missing: {CONTRACT - exported}"
    assert exported - CONTRACT <= EXTRA, f"unexpected: {exported - CONTRACT - EXTRA}"
    assert len(cqrs.__all__) == len(exported)
    for name in cqrs.__all__:
        assert getattr(cqrs, name) is not None


def test_the_errors_are_the_packages() -> None:
    for name in ("DecodeError", "RequestError", "NoResponderError"):
        assert getattr(cqrs, name) is getattr(piko_trio_events, name)
