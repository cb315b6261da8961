"""Hypothesis strategies of typed messages: values a handler can be given.

This module imports hypothesis; :mod:`piko_trio_events.cqrs` loads it only
when :func:`values_of` is first used.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import strategies as st

__all__ = ["values_of"]

#: Text a message can carry: any Unicode but lone surrogates (no UTF-8 form).
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)


def values_of(handler_or_type: Any) -> st.SearchStrategy[Any]:
    """Values of a typed handler's parameter type (or of a type), for hypothesis.

    Dataclasses, TypedDicts, enums, literals, unions and containers are drawn
    field by field, with values the JSON marshaler carries unchanged (finite
    floats, text without lone surrogates, short containers); other types come
    from ``hypothesis.strategies.from_type``::

        @given(event=values_of(on_order_placed))
        async def test_on_order_placed_never_crashes(event): ...
    """
    tp = handler_or_type
    if inspect.isfunction(tp) or inspect.ismethod(tp):
        from ._bus import _signature

        tp = _signature(tp)[0]
    return _strategy(tp)


def _strategy(tp: Any) -> st.SearchStrategy[Any]:
    if tp is Any or tp is object:
        return st.none() | st.booleans() | st.integers() | _TEXT
    if tp is None or tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers()
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is str:
        return _TEXT
    if tp is decimal.Decimal:
        return st.decimals(allow_nan=False, allow_infinity=False)
    if tp is dt.datetime:
        return st.datetimes(timezones=st.none() | st.just(dt.UTC))
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _strategy(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return st.one_of([_strategy(a) for a in args])
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (list, Sequence):
        return st.lists(_strategy(args[0]), max_size=4)
    if origin in (set, frozenset):
        return st.frozensets(_strategy(args[0]), max_size=4).map(origin)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(_strategy(args[0]), max_size=4).map(tuple)
        return st.tuples(*(_strategy(a) for a in args))
    if origin in (dict, Mapping):
        return st.dictionaries(_TEXT, _strategy(args[1]), max_size=4)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        fields = {
            f.name: _strategy(hints.get(f.name, Any)) for f in dataclasses.fields(tp) if f.init
        }
        return st.builds(tp, **fields)
    if typing.is_typeddict(tp):
        from ._marshal import _strip_required

        hints = typing.get_type_hints(tp, include_extras=True)
        optional = set(getattr(tp, "__optional_keys__", ()))
        for key, hint in hints.items():
            if typing.get_origin(hint) is typing.NotRequired:
                optional.add(key)
            elif typing.get_origin(hint) is typing.Required:
                optional.discard(key)
        return st.fixed_dictionaries(
            {k: _strategy(_strip_required(h)) for k, h in hints.items() if k not in optional},
            optional={k: _strategy(_strip_required(h)) for k, h in hints.items() if k in optional},
        )
    return st.from_type(tp)
