"""Connecting securely: mutual TLS plus a password, and what a refusal looks like.

The certificates are made on the spot with ``trustme`` (a test-only CA); in
production the CA file, client certificate and key come from your PKI and
the password from your secret store. Runs against an embedded nats-server:
``python docs/examples/security.py`` (needs ``pip install trustme``).
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

import trio
import trustme

from piko_trio_events import AuthError, Message, NatsConfig, open_nats_provider
from piko_trio_events.testing import open_nats_server

PASSWORD = "s3cr3t-pa55word"


def client_context(ca: trustme.CA, client: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)  # in production: create_default_context(cafile="ca.pem")
    client.configure_cert(context)  # in production: context.load_cert_chain(cert, key)
    return context


async def main() -> None:
    ca = trustme.CA()
    server_cert, client = ca.issue_cert("127.0.0.1"), ca.issue_cert("orders-service")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: Path(tmp, name) for name in ("ca.pem", "cert.pem", "key.pem")}
        ca.cert_pem.write_to_path(str(paths["ca.pem"]))
        server_cert.cert_chain_pems[0].write_to_path(str(paths["cert.pem"]))
        server_cert.private_key_pem.write_to_path(str(paths["key.pem"]))
        server_args = [
            *("--tls", "--tlscert", str(paths["cert.pem"]), "--tlskey", str(paths["key.pem"])),
            *("--tlscacert", str(paths["ca.pem"]), "--tlsverify"),  # client certs required
            *("--user", "orders", "--pass", PASSWORD),
        ]
        async with open_nats_server(args=server_args) as server:
            url = f"tls://127.0.0.1:{server.port}"
            config = NatsConfig(
                url=url,
                nats_options={
                    "tls": client_context(ca, client),
                    "user": "orders",
                    "password": PASSWORD,
                },
            )
            print(config)  # the password and the TLS context show as ***
            async with (
                open_nats_provider(config) as provider,
                provider.subscriber.subscribe("orders.paid") as messages,
            ):
                await provider.publisher.publish("orders.paid", Message(b"42"))
                msg = await messages.receive()
                await msg.ack()
                print("received over mutual TLS:", msg.payload)

            wrong = NatsConfig(
                url=url,
                nats_options={
                    "tls": client_context(ca, client),
                    "user": "orders",
                    "password": "not-" + PASSWORD,
                },
            )
            try:
                async with open_nats_provider(wrong):
                    pass
            except AuthError as exc:  # at once, never retried, nothing secret in it
                print(f"refused: {type(exc).__name__}: {exc}")
                print("password shown:", "not-" + PASSWORD in str(exc))


if __name__ == "__main__":
    trio.run(main)
