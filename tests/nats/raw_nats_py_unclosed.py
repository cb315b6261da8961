"""nats-py leaves a socket open when its handshake fails: raw nats-py only.

A TCP server that accepts a connection and closes it before sending INFO (as
a node that goes down mid-connect does, or a link cut right then); nats-py's
connect fails with "empty response from server when expecting INFO message"
and never closes the socket it opened: its garbage raises ResourceWarning.
Prints ``unclosed: N`` (the warnings seen)::

    python tests/nats/raw_nats_py_unclosed.py
"""

from __future__ import annotations

import asyncio
import gc
import warnings

import nats


async def _main() -> int:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        try:
            await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=1, allow_reconnect=False)
        except Exception as exc:
            print(f"connect failed: {exc}")
        gc.collect()
        await asyncio.sleep(0.05)
        gc.collect()
    server.close()
    await server.wait_closed()
    return sum(1 for w in seen if issubclass(w.category, ResourceWarning))


def main() -> None:
    print(f"unclosed: {asyncio.run(_main())}")


if __name__ == "__main__":
    main()
