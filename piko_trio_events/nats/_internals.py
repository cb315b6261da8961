"""Every nats-py internal the provider uses, behind one check."""

from __future__ import annotations

import os
from typing import Any, Final

#: nats-py internals the fast publish path writes to (present in nats-py 2.16).
_FAST_PATH_ATTRIBUTES: Final = (
    "_pending",
    "_pending_data_size",
    "_max_pending_size",
    "_flush_pending",
    "stats",
)


def _fast_path_available(nc: Any) -> bool:
    """Whether encoded commands can go straight into ``nc``'s outgoing buffer."""
    if os.environ.get("PIKO_NATS_PUBLIC_PATH") == "1":
        return False
    return all(hasattr(nc, name) for name in _FAST_PATH_ATTRIBUTES)
