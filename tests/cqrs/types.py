"""Message types of the cqrs tests (module level: handlers' annotations resolve here)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Literal, NotRequired, TypedDict


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Line:
    sku: str
    quantity: int = 1


@dataclasses.dataclass(frozen=True)
class OrderPlaced:
    id: int
    customer: str
    total: float
    express: bool
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class Everything:
    lines: list[Line]
    tags: frozenset[str]
    pair: tuple[int, str]
    counts: dict[str, int]
    colour: Colour
    kind: Literal["a", "b"]
    at: dt.datetime
    day: dt.date
    ref: uuid.UUID
    amount: Decimal
    maybe: int | str | None = None


class Shipped(TypedDict):
    order: int
    carrier: str
    tracking: NotRequired[str]


@dataclasses.dataclass(frozen=True)
class ChargeCard:
    order: int
    amount: float


@dataclasses.dataclass(frozen=True)
class Charged:
    order: int
    ok: bool


@dataclasses.dataclass(frozen=True)
class Refund:
    order: int


@dataclasses.dataclass(frozen=True)
class Audit:
    text: str


@dataclasses.dataclass(frozen=True)
class Positive:
    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError("n must be > 0")
