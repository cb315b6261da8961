"""A cluster of real nats-servers on loopback, for fault tests.

``open_nats_cluster(size=3)`` starts ``size`` JetStream nats-servers routed
together (cluster ``piko``, servers ``n0``, ``n1``, ...), each with its own
port and store, and yields a :class:`NatsCluster`. Each node is a
:class:`~piko_trio_events.testing.NatsServer` with ``kill()``, ``stop()``,
``start()`` and ``restart()`` (same ports, same store). With
``route_links=True`` every route between two nodes passes through a
:class:`~piko_trio_events.testing.Link`, so a node can be cut off from the
others (both ways or one way) while its clients still reach it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Literal, TypeAlias

import trio

from .._errors import ConfigError, ConnectError
from ._link import Link, open_link
from ._server import NatsServer, _free_port, open_nats_server

__all__ = ["NatsCluster", "Side", "open_nats_cluster"]

logger = logging.getLogger("piko_trio_events.testing")

#: Which way a node is cut off: ``"outbound"`` (what it sends to the others
#: is held), ``"inbound"`` (what they send to it is held), or ``"both"``.
Side: TypeAlias = Literal["both", "outbound", "inbound"]

#: Where a node advertises its route address when routes go through links: a
#: port nothing listens on, so that no node opens a route around the links
#: after hearing of another one through gossip.
_NOWHERE = "127.0.0.1:1"


class NatsCluster:
    """Running nats-servers routed together; see :func:`open_nats_cluster`."""

    def __init__(
        self,
        nodes: Sequence[NatsServer],
        names: Sequence[str],
        monitor_ports: Sequence[int],
        route_links: dict[tuple[int, int], Link],
    ) -> None:
        self.nodes: tuple[NatsServer, ...] = tuple(nodes)
        #: Server names (``n0``, ``n1``, ...), as JetStream reports leaders.
        self.names: tuple[str, ...] = tuple(names)
        self.monitor_ports: tuple[int, ...] = tuple(monitor_ports)
        #: ``route_links[i, j]``: the link carrying the routes node ``i`` opens to
        #: node ``j`` (empty unless ``route_links=True``).
        self.route_links = route_links

    @property
    def urls(self) -> list[str]:
        """Each node's client URL, in node order."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The client URLs joined by commas, as ``NatsConfig(url=...)`` takes them."""
        return ",".join(self.urls)

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, index: int) -> NatsServer:
        return self.nodes[index]

    def __iter__(self) -> Iterator[NatsServer]:
        return iter(self.nodes)

    def node(self, name: str) -> NatsServer:
        """The node whose server name is ``name`` (as a stream's leader is reported)."""
        try:
            return self.nodes[self.names.index(name)]
        except ValueError:
            raise KeyError(f"no node named {name!r}; the nodes are {list(self.names)}") from None

    def _index(self, node: int | str | NatsServer) -> int:
        if isinstance(node, str):
            if node not in self.names:
                raise KeyError(f"no node named {node!r}; the nodes are {list(self.names)}")
            return self.names.index(node)
        if isinstance(node, NatsServer):
            return self.nodes.index(node)
        if not 0 <= node < len(self.nodes):
            raise IndexError(f"no node {node}; the cluster has {len(self.nodes)}")
        return node

    def isolate(self, node: int | str | NatsServer, side: Side = "both") -> None:
        """Cut ``node`` off from the other nodes on its route links.

        ``"both"`` closes its routes (and refuses new ones) until :meth:`heal`;
        ``"outbound"`` holds what it sends to the others, ``"inbound"`` what
        they send to it (a one-way partition: the routes stay open until a
        ping timeout ends them). Its clients still reach it. Needs
        ``route_links=True``.
        """
        if not self.route_links:
            raise RuntimeError("isolate() needs open_nats_cluster(route_links=True)")
        if side not in ("both", "outbound", "inbound"):
            raise ConfigError(f"side must be 'both', 'outbound' or 'inbound', not {side!r}")
        index = self._index(node)
        for (source, target), link in self.route_links.items():
            if index not in (source, target):
                continue
            if side == "both":
                link.cut()
            elif (side == "outbound") == (source == index):
                link.cut("upstream")  # the bytes from the node that opened the route
            else:
                link.cut("downstream")

    def heal(self) -> None:
        """Restore every route link: the nodes route to each other again."""
        for link in self.route_links.values():
            link.restore()

    async def healthy(self, node: int | str | NatsServer) -> bool:
        """Whether ``node`` runs, answers its ``/healthz`` with 200 (JetStream up
        and current) and has routes to every other running node."""
        index = self._index(node)
        if not self.nodes[index].running:
            return False
        port = self.monitor_ports[index]
        health = await _http_get(port, "/healthz")
        if health is None or health[0] != 200:
            return False
        routes = await _http_get(port, "/routez")
        if routes is None or routes[0] != 200:
            return False
        try:
            routed = {route["remote_name"] for route in json.loads(routes[1])["routes"] or ()}
        except (ValueError, KeyError, TypeError):
            return False
        others = {
            name
            for i, (name, other) in enumerate(zip(self.names, self.nodes, strict=True))
            if i != index and other.running
        }
        return others <= routed

    async def wait_healthy(self, *nodes: int | str | NatsServer) -> None:
        """Return once every node given (every running node if none) is
        :meth:`healthy`: after a start, a restart or a :meth:`heal`.

        Use :func:`trio.fail_after` around it to bound the wait (it waits for
        as long as a partition lasts).
        """
        wanted = nodes or tuple(node for node in self.nodes if node.running)
        for node in wanted:
            # Polls other processes (their HTTP monitoring): nothing here to wait on.
            while not await self.healthy(node):  # noqa: ASYNC110
                await trio.sleep(0.05)

    def __repr__(self) -> str:
        states = ", ".join(
            f"{name}={'up' if node.running else 'down'}"
            for name, node in zip(self.names, self.nodes, strict=True)
        )
        return f"<NatsCluster {states}>"


async def _http_get(port: int, path: str) -> tuple[int, bytes] | None:
    """GET ``path`` from a monitoring port on loopback: (status, body), or None."""
    try:
        with trio.move_on_after(2.0):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"GET %b HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            status = head.split(b" ", 2)[1:2]
            return (int(status[0]), body) if status and status[0].isdigit() else None
    except OSError:
        return None
    return None


@asynccontextmanager
async def open_nats_cluster(
    size: int = 3,
    *,
    jetstream: bool = True,
    route_links: bool = False,
    name: str = "piko",
    args: Sequence[str] = (),
    store_dir: str | os.PathLike[str] | None = None,
) -> AsyncIterator[NatsCluster]:
    """Run ``size`` nats-servers routed together on loopback for the block.

    Args:
        size: how many nodes (1 to 9); 3 for R3 streams. One node runs
            without routes (a standalone server with the same handle).
        jetstream: enable JetStream on every node (each its own file store).
        route_links: send every route through a :class:`Link` (see
            :attr:`NatsCluster.route_links` and :meth:`NatsCluster.isolate`).
        name: the cluster's name.
        args: extra nats-server arguments for every node.
        store_dir: where the nodes keep their stores and logs (a folder per
            node); a temporary directory (removed afterwards) when None.

    Yields once every node accepts clients, routes to every other node and
    reports healthy (JetStream's meta leader elected). A cluster that has not
    formed within 15 s (a port chosen free and taken before its node bound
    it, say) is stopped, logged with why, and started again on other ports
    (each retry's stores in ``<name>-attempt<n>`` folders); after 3 attempts
    :class:`~piko_trio_events.ConnectError` says which node was not healthy
    and its last logged error. :meth:`NatsCluster.wait_healthy` waits for the
    same state again after a fault. Nodes
    do not tell clients about each other (``--no_advertise``): a client
    reaches the nodes whose URLs it was given, so clients that connect
    through links stay behind them. Leaving the block stops every node.
    """
    if not isinstance(size, int) or not 1 <= size <= 9:
        raise ConfigError(f"size must be an int from 1 to 9, not {size!r}")
    with tempfile.TemporaryDirectory(prefix="piko-cluster-") as tmp:
        root = os.fspath(store_dir) if store_dir is not None else tmp
        why = ""
        for attempt in range(_FORM_ATTEMPTS):
            stack = AsyncExitStack()
            formed = False
            try:
                cluster = await _start(
                    stack, size, jetstream, route_links, name, args, root, attempt
                )
                with trio.move_on_after(_FORM_TIMEOUT):
                    await cluster.wait_healthy()
                    formed = True
                if not formed:
                    why = await _not_formed(cluster)
            except BaseException:
                await stack.aclose()
                raise
            if formed:
                break
            await stack.aclose()
            logger.warning(
                "the %d-node cluster did not form within %gs (%s); starting it again "
                "on other ports",
                size,
                _FORM_TIMEOUT,
                why,
            )
        else:
            raise ConnectError(
                f"a {size}-node nats-server cluster did not form in {_FORM_ATTEMPTS} attempts "
                f"of {_FORM_TIMEOUT:g}s each: {why}"
            )
        async with stack:  # the nodes of the attempt that formed, until the block ends
            yield cluster


#: How long the nodes of a new cluster get to route to each other and report
#: healthy, and how many times the cluster is started (on fresh ports) when
#: they do not: a port chosen free can be taken before its node binds it.
_FORM_TIMEOUT = 15.0
_FORM_ATTEMPTS = 3


async def _start(
    stack: AsyncExitStack,
    size: int,
    jetstream: bool,
    route_links: bool,
    name: str,
    args: Sequence[str],
    root: str,
    attempt: int,
) -> NatsCluster:
    """Start the nodes (and route links) of one attempt inside ``stack``."""
    names = [f"n{i}" for i in range(size)]
    cluster_ports = [_free_port() for _ in range(size)]
    client_ports = [_free_port() for _ in range(size)]
    monitor_ports = [_free_port() for _ in range(size)]
    links: dict[tuple[int, int], Link] = {}
    if route_links:
        for i in range(size):
            for j in range(size):
                if i != j:
                    links[i, j] = await stack.enter_async_context(open_link(cluster_ports[j]))
    nodes = []
    for i in range(size):
        if route_links:
            routes = [links[i, j].url for j in range(size) if j != i]
            extra = ["--cluster_advertise", _NOWHERE, "--connect_retries", "0"]
        else:
            routes = [f"nats://127.0.0.1:{port}" for port in cluster_ports]
            extra = []
        cluster_args = [
            "--cluster_name",
            name,
            "--cluster",
            f"nats://127.0.0.1:{cluster_ports[i]}",
            "--routes",
            ",".join(routes),
            "--no_advertise=true",
            *extra,
        ]
        node_args = [
            "-n",
            names[i],
            "-m",
            str(monitor_ports[i]),
            *(cluster_args if size > 1 else ()),
            *args,
        ]
        # (a fresh store per attempt: an attempt's half-formed state stays behind)
        where = names[i] if attempt == 0 else f"{names[i]}-attempt{attempt}"
        nodes.append(
            await stack.enter_async_context(
                open_nats_server(
                    jetstream,
                    port=client_ports[i],
                    store_dir=os.path.join(root, where),
                    args=node_args,
                )
            )
        )
    return NatsCluster(nodes, names, monitor_ports, links)


async def _not_formed(cluster: NatsCluster) -> str:
    """Which nodes are not healthy, and the last error line of each one's log."""
    parts = []
    for index, node in enumerate(cluster.nodes):
        if await cluster.healthy(index):
            continue
        last = ""
        with suppress(OSError):
            lines = node.log_path.read_text(errors="replace").splitlines()
            errors = [line for line in lines if "[ERR]" in line or "[FTL]" in line]
            last = errors[-1].strip() if errors else ""
        parts.append(f"{cluster.names[index]} not healthy" + (f" ({last})" if last else ""))
    return "; ".join(parts) or "healthy only after the timeout"
