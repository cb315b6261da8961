"""Marshalers: typed values to messages and back, the type's name in ``name``.

A marshaler turns a value into a :class:`~piko_trio_events.Message` (the
payload its bytes, metadata ``name`` its type's name, as Watermill's cqrs
marshalers do) and a message back into a value of a given type, raising
:class:`~piko_trio_events.DecodeError` when the payload is not one.

:class:`JSONMarshaler` needs the standard library alone (dataclasses,
TypedDicts, enums, datetimes and plain JSON types). :class:`MsgspecMarshaler`
and :class:`PydanticMarshaler` import their library when first built.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import keyword
import types
import typing
import uuid as uuid_module
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

from .._errors import DecodeError, InvalidMessageError
from .._message import Message

__all__ = [
    "NAME_KEY",
    "JSONMarshaler",
    "Marshaler",
    "MsgspecMarshaler",
    "PydanticMarshaler",
    "type_name",
]

T = TypeVar("T")

#: The metadata key that carries the type's name (Watermill cqrs's).
NAME_KEY: Final = "name"


def type_name(cls: Any) -> str:
    """The default name of a type: a class's ``__name__`` (Watermill's
    ``StructName``: what a Go service names the same struct), else its repr
    (``list[int]``)."""
    if isinstance(cls, type):
        return cls.__name__
    return repr(cls).replace("typing.", "")


@runtime_checkable
class Marshaler(Protocol):
    """Turns typed values into messages and back."""

    def name(self, cls: Any) -> str:
        """The name of ``cls``, carried in metadata ``name``."""
        ...

    def check(self, cls: Any) -> None:
        """Raise TypeError at once if values of ``cls`` cannot be (un)marshaled."""
        ...

    def marshal(self, value: object, cls: Any = None) -> Message:
        """A message of ``value`` (of type ``cls``, by default ``type(value)``):
        its bytes as payload, the type's name in metadata ``name``."""
        ...

    def unmarshal(self, message: Message, cls: Any) -> Any:
        """The value of type ``cls`` that ``message``'s payload holds
        (DecodeError if none). The ``name`` is checked by the caller."""
        ...


class _Named:
    """What every built-in marshaler shares: the naming rule."""

    def __init__(self, name_of: Callable[[Any], str] | None = None) -> None:
        if name_of is not None and not callable(name_of):
            raise TypeError(f"name_of must be callable, not {name_of!r}")
        self._name_of = type_name if name_of is None else name_of
        self._names: dict[Any, str] = {}

    def name(self, cls: Any) -> str:
        try:
            return self._names[cls]
        except KeyError:
            name = self._name_of(cls)
            if not isinstance(name, str) or not name:
                raise TypeError(
                    f"name_of({cls!r}) returned {name!r}, not a non-empty str"
                ) from None
            self._names[cls] = name
            return name
        except TypeError:  # unhashable (an odd annotation): not cached
            return self._name_of(cls)

    def _message(self, payload: bytes, cls: Any) -> Message:
        message = Message(payload)
        message.metadata[NAME_KEY] = self.name(cls)
        return message


# -- JSON on the standard library ----------------------------------------------------------


_MISSING: Final = object()


class _Invalid(Exception):
    """A JSON value that is not of the expected type (``path``: where in it)."""

    def __init__(self, path: str, expected: str, got: object = _MISSING) -> None:
        if got is _MISSING:
            super().__init__(f"{path}: missing ({expected} required)")
            return
        shown = repr(got)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        super().__init__(f"{path or 'the value'}: expected {expected}, got {shown}")


Convert = Callable[[Any, str], Any]

_PRIMITIVES: Final[dict[Any, tuple[type, ...]]] = {
    str: (str,),
    int: (int,),
    bool: (bool,),
    float: (float, int),
}


def _default(value: Any) -> Any:
    """What ``json`` cannot encode itself, as JSON types (the encoder's ``default``)."""
    cls = type(value)
    as_dict = _AS_DICT.get(cls)
    if as_dict is not None:
        return as_dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        as_dict = _AS_DICT[cls] = _dict_maker(cls)
        return as_dict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid_module.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"values of type {cls.__name__} are not JSON serializable")


#: A dataclass -> a function giving the dict of its fields (generated code:
#: one dict display, no getattr call per field).
_AS_DICT: dict[type, Callable[[Any], dict[str, Any]]] = {}


def _dict_maker(cls: type) -> Callable[[Any], dict[str, Any]]:
    names = [f.name for f in dataclasses.fields(cls)]
    if not all(name.isidentifier() and not keyword.iskeyword(name) for name in names):
        # (make_dataclass takes any string)
        return lambda value: {name: getattr(value, name) for name in names}
    # Only field names (identifiers) go into the code.
    items = ", ".join(f"{name!r}: value.{name}" for name in names)
    namespace: dict[str, Any] = {}
    exec(f"def as_dict(value):\n    return {{{items}}}", namespace)
    maker: Callable[[Any], dict[str, Any]] = namespace["as_dict"]
    return maker


def _one_encoder(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """``encoder.encode``, without building the C encoder again for every
    value as ``encode`` does (a good part of a small message's cost).

    The C encoder, built once with the encoder's settings, is used when the
    interpreter has one that takes them and gives the same text; else
    ``encoder.encode``. It does not look for cycles: a value that contains
    itself raises RecursionError instead of ValueError.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None or encoder.indent is not None:  # pragma: no cover - no _json
        return encoder.encode
    try:
        built = make(
            None,
            encoder.default,
            json.encoder.encode_basestring_ascii
            if encoder.ensure_ascii
            else json.encoder.encode_basestring,
            encoder.indent,
            encoder.key_separator,
            encoder.item_separator,
            encoder.sort_keys,
            encoder.skipkeys,
            encoder.allow_nan,
        )
    except TypeError:  # pragma: no cover - another interpreter's signature
        return encoder.encode
    join = "".join

    def encode(value: Any) -> str:
        if type(value) is str:  # (the C encoder wants a container or a scalar)
            return encoder.encode(value)
        return join(built(value, 0))

    sample = {"a": [1, 2.5, None, True, "é\n"], "b": {"c": "d"}}
    try:
        same = encode(sample) == encoder.encode(sample)
    except Exception:  # pragma: no cover - a C encoder that works otherwise
        same = False
    return encode if same else encoder.encode


class JSONMarshaler(_Named):
    """JSON on the standard library: dataclasses, TypedDicts, plain JSON types.

    Supported types: ``str``, ``int``, ``float``, ``bool``, ``None``, lists,
    tuples, sets and ``dict[str, X]`` of them, unions and ``Optional``,
    ``Literal``, enums (by value), ``datetime`` / ``date`` / ``time``
    (ISO 8601), ``UUID`` and ``Decimal`` (strings), dataclasses and
    TypedDicts of them, ``Any``. Decoding checks every value against its
    annotation and raises :class:`~piko_trio_events.DecodeError` naming the
    first that does not fit; keys a dataclass or TypedDict does not declare
    are ignored (an older reader of a newer writer), missing required ones
    are an error. Floats must be finite (JSON has no NaN).

    Args:
        name_of: the type -> name rule (default: the class's ``__name__``).
    """

    def __init__(self, name_of: Callable[[Any], str] | None = None) -> None:
        super().__init__(name_of)
        encoder = json.JSONEncoder(
            default=_default, separators=(",", ":"), allow_nan=False, ensure_ascii=False
        )
        self._encode = _one_encoder(encoder)
        self._decode = json.JSONDecoder().decode
        self._converters: dict[Any, Convert] = {}

    def check(self, cls: Any) -> None:
        self._converter(cls)

    def marshal(self, value: object, cls: Any = None) -> Message:
        as_dict = _AS_DICT.get(type(value))
        try:
            # (a known dataclass made a dict here: no call back from the encoder)
            payload = self._encode(value if as_dict is None else as_dict(value)).encode()
        except ValueError as exc:  # NaN or infinity
            raise InvalidMessageError(
                f"cannot encode {type(value).__name__} as JSON: {exc}"
            ) from None
        except RecursionError:
            raise InvalidMessageError(
                f"cannot encode {type(value).__name__} as JSON: it contains itself"
            ) from None
        return self._message(payload, type(value) if cls is None else cls)

    def unmarshal(self, message: Message, cls: Any) -> Any:
        convert = self._converters.get(cls)
        if convert is None:
            convert = self._converter(cls)
        payload = message.payload
        try:
            # UTF-8, as JSON between systems is (RFC 8259); anything else, a
            # byte-order mark or an error goes through json.loads, which
            # detects UTF-16/32 and words the error.
            value = self._decode(payload.decode())
        except ValueError:  # (UnicodeDecodeError is one too)
            try:
                value = json.loads(payload)
            except ValueError as exc:
                raise DecodeError(f"the payload is not JSON: {exc}") from None
        try:
            return convert(value, "")
        except _Invalid as exc:
            raise DecodeError(f"not a {type_name(cls)}: {exc}") from None

    def _converter(self, cls: Any) -> Convert:
        try:
            return self._converters[cls]
        except KeyError:
            convert = self._converters[cls] = _compile(cls, {})
            return convert


def _compile(tp: Any, building: dict[Any, Convert]) -> Convert:
    """A function that checks a JSON value against ``tp`` and converts it."""
    if tp in building:  # a recursive type: resolved once its converter exists
        return lambda value, path: building[tp](value, path)
    if tp is Any or tp is object:
        return lambda value, path: value
    if tp is None or tp is type(None):

        def convert_none(value: Any, path: str) -> None:
            if value is not None:
                raise _Invalid(path, "null", value)

        return convert_none
    primitive = _PRIMITIVES.get(tp)
    if primitive is not None:
        return _primitive(tp, primitive)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _compile(args[0], building)
    if origin is typing.Union or origin is types.UnionType:
        return _union([_compile(a, building) for a in args], tp)
    if origin is typing.Literal:
        return _literal(args)
    if origin in (list, Sequence, set, frozenset) or tp in (list, set, frozenset):
        item = _compile(args[0] if args else Any, building)
        make: Callable[[list[Any]], Any] = (
            list if origin in (list, Sequence) or tp is list else (origin or tp)
        )
        return _sequence(item, make, type_name(tp))
    if origin is tuple or tp is tuple:
        return _tuple(args, building)
    if origin in (dict, Mapping) or tp is dict:
        if args and args[0] is not str:
            raise TypeError(f"JSON object keys are strings: cannot decode {tp!r}")
        return _mapping(_compile(args[1] if args else Any, building))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum(tp)
    if tp in (dt.datetime, dt.date, dt.time, uuid_module.UUID):
        return _parsed(tp, tp.fromisoformat if tp is not uuid_module.UUID else tp)
    if tp is decimal.Decimal:
        return _decimal
    supertype = getattr(tp, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return _compile(supertype, building)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp, building)
    if typing.is_typeddict(tp):
        return _typeddict(tp, building)
    raise TypeError(f"JSONMarshaler cannot decode values of type {tp!r}")


def _primitive(tp: type, allowed: tuple[type, ...]) -> Convert:
    expected = tp.__name__
    if tp is float:

        def convert_float(value: Any, path: str) -> float:
            if type(value) is float:
                return value
            if type(value) is int:
                return float(value)
            raise _Invalid(path, "float", value)

        return convert_float
    single = allowed[0]

    def convert(value: Any, path: str) -> Any:
        if type(value) is not single:
            raise _Invalid(path, expected, value)
        return value

    return convert


def _union(options: list[Convert], tp: Any) -> Convert:
    expected = type_name(tp)

    def convert(value: Any, path: str) -> Any:
        for option in options:
            try:
                return option(value, path)
            except _Invalid:
                continue
        raise _Invalid(path, expected, value)

    return convert


def _literal(values: tuple[Any, ...]) -> Convert:
    allowed = [(type(v), v) for v in values]
    expected = " or ".join(repr(v) for v in values)

    def convert(value: Any, path: str) -> Any:
        if (type(value), value) in allowed:
            return value
        raise _Invalid(path, expected, value)

    return convert


def _sequence(item: Convert, make: Callable[[list[Any]], Any], expected: str) -> Convert:
    def convert(value: Any, path: str) -> Any:
        if type(value) is not list:
            raise _Invalid(path, expected, value)
        return make([item(v, f"{path}[{i}]") for i, v in enumerate(value)])

    return convert


def _tuple(args: tuple[Any, ...], building: dict[Any, Convert]) -> Convert:
    if not args or (len(args) == 2 and args[1] is Ellipsis):
        item = _compile(args[0] if args else Any, building)
        return _sequence(item, tuple, "tuple")
    items = [_compile(a, building) for a in args]
    size = len(items)

    def convert(value: Any, path: str) -> Any:
        if type(value) is not list or len(value) != size:
            raise _Invalid(path, f"an array of {size}", value)
        return tuple(
            f(v, f"{path}[{i}]") for i, (f, v) in enumerate(zip(items, value, strict=True))
        )

    return convert


def _mapping(item: Convert) -> Convert:
    def convert(value: Any, path: str) -> Any:
        if type(value) is not dict:
            raise _Invalid(path, "an object", value)
        return {k: item(v, f"{path}.{k}" if path else k) for k, v in value.items()}

    return convert


def _enum(cls: type[enum.Enum]) -> Convert:
    def convert(value: Any, path: str) -> Any:
        try:
            return cls(value)
        except ValueError:
            raise _Invalid(path, f"a {cls.__name__} value", value) from None

    return convert


def _parsed(tp: type, parse: Callable[[str], Any]) -> Convert:
    def convert(value: Any, path: str) -> Any:
        if type(value) is not str:
            raise _Invalid(path, tp.__name__, value)
        try:
            return parse(value)
        except ValueError:
            raise _Invalid(path, tp.__name__, value) from None

    return convert


def _decimal(value: Any, path: str) -> decimal.Decimal:
    if type(value) in (str, int, float):
        try:
            return decimal.Decimal(value)
        except decimal.InvalidOperation:
            pass
    raise _Invalid(path, "Decimal", value)


def _hints(cls: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception as exc:  # a NameError, mostly: a forward reference
        raise TypeError(f"cannot resolve the annotations of {cls!r}: {exc}") from exc


def _dataclass(cls: type, building: dict[Any, Convert]) -> Convert:
    """Generated straight-line code per dataclass (what cattrs does): a
    primitive field costs a type check, not a call."""
    hints = _hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    namespace: dict[str, Any] = {"cls": cls, "_Invalid": _Invalid, "_missing": _MISSING}
    building[cls] = lambda value, path: converter(value, path)
    lines = [
        "def convert(value, path):",
        "    if type(value) is not dict:",
        f"        raise _Invalid(path, {'an object (' + cls.__name__ + ')'!r}, value)",
        "    get = value.get",
    ]
    call = []
    for i, field in enumerate(fields):
        tp = hints.get(field.name, Any)
        required = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        key = repr(field.name)
        var = f"v{i}"
        where = f"(path + '.' + {key} if path else {key})"
        lines.append(f"    {var} = get({key}, _missing)")
        lines.append(f"    if {var} is _missing:")
        if required:
            lines.append(f"        raise _Invalid({where}, {type_name(tp)!r})")
        else:
            lines.append("        pass")
        primitive = _PRIMITIVES.get(tp)
        if tp in (str, int, bool):
            lines.append(f"    elif type({var}) is not {tp.__name__}:")
            lines.append(f"        raise _Invalid({where}, {tp.__name__!r}, {var})")
        elif primitive is not None:  # float: an int is one too
            lines.append(f"    elif type({var}) is int:")
            lines.append(f"        {var} = float({var})")
            lines.append(f"    elif type({var}) is not float:")
            lines.append(f"        raise _Invalid({where}, 'float', {var})")
        elif tp is not Any and tp is not object:
            namespace[f"c{i}"] = _compile(tp, building)
            lines.append("    else:")
            lines.append(f"        {var} = c{i}({var}, {where})")
        call.append((field.name, var, required))
    lines.append("    try:")
    if all(req for _, _, req in call):  # every field given: one call, keywords inline
        arguments = ", ".join(f"{name}={var}" for name, var, _ in call)
        lines.append(f"        return cls({arguments})")
    else:
        given = ", ".join(f"{name!r}: {var}" for name, var, req in call if req)
        lines.append(f"        kwargs = {{{given}}}")
        for name, var, req in call:
            if not req:
                lines.append(f"        if {var} is not _missing:")
                lines.append(f"            kwargs[{name!r}] = {var}")
        lines.append("        return cls(**kwargs)")
    lines.append("    except (TypeError, ValueError) as exc:  # its __post_init__ refused")
    lines.append(f"        raise _Invalid(path, {cls.__name__!r}, str(exc)) from None")
    # Only field names (identifiers, written with repr) go into the code.
    exec("\n".join(lines), namespace)
    converter: Convert = namespace["convert"]
    building[cls] = converter
    return converter


def _typeddict(cls: Any, building: dict[Any, Convert]) -> Convert:
    hints = _hints(cls)
    required = set(getattr(cls, "__required_keys__", hints))
    for key, tp in hints.items():  # (string annotations hide these from __required_keys__)
        if typing.get_origin(tp) is typing.NotRequired:
            required.discard(key)
        elif typing.get_origin(tp) is typing.Required:
            required.add(key)
    keys = [
        (key, _compile(_strip_required(tp), building), key in required) for key, tp in hints.items()
    ]

    def convert(value: Any, path: str) -> Any:
        if type(value) is not dict:
            raise _Invalid(path, f"an object ({cls.__name__})", value)
        result = {}
        for key, item, needed in keys:
            where = f"{path}.{key}" if path else key
            if key in value:
                result[key] = item(value[key], where)
            elif needed:
                raise _Invalid(where, type_name(_strip_required(hints[key])))
        return result

    return convert


_KEY_QUALIFIERS: Final = tuple(
    q for q in (getattr(typing, n, None) for n in ("Required", "NotRequired", "ReadOnly")) if q
)


def _strip_required(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in _KEY_QUALIFIERS:
        return typing.get_args(tp)[0]
    return tp


# -- optional extras -----------------------------------------------------------------------


class MsgspecMarshaler(_Named):
    """JSON through `msgspec <https://jcristharif.com/msgspec/>`_ (``pip install msgspec``).

    Every type msgspec decodes (``msgspec.Struct``, dataclasses, TypedDicts,
    ...), validated by msgspec; a payload that does not fit raises
    :class:`~piko_trio_events.DecodeError`. msgspec is imported here, when
    the marshaler is built.
    """

    def __init__(self, name_of: Callable[[Any], str] | None = None) -> None:
        super().__init__(name_of)
        import msgspec

        self._msgspec = msgspec
        self._encoder = msgspec.json.Encoder()
        self._decoders: dict[Any, Any] = {}

    def _decoder(self, cls: Any) -> Any:
        decoder = self._decoders.get(cls)
        if decoder is None:
            decoder = self._decoders[cls] = self._msgspec.json.Decoder(cls)
        return decoder

    def check(self, cls: Any) -> None:
        self._decoder(cls)

    def marshal(self, value: object, cls: Any = None) -> Message:
        return self._message(self._encoder.encode(value), type(value) if cls is None else cls)

    def unmarshal(self, message: Message, cls: Any) -> Any:
        try:
            return self._decoder(cls).decode(message.payload)
        except self._msgspec.DecodeError as exc:  # ValidationError is one
            raise DecodeError(f"not a {type_name(cls)}: {exc}") from None


class PydanticMarshaler(_Named):
    """JSON through `pydantic <https://docs.pydantic.dev/>`_ v2 (``pip install pydantic``).

    Models and every type a ``pydantic.TypeAdapter`` takes, validated by
    pydantic (with its coercions); a payload that does not fit raises
    :class:`~piko_trio_events.DecodeError` with pydantic's error summary.
    pydantic is imported here, when the marshaler is built.
    """

    def __init__(self, name_of: Callable[[Any], str] | None = None) -> None:
        super().__init__(name_of)
        import pydantic

        self._pydantic = pydantic
        self._adapters: dict[Any, Any] = {}

    def _adapter(self, cls: Any) -> Any:
        adapter = self._adapters.get(cls)
        if adapter is None:
            try:
                adapter = self._pydantic.TypeAdapter(cls)
            except self._pydantic.PydanticSchemaGenerationError as exc:
                raise TypeError(f"PydanticMarshaler cannot handle {cls!r}: {exc}") from None
            self._adapters[cls] = adapter
        return adapter

    def check(self, cls: Any) -> None:
        self._adapter(cls)

    def marshal(self, value: object, cls: Any = None) -> Message:
        cls = type(value) if cls is None else cls
        return self._message(self._adapter(cls).dump_json(value), cls)

    def unmarshal(self, message: Message, cls: Any) -> Any:
        try:
            return self._adapter(cls).validate_json(message.payload)
        except self._pydantic.ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'the value'}: {e['msg']}"
                for e in exc.errors()[:3]
            )
            raise DecodeError(f"not a {type_name(cls)}: {errors}") from None
