"""Security against real nats-servers: token, user/password, TLS and mutual TLS.

For each: the right credentials connect and carry messages (core NATS and
JetStream); wrong ones fail the provider's start with :class:`AuthError` (a
:class:`ConnectError`) as soon as the server shows it, never after a reconnect
loop; and no secret (password, token, private key) appears in a config's or
provider's repr, in an error or anything chained to it, in a log record of the
library or in a metric attribute. Certificates are made per run with trustme.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import traceback
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trio
import trustme

from piko_trio_events import ConfigError, ConnectError, JetStreamConfig, Message, NatsConfig
from piko_trio_events._errors import AuthError
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.nats._connection import _scrubber
from piko_trio_events.testing._server import open_nats_server
from tests.otel import sdk_reader

from .helpers import eventually

USER = "app-user"
PASSWORD = "pw-Zq8vR2-s3cret"
NEW_PASSWORD = "pw-Nw5tY1-rotated"
WRONG_PASSWORD = "pw-Wr0ngK2-s3cret"
TOKEN = "tok-Xy7wL4-s3cret"
WRONG_TOKEN = "tok-Bad9Q3-s3cret"
CONNECT_TIMEOUT = 5.0
#: A refusal ends the start at once; this bound is far below CONNECT_TIMEOUT,
#: so a start that only fails once the timeout fires is caught.
FAST = CONNECT_TIMEOUT / 2


@dataclass
class Certs:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, on disk."""

    ca: trustme.CA
    client: trustme.LeafCert
    other_ca: trustme.CA  # trusted by no one here
    other_client: trustme.LeafCert  # signed by other_ca
    ca_path: str
    cert_path: str
    key_path: str
    key_material: tuple[str, ...]  # lines of every private key's PEM body

    def server_tls(self) -> list[str]:
        return ["--tls", "--tlscert", self.cert_path, "--tlskey", self.key_path]

    def server_mtls(self) -> list[str]:
        return [*self.server_tls(), "--tlscacert", self.ca_path, "--tlsverify"]

    def context(self, *, trust: trustme.CA | None = None, cert: Any = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        (trust or self.ca).configure_trust(ctx)
        if cert is not None:
            cert.configure_cert(ctx)
        return ctx


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client, other_client = ca.issue_cert("client@piko"), other_ca.issue_cert("client@piko")
    directory = tmp_path_factory.mktemp("certs")
    paths = {name: str(directory / f"{name}.pem") for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.cert_chain_pems[0].write_to_path(paths["cert"])
    server.private_key_pem.write_to_path(paths["key"])
    material = tuple(
        line
        for leaf in (server, client, other_client)
        for line in leaf.private_key_pem.bytes().decode().splitlines()
        if line and not line.startswith("-----")
    )
    return Certs(
        ca, client, other_ca, other_client, paths["ca"], paths["cert"], paths["key"], material
    )


def secrets(certs: Certs) -> tuple[str, ...]:
    return (PASSWORD, NEW_PASSWORD, WRONG_PASSWORD, TOKEN, WRONG_TOKEN, *certs.key_material)


def assert_clean(text: str, certs: Certs, where: str) -> None:
    for secret in secrets(certs):
        assert secret not in text, f"a secret shows in {where}"


def error_texts(exc: BaseException) -> Iterator[str]:
    """str and repr of ``exc``, of everything chained to it or grouped in it,
    and the whole formatted traceback."""
    yield "".join(traceback.format_exception(exc))
    seen: set[int] = set()
    stack = [exc]
    while stack:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield str(error)
        yield repr(error)
        yield from (repr(arg) for arg in error.args)
        yield from (str(note) for note in getattr(error, "__notes__", ()))
        stack.extend(e for e in (error.__cause__, error.__context__) if e is not None)
        if isinstance(error, BaseExceptionGroup):
            stack.extend(error.exceptions)


def assert_logs_clean(caplog: pytest.LogCaptureFixture, certs: Certs) -> None:
    formatter = logging.Formatter()
    for record in caplog.records:
        if record.name.startswith("piko_trio_events"):
            assert_clean(formatter.format(record), certs, f"log record {record.name}")


def assert_metrics_clean(certs: Certs) -> None:
    data = sdk_reader().get_metrics_data()
    assert data is not None
    attempts = 0.0
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if not scope.scope.name.startswith("piko_trio_events"):
                continue
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    for key, value in (point.attributes or {}).items():
                        assert_clean(f"{key}={value!r}", certs, f"metric {metric.name}")
                    if metric.name.endswith("provider_connection_attempts"):
                        attempts += float(getattr(point, "value", 0))
    assert attempts > 0, "the provider's metrics were not recorded"


@pytest.fixture
def capture(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    sdk_reader()  # installed before the providers' instruments report
    caplog.set_level(logging.DEBUG, logger="piko_trio_events")
    return caplog


# -- the setups --------------------------------------------------------------------


def with_userinfo(url: str, userinfo: str, scheme: str = "nats") -> str:
    return url.replace("nats://", f"{scheme}://{userinfo}@")


def server_args(name: str, certs: Certs) -> list[str]:
    return {
        "token": ["--auth", TOKEN],
        "password": ["--user", USER, "--pass", PASSWORD],
        "tls": certs.server_tls(),
        "mtls": certs.server_mtls(),
    }[name]


Variants = dict[str, tuple[str, dict[str, Any]]]  # variant -> (url, nats_options)


def variants(name: str, certs: Certs, url: str) -> tuple[Variants, Variants]:
    """What must connect to the server of ``name``, and what must be refused."""
    if name == "token":
        return (
            {"option": (url, {"token": TOKEN}), "url": (with_userinfo(url, TOKEN), {})},
            {
                "wrong option": (url, {"token": WRONG_TOKEN}),
                "wrong url": (with_userinfo(url, WRONG_TOKEN), {}),
                "none": (url, {}),
            },
        )
    if name == "password":
        return (
            {
                "option": (url, {"user": USER, "password": PASSWORD}),
                "url": (with_userinfo(url, f"{USER}:{PASSWORD}"), {}),
            },
            {
                "wrong option": (url, {"user": USER, "password": WRONG_PASSWORD}),
                "wrong url": (with_userinfo(url, f"{USER}:{WRONG_PASSWORD}"), {}),
                "wrong user": (url, {"user": "intruder", "password": PASSWORD}),
            },
        )
    if name == "tls":
        trusted = certs.context()
        return (
            {
                "nats url": (url, {"tls": trusted}),
                "tls url": (url.replace("nats://", "tls://"), {"tls": trusted}),
            },
            {
                "untrusted ca": (url, {"tls": certs.context(trust=certs.other_ca)}),
                "system cas": (url, {}),
            },
        )
    assert name == "mtls"
    return (
        {"client cert": (url, {"tls": certs.context(cert=certs.client)})},
        {
            "no client cert": (url, {"tls": certs.context()}),
            "untrusted client cert": (url, {"tls": certs.context(cert=certs.other_client)}),
            "untrusted ca": (
                url,
                {"tls": certs.context(trust=certs.other_ca, cert=certs.client)},
            ),
        },
    )


SETUPS = ["token", "password", "tls", "mtls"]


async def roundtrip(config: NatsConfig, topic: str, certs: Certs) -> None:
    async with open_nats_provider(config) as provider:
        assert provider.connected
        assert_clean(repr(provider), certs, "repr(provider)")
        assert_clean(str(provider), certs, "str(provider)")
        async with provider.subscriber.subscribe(topic) as channel:
            sent = Message(b"payload", {"k": "v"})
            await provider.publisher.publish(topic, sent)
            got = await channel.receive()
            assert got == sent
            assert await got.ack()


@pytest.mark.parametrize("name", SETUPS)
async def test_right_credentials_connect_and_carry_messages(
    name: str, certs: Certs, capture: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(60):
        async with open_nats_server(jetstream=True, args=server_args(name, certs)) as server:
            good, _ = variants(name, certs, server.url)
            for index, (url, options) in enumerate(good.values()):
                for jetstream in (False, True):
                    config = NatsConfig(
                        url=url,
                        connect_timeout=CONNECT_TIMEOUT,
                        nats_options=options,
                        jetstream=JetStreamConfig(disabled=not jetstream),
                    )
                    assert_clean(repr(config), certs, "repr(config)")
                    assert_clean(str(config), certs, "str(config)")
                    topic = f"sec{index}.{'js' if jetstream else 'core'}"
                    with trio.fail_after(20):
                        await roundtrip(config, topic, certs)
    assert_logs_clean(capture, certs)
    assert_metrics_clean(certs)


@pytest.mark.parametrize("name", SETUPS)
async def test_wrong_credentials_fail_the_start_at_once_with_a_clean_auth_error(
    name: str, certs: Certs, capture: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(60):
        async with open_nats_server(jetstream=False, args=server_args(name, certs)) as server:
            _, bad = variants(name, certs, server.url)
            for variant, (url, options) in bad.items():
                config = NatsConfig(url=url, connect_timeout=CONNECT_TIMEOUT, nats_options=options)
                start = trio.current_time()
                with trio.fail_after(CONNECT_TIMEOUT + 2), pytest.raises(AuthError) as info:
                    async with open_nats_provider(config):
                        pytest.fail(f"{name}/{variant}: connected")  # pragma: no cover
                elapsed = trio.current_time() - start
                assert elapsed < FAST, f"{name}/{variant}: refused after {elapsed:.2f}s"
                error = info.value
                assert isinstance(error, ConnectError)
                text = str(error)
                assert str(server.port) in text, text
                expected = "authorization violation" if name in ("token", "password") else "tls"
                assert expected in text.lower(), f"{name}/{variant}: unclear error: {text}"
                for part in error_texts(error):
                    assert_clean(part, certs, f"the error of {name}/{variant}")
                assert_clean(repr(config), certs, "repr(config)")
    assert_logs_clean(capture, certs)
    assert_metrics_clean(certs)


async def test_url_secrets_are_redacted_everywhere_they_could_show() -> None:
    config = NatsConfig(
        url=f"nats://{USER}:{PASSWORD}@127.0.0.1:4222, tls://{TOKEN}@127.0.0.1:4223",
        nats_options={"token": TOKEN, "password": PASSWORD, "tls": ssl.create_default_context()},
    )
    text = repr(config)
    for secret in (PASSWORD, TOKEN, "SSLContext"):
        assert secret not in text
    assert f"{USER}:***@127.0.0.1:4222" in text
    assert "tls://***@127.0.0.1:4223" in text
    headers = NatsConfig(nats_options={"ws_connection_headers": {"Authorization": [TOKEN]}})
    assert TOKEN not in repr(headers)
    # A password with an unescaped '@' is hidden whole, not cut at its '@'.
    odd = NatsConfig(url="nats://u:pa@ss-w0rd@127.0.0.1:4222")
    assert "ss-w0rd" not in repr(odd)
    assert "nats://u:***@127.0.0.1:4222" in repr(odd)


async def test_the_scrubber_hides_every_configured_secret() -> None:
    config = NatsConfig(
        url=f"nats://{USER}:{quote(PASSWORD + '/@', safe='')}@127.0.0.1:4222,nats://{TOKEN}@h2:4222",
        nats_options={"token": WRONG_TOKEN, "password": NEW_PASSWORD},
    )
    scrub = _scrubber(config)
    for secret in (
        PASSWORD + "/@",
        quote(PASSWORD + "/@", safe=""),
        TOKEN,
        WRONG_TOKEN,
        NEW_PASSWORD,
    ):
        text = scrub(f"server said: {secret}!")
        assert text == "server said: ***!", text


async def test_a_tls_option_that_is_not_an_ssl_context_is_rejected_without_showing_it(
    certs: Certs,
) -> None:
    pem = certs.client.private_key_pem.bytes().decode()
    with pytest.raises(ConfigError, match=r"nats_options\['tls'\]") as info:
        async with open_nats_provider(NatsConfig(nats_options={"tls": pem})):
            pass  # pragma: no cover
    for part in error_texts(info.value):
        assert_clean(part, certs, "the ConfigError")


# -- credentials that change while the provider runs -----------------------------------


def records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("piko_trio_events") and text in r.getMessage().lower()
    ]


async def test_password_changed_across_a_restart_gives_up_after_bounded_refusals(
    certs: Certs, capture: pytest.LogCaptureFixture
) -> None:
    """The server comes back with another password: each refused reconnect is
    logged (scrubbed), and after ``auth_failure_limit`` refusals in a row the
    connection is given up with an AuthError instead of retrying forever."""
    with trio.fail_after(60):
        async with open_nats_server(
            jetstream=True, args=["--user", USER, "--pass", PASSWORD]
        ) as server:
            config = NatsConfig(
                url=server.url,
                reconnect_wait=0.05,
                close_timeout=5.0,
                nats_options={"user": USER, "password": PASSWORD},
            )
            closing = None
            with suppress(AuthError):  # (if the provider's block fails with it)
                async with open_nats_provider(config) as provider:
                    conn = provider._conn
                    async with provider.subscriber.subscribe("rotate.events") as channel:
                        await provider.publisher.publish("rotate.events", Message(b"before"))
                        assert await (await channel.receive()).ack()
                        server.args = ["--user", USER, "--pass", NEW_PASSWORD]
                        await server.restart()
                        with trio.fail_after(20):
                            await eventually(lambda: conn.failure is not None)
                        with trio.fail_after(5):
                            await eventually(lambda: conn.nc is not None and conn.nc.is_closed)
                    closing = trio.current_time()
            if closing is not None:  # leaving the block still closes in bounded time
                assert trio.current_time() - closing < config.close_timeout + 5.0
            failure = conn.failure
            assert isinstance(failure, AuthError)
            assert "authorization violation" in str(failure)
            assert str(server.port) in str(failure)
            assert not provider.connected
            refusals = records(capture, "authorization violation")
            warnings = [r for r in refusals if r.levelno == logging.WARNING]
            assert len(warnings) >= conn.auth_failure_limit
            assert any(r.levelno == logging.ERROR for r in refusals)
            for part in error_texts(failure):
                assert_clean(part, certs, "the reconnect failure")
    assert_logs_clean(capture, certs)
    assert_metrics_clean(certs)


async def test_an_outage_is_retried_past_the_refusal_limit(
    certs: Certs, capture: pytest.LogCaptureFixture
) -> None:
    """Plain network errors never count as refusals: with the server down for
    many reconnect attempts, the provider still reconnects when it is back."""
    with trio.fail_after(60):
        async with open_nats_server(
            jetstream=False, args=["--user", USER, "--pass", PASSWORD]
        ) as server:
            config = NatsConfig(
                url=server.url,
                reconnect_wait=0.02,
                nats_options={"user": USER, "password": PASSWORD},
                jetstream=JetStreamConfig(disabled=True),
            )
            async with open_nats_provider(config) as provider:
                conn = provider._conn
                await server.stop()
                with trio.fail_after(20):
                    await eventually(
                        lambda: len(records(capture, "nats error")) >= 4 * conn.auth_failure_limit
                    )
                await server.start()
                with trio.fail_after(20):
                    await eventually(lambda: provider.connected)
                assert conn.failure is None
                assert conn.auth_failures == 0
                async with provider.subscriber.subscribe("outage.done") as channel:
                    await provider.publisher.publish("outage.done", Message(b"after"))
                    assert (await channel.receive()).payload == b"after"
    assert_logs_clean(capture, certs)


async def test_an_outage_past_max_reconnect_attempts_ends_with_a_connect_error(
    certs: Certs, capture: pytest.LogCaptureFixture
) -> None:
    """With a finite policy, giving up after an outage is recorded and logged
    as a ConnectError (not an auth error), never silence."""
    with trio.fail_after(60):
        async with open_nats_server(
            jetstream=False, args=["--user", USER, "--pass", PASSWORD]
        ) as server:
            config = NatsConfig(
                url=with_userinfo(server.url, f"{USER}:{PASSWORD}"),
                reconnect_wait=0.02,
                max_reconnect_attempts=2,
                jetstream=JetStreamConfig(disabled=True),
            )
            with suppress(ConnectError):  # (if the provider's block fails with it)
                async with open_nats_provider(config) as provider:
                    conn = provider._conn
                    await server.stop()
                    with trio.fail_after(20):
                        await eventually(lambda: conn.failure is not None)
            failure = conn.failure
            assert type(failure) is ConnectError
            assert "reconnecting gave up" in str(failure)
            assert str(server.port) in str(failure)
            assert records(capture, "reconnecting gave up")[-1].levelno == logging.ERROR
            for part in error_texts(failure):
                assert_clean(part, certs, "the outage failure")
    assert_logs_clean(capture, certs)


async def test_a_reload_that_revokes_the_password_ends_the_connection_with_an_auth_error(
    certs: Certs, capture: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The server reloads its config with another password: it drops the live
    client, whose reconnects are then refused, and the provider gives up with
    an AuthError (not silence) without any restart."""
    conf = tmp_path / "server.conf"

    def write(password: str) -> None:
        conf.write_text(f'authorization {{ user: "{USER}", password: "{password}" }}\n')

    write(PASSWORD)
    with trio.fail_after(60):
        async with open_nats_server(jetstream=False, args=["-c", str(conf)]) as server:
            config = NatsConfig(
                url=server.url,
                reconnect_wait=0.05,
                nats_options={"user": USER, "password": PASSWORD},
                jetstream=JetStreamConfig(disabled=True),
            )
            with suppress(AuthError):  # (if the provider's block fails with it)
                async with open_nats_provider(config) as provider:
                    conn = provider._conn
                    write(NEW_PASSWORD)
                    await server.reload()
                    with trio.fail_after(20):
                        await eventually(lambda: conn.failure is not None)
            assert isinstance(conn.failure, AuthError)
            assert "authorization violation" in str(conn.failure)
            assert not provider.connected
            for part in error_texts(conn.failure):
                assert_clean(part, certs, "the reload failure")
    assert_logs_clean(capture, certs)


async def test_the_running_provider_fails_with_the_auth_error(certs: Certs) -> None:
    """Once the connection is given up, the provider's block fails with it."""
    config = NatsConfig(
        url="nats://127.0.0.1:4222",
        reconnect_wait=0.05,
        nats_options={"user": USER, "password": PASSWORD},
        jetstream=JetStreamConfig(disabled=True),
    )
    with trio.fail_after(5):
        async with open_nats_server(
            jetstream=False, args=["--user", USER, "--pass", PASSWORD]
        ) as server:
            config = dataclasses.replace(config, url=server.url)
            with pytest.raises(AuthError, match="authorization violation") as info:  # noqa: PT012
                async with open_nats_provider(config):
                    server.args = ["--user", USER, "--pass", NEW_PASSWORD]
                    await server.restart()
                    await trio.sleep_forever()
            for part in error_texts(info.value):
                assert_clean(part, certs, "the provider's error")
