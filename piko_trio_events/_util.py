"""Small helpers shared by the providers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["error_leaves", "single_error", "the_one_error", "utf8_encodable"]


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


def the_one_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one error inside ``group`` and its nested groups, not counting
    ``trio.Cancelled`` (the cancellations an error caused in its siblings);
    one ``Cancelled`` when there is nothing else; else None."""
    import trio

    leaves = error_leaves(group)
    errors = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
    if len(errors) == 1:
        return errors[0]
    if not errors and leaves:
        return leaves[0]
    return None


@contextmanager
def single_error() -> Iterator[None]:
    """Re-raise an exception group that holds one error as that error.

    The library's one exception-group policy: trio's nurseries (and
    trio-asyncio's loop) wrap every error in an ExceptionGroup; a user of a
    provider should see ``ConnectError``, not a group holding one. Several
    errors stay a group.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaf = the_one_error(group)
        if leaf is None:
            raise
        context = leaf.__context__
        try:
            raise leaf
        finally:
            leaf.__context__ = context
            del leaf, context
