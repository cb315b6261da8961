"""Small helpers shared by the providers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["error_leaves", "single_error", "utf8_encodable"]


def error_leaves(exc: BaseException) -> list[BaseException]:
    """The errors inside ``exc`` and its nested exception groups (``[exc]`` if
    it is not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in error_leaves(inner)]
    return [exc]


def utf8_encodable(text: str) -> bool:
    """Whether ``text`` has a UTF-8 form (it holds no lone surrogate)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@contextmanager
def single_error() -> Iterator[None]:
    """Re-raise an exception group that holds one error as that error.

    trio's nurseries wrap every error in an ExceptionGroup; a user of a
    provider should see ``ConnectError``, not a group holding one.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = error_leaves(group)
        if len(leaves) != 1:
            raise
        leaf = leaves[0]
        context = leaf.__context__
        try:
            raise leaf
        finally:
            leaf.__context__ = context
            del leaf, context
