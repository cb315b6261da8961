"""The nats-server launcher: ready means accepting clients; every stop reaps."""

from __future__ import annotations

import trio

from piko_trio_events.testing._server import NatsServer, open_nats_server


async def _info(server: NatsServer) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        data = b""
        while b"\r\n" not in data:
            data += await stream.receive_some(4096)
        return data


async def _refused(server: NatsServer) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def test_server_is_ready_when_yielded_and_gone_after() -> None:
    with trio.fail_after(20):
        async with open_nats_server() as server:
            assert server.url == f"nats://127.0.0.1:{server.port}"
            info = await _info(server)
            assert info.startswith(b"INFO ")
            assert b'"jetstream":true' in info
            process = server._process
            assert process is not None
        assert process.returncode is not None
        assert await _refused(server)


async def test_core_only_server() -> None:
    with trio.fail_after(20):
        async with open_nats_server(jetstream=False) as server:
            assert b'"jetstream":true' not in await _info(server)


async def test_stop_start_restart_kill_keep_port_and_store() -> None:
    with trio.fail_after(40):
        async with open_nats_server() as server:
            port = server.port
            await server.stop()
            assert not server.running
            assert await _refused(server)
            await server.start()
            assert server.running
            assert server.port == port
            assert (await _info(server)).startswith(b"INFO ")
            first = server._process
            await server.restart()
            assert server._process is not first
            assert server.port == port
            assert (await _info(server)).startswith(b"INFO ")
            await server.kill()
            assert await _refused(server)
            await server.start()
            assert (await _info(server)).startswith(b"INFO ")


async def test_cancelled_block_reaps_the_process() -> None:
    with trio.fail_after(20):
        process = None
        with trio.CancelScope() as scope:
            async with open_nats_server() as server:
                process = server._process
                scope.cancel()
                await trio.sleep_forever()
        assert process is not None
        assert process.returncode is not None
