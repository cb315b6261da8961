"""Bad input gets a clear error of the documented type at once, and the provider
keeps working afterwards (issue 4, section 4), on every provider.

Each test interleaves valid publishes with the bad calls on one subscription:
every bad call must raise before any timeout could have fired (``AT_ONCE`` is
well under the providers' 5 s ack and API timeouts), and the valid messages
must all arrive, intact and in order, so nothing was lost or let through.
The fuzz tests at the end draw topics, metadata, uuids and payloads with
hypothesis and check every publish against the documented rules.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import tempfile
import uuid as uuid_module
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piko_trio_events import (
    HandlerOutputError,
    InvalidTopicError,
    JetStreamConfig,
    MemoryConfig,
    Message,
    NatsConfig,
    Provider,
    ProviderClosedError,
    StreamNotFoundError,
    open_memory_provider,
)
from piko_trio_events._message import UUID_HEADER
from piko_trio_events.nats import open_nats_provider
from piko_trio_events.testing._server import open_nats_server

#: A bad call raises within this (the providers' own timeouts are 5 s and more).
AT_ONCE = 2.0
#: Generous bound for a valid message to arrive over a loopback server.
DELIVERY = 20.0

CASES = ("memory", "memory_persistent", "nats_core", "jetstream")
NATS_CASES = ("nats_core", "jetstream")

_ids = itertools.count()


def fresh(root: str = "bad") -> str:
    """A topic no other test (or earlier example) used."""
    return f"{root}.t{next(_ids)}"


def cases(*names: str, xfail: dict[str, str] | None = None) -> list[Any]:
    """pytest params for ``names``, NATS ones marked ``nats``, known bugs xfail (strict)."""
    params = []
    for name in names:
        marks: list[pytest.MarkDecorator] = []
        if name in NATS_CASES:
            marks.append(pytest.mark.nats)
        reason = (xfail or {}).get(name)
        if reason is not None:
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        params.append(pytest.param(name, id=name, marks=marks))
    return params


def nats_config(case: str, url: str, **jetstream: Any) -> NatsConfig:
    js = JetStreamConfig(disabled=True) if case == "nats_core" else JetStreamConfig(**jetstream)
    return NatsConfig(url=url, reconnect_wait=0.2, close_timeout=10.0, jetstream=js)


@asynccontextmanager
async def open_case(
    case: str, *, server_args: Sequence[str] = (), **jetstream: Any
) -> AsyncIterator[Provider]:
    """The provider of ``case`` (with its own nats-server for the NATS cases)."""
    if case.startswith("memory"):
        async with open_memory_provider(MemoryConfig(persistent=case == "memory_persistent")) as p:
            yield p
        return
    async with (
        open_nats_server(jetstream=True, args=server_args) as server,
        open_nats_provider(nats_config(case, server.url, **jetstream)) as provider,
    ):
        yield provider


async def at_once(
    error: type[BaseException] | tuple[type[BaseException], ...],
    match: str,
    call: Callable[[], Awaitable[object]],
) -> BaseException:
    """``await call()`` raises ``error`` (message matching ``match``) within AT_ONCE."""
    with trio.fail_after(AT_ONCE), pytest.raises(error, match=match) as caught:
        await call()
    return caught.value


async def receive_exactly(
    messages: trio.abc.ReceiveChannel[Message],
    expected: Sequence[Message],
    topic: str | None = None,
) -> None:
    """The next messages are ``expected``, in order and intact (uuid, payload,
    metadata, and the topic they were published to); each is acked."""
    with trio.fail_after(DELIVERY):
        for want in expected:
            got = await messages.receive()
            assert got == want, f"expected {want!r}, got {got!r}"
            assert type(got.payload) is bytes
            assert got.delivery is not None
            if topic is not None:
                assert got.delivery.topic == topic
            assert await got.ack()


# -- topics -------------------------------------------------------------------------

BAD_PUBLISH_TOPICS: list[object] = [
    "",
    " ",
    "a b",
    "a\tb",
    "a\nb",
    "a\r",
    "a..b",
    ".a",
    "a.",
    ".",
    "*",
    ">",
    "a.*",
    "a.*.b",
    "a.>",
    "a*",
    "*0",
    "a.b>",
    ">x.y",
    "x" * 256,
    "a." + "b" * 254,
    "a\ud800b",  # a lone surrogate: no UTF-8 form on the wire
    "a\x7f",  # control characters (a JetStream consumer never delivers DEL)
    "a.\x00",
    "\x1b[0m",
    None,
    42,
    b"a.b",
    ["a"],
]

BAD_SUBSCRIBE_TOPICS: list[object] = [
    "",
    " ",
    "a b",
    "a..b",
    ".a",
    "a.",
    "a.>.b",
    ">.a",
    "a.*b",
    ">x",
    "a.b*.c",
    "x" * 256,
    "a\ud800",
    "a.\x7f",
    None,
    42,
    b"a.b",
]


@pytest.mark.parametrize("case", cases(*CASES))
async def test_invalid_topics_raise_at_once_and_the_provider_carries_on(case: str) -> None:
    async with open_case(case) as provider:
        publish = provider.publisher.publish
        topic = fresh()
        sent: list[Message] = []
        async with provider.subscriber.subscribe(topic) as messages:
            for bad in BAD_PUBLISH_TOPICS:
                good = Message(b"before %r" % (bad,), {"k": "v"})
                await publish(topic, good)
                sent.append(good)
                error = await at_once(
                    InvalidTopicError,
                    "topic",
                    lambda bad=bad: publish(bad, Message(b"never"), Message(b"never")),  # type: ignore[misc]
                )
                assert isinstance(error, ValueError)
                if isinstance(bad, str) and 0 < len(bad) < 100:
                    assert repr(bad) in str(error), f"{error} does not name {bad!r}"
            last = Message(b"after")
            await publish(topic, last)
            await receive_exactly(messages, [*sent, last])


@pytest.mark.parametrize("case", cases(*CASES))
async def test_invalid_subscription_patterns_raise_at_once(case: str) -> None:
    async with open_case(case) as provider:
        for bad in BAD_SUBSCRIBE_TOPICS:

            async def subscribe(bad: object = bad) -> None:
                async with provider.subscriber.subscribe(bad):  # type: ignore[arg-type]
                    pytest.fail(f"subscribed to {bad!r}")

            error = await at_once(InvalidTopicError, "topic", subscribe)
            assert isinstance(error, ValueError)
        # the longest valid topic is fine, in both directions
        longest = "long." + "x" * 250
        assert len(longest) == 255
        async with provider.subscriber.subscribe(longest) as messages:
            msg = Message(b"long")
            await provider.publisher.publish(longest, msg)
            await receive_exactly(messages, [msg])


# -- metadata, uuids and payloads ---------------------------------------------------

BAD_METADATA: list[tuple[dict[Any, Any], type[Exception], str]] = [
    ({1: "v"}, TypeError, "str"),
    ({"k": 1}, TypeError, "str"),
    ({"k": None}, TypeError, "str"),
    ({b"k": "v"}, TypeError, "str"),
    ({"k": b"v"}, TypeError, "str"),
    ({"": "v"}, ValueError, "header name"),
    ({"a b": "v"}, ValueError, "header name"),
    ({"a:b": "v"}, ValueError, "header name"),
    ({"a\r": "v"}, ValueError, "header name"),
    ({"a\nb": "v"}, ValueError, "header name"),
    ({"é": "v"}, ValueError, "header name"),
    ({"a(b)": "v"}, ValueError, "header name"),
    ({"k": "a\r\nNats-Msg-Id: x"}, ValueError, "line break"),
    ({"k": "a\nb"}, ValueError, "line break"),
    ({"k": "a\rb"}, ValueError, "line break"),
    ({"k": " v"}, ValueError, "whitespace"),
    ({"k": "v\t"}, ValueError, "whitespace"),
    ({"k": "\x0bv"}, ValueError, "whitespace"),
    ({"k": "v\x0c"}, ValueError, "whitespace"),
    ({"k": "\ud800"}, ValueError, "UTF-8"),
    ({"Nats-Msg-Id": "x"}, ValueError, "Nats-"),
    ({"nats-expected-stream": "x"}, ValueError, "Nats-"),
    ({"NATS-anything": "x"}, ValueError, "Nats-"),
    ({UUID_HEADER: "x"}, ValueError, "reserved"),
]

#: Metadata at the edge of what is allowed: all of it must arrive unchanged.
GOOD_METADATA = {
    "k": "",
    "Case": "upper",
    "case": "lower",
    "inner": "a b\tc",
    "unicode": "é✓ 中文 \U0001f600",
    "colons": "a: b:c",
    "!#$%&'*+-.^_`|~09AZaz": "token chars",
    "Status": "100",
    "Description": "no",
    "NatsLike": "x",
    "ctrl": "a\x00\x1c\x7fb",
}


@pytest.mark.parametrize("case", cases(*CASES))
async def test_bad_metadata_raises_at_once_and_the_provider_carries_on(case: str) -> None:
    async with open_case(case) as provider:
        publish = provider.publisher.publish
        topic = fresh()
        sent: list[Message] = []
        async with provider.subscriber.subscribe(topic) as messages:
            for metadata, error, match in BAD_METADATA:
                if error is TypeError:  # the constructor checks types at once
                    with pytest.raises(TypeError, match=match):
                        Message(b"x", metadata)
                good = Message(b"ok", {"i": str(len(sent))})
                await publish(topic, good)
                sent.append(good)
                # set after construction: publish checks it too, and publishes
                # nothing of the call (the good message before it included)
                bad = Message(b"bad")
                bad.metadata = metadata
                await at_once(error, match, lambda bad=bad: publish(topic, Message(b"x"), bad))  # type: ignore[misc]
            edge = Message(b"edge", GOOD_METADATA)
            await publish(topic, edge)
            await receive_exactly(messages, [*sent, edge])


BAD_UUIDS: list[tuple[object, type[Exception], str]] = [
    ("", ValueError, "uuid"),
    (1, ValueError, "uuid"),
    (b"u", ValueError, "uuid"),
    ("a\r\nNats-Msg-Id: x", ValueError, "uuid"),
    ("a\nb", ValueError, "uuid"),
    (" u", ValueError, "uuid"),
    ("u\t", ValueError, "uuid"),
    ("\ud800", ValueError, "uuid"),
]


@pytest.mark.parametrize("case", cases(*CASES))
async def test_bad_uuids_are_refused_and_odd_ones_arrive(case: str) -> None:
    """A uuid travels as a header value: one that a header cannot carry is refused
    when the message is built; any other string arrives unchanged."""
    for bad, error, match in BAD_UUIDS:
        with pytest.raises(error, match=match):
            Message(b"x", uuid=bad)  # type: ignore[arg-type]
    async with open_case(case) as provider:
        topic = fresh()
        odd = [Message(b"x", uuid=u) for u in ("a b", "é✓", "x" * 1000, "a: b", "-")]
        async with provider.subscriber.subscribe(topic) as messages:
            await provider.publisher.publish(topic, *odd)
            await receive_exactly(messages, odd)


@pytest.mark.parametrize("case", cases(*CASES))
async def test_payloads_that_are_not_bytes(case: str) -> None:
    """The constructor takes bytes, bytearray or memoryview (copied into bytes) and
    refuses anything else with TypeError; bytes-likes and empty payloads arrive."""
    for bad in ("text", None, 42, [1, 2], {"a": 1}, 1.5):
        with pytest.raises(TypeError, match="bytes"):
            Message(bad)  # type: ignore[arg-type]
    source = bytearray(b"mutable")
    from_bytearray = Message(source)
    from_view = Message(memoryview(b"viewed"))
    source[:] = b"changed"
    assert from_bytearray.payload == b"mutable"
    assert type(from_bytearray.payload) is bytes
    assert type(from_view.payload) is bytes
    async with open_case(case) as provider:
        topic = fresh()
        sent = [from_bytearray, from_view, Message(b""), Message()]
        async with provider.subscriber.subscribe(topic) as messages:
            await provider.publisher.publish(topic, *sent)
            await receive_exactly(messages, sent)


@pytest.mark.parametrize(
    "case",
    cases(*CASES),
)
async def test_payload_replaced_after_construction(case: str) -> None:
    """``payload`` is a plain attribute: publish checks it (TypeError naming the
    payload, at once, nothing of the call published) and copies a bytes-like."""
    async with open_case(case) as provider:
        publish = provider.publisher.publish
        topic = fresh()
        sent: list[Message] = []
        async with provider.subscriber.subscribe(topic) as messages:
            for bad_payload in ("text", None, 42, [1]):
                bad = Message()
                bad.payload = bad_payload  # type: ignore[assignment]
                await at_once(
                    TypeError,
                    "payload must be bytes",
                    lambda bad=bad: publish(topic, Message(b"x"), bad),  # type: ignore[misc]
                )
                good = Message(b"ok")
                await publish(topic, good)
                sent.append(good)
            source = bytearray(b"late")
            late = Message()
            late.payload = source  # type: ignore[assignment]
            await publish(topic, late)
            source[:] = b"gone"
            with trio.fail_after(DELIVERY):
                for want in sent:
                    got = await messages.receive()
                    assert got == want
                    await got.ack()
                got = await messages.receive()
            assert got.payload == b"late"
            assert type(got.payload) is bytes


# -- the server's max_payload (NATS) -------------------------------------------------

MAX_PAYLOAD = 4096


@asynccontextmanager
async def small_payload_server_args() -> AsyncIterator[list[str]]:
    """nats-server has no flag for max_payload: a config file sets it."""
    with tempfile.TemporaryDirectory(prefix="piko-bad-input-") as tmp:
        config = Path(tmp) / "server.conf"
        config.write_text(f"max_payload: {MAX_PAYLOAD}\n")
        yield ["-c", str(config)]


@pytest.mark.parametrize(
    "case",
    cases(
        *NATS_CASES,
    ),
)
async def test_payload_over_the_servers_max_payload(case: str) -> None:
    """Over max_payload (headers included, as the server counts): ValueError at once,
    nothing of the call published, the connection untouched."""
    async with small_payload_server_args() as args, open_case(case, server_args=args) as provider:
        publish = provider.publisher.publish
        topic = fresh()
        sent: list[Message] = []
        async with provider.subscriber.subscribe(topic) as messages:
            for size in (MAX_PAYLOAD * 4, MAX_PAYLOAD + 1, MAX_PAYLOAD, MAX_PAYLOAD - 20):
                good = Message(b"g" * 100, {"k": "v"})
                await publish(topic, good)
                sent.append(good)
                await at_once(
                    ValueError,
                    "limit",
                    lambda size=size: publish(topic, Message(b"ok"), Message(b"x" * size)),  # type: ignore[misc]
                )
            fits = Message(b"f" * (MAX_PAYLOAD - 500), {"k": "v"})
            await publish(topic, fits)
            await receive_exactly(messages, [*sent, fits])
        assert provider.connected  # type: ignore[attr-defined]


# -- closed providers ---------------------------------------------------------------


@pytest.mark.parametrize("case", cases(*CASES))
async def test_publish_and_subscribe_after_close(case: str) -> None:
    async with open_case(case) as provider:
        topic = fresh()
        async with provider.subscriber.subscribe(topic) as messages:
            msg = Message(b"while open")
            await provider.publisher.publish(topic, msg)
            await receive_exactly(messages, [msg])
    assert not provider.running
    await at_once(
        ProviderClosedError, "closed", lambda: provider.publisher.publish(topic, Message(b"late"))
    )
    await at_once(ProviderClosedError, "closed", lambda: provider.publisher.publish(topic))

    async def subscribe() -> None:
        async with provider.subscriber.subscribe(topic):
            pytest.fail("subscribed on a closed provider")

    await at_once(ProviderClosedError, "closed", subscribe)
    # bad input is still reported as bad input, not as a closed provider
    await at_once(InvalidTopicError, "topic", lambda: provider.publisher.publish("a..b"))


# -- acknowledgement ----------------------------------------------------------------


@pytest.mark.parametrize("case", cases(*CASES))
async def test_settling_twice(case: str) -> None:
    """ack twice: True both times; nack after ack: False; ack after nack: False;
    nack twice: True. None of them raises or redelivers the acked message."""
    async with open_case(case) as provider:
        topic = fresh()
        async with provider.subscriber.subscribe(topic) as messages:
            first, second, third = Message(b"1"), Message(b"2"), Message(b"3")
            await provider.publisher.publish(topic, first, second)
            with trio.fail_after(DELIVERY):
                got = await messages.receive()
                assert got == first
                with trio.fail_after(AT_ONCE):
                    assert await got.ack() is True
                    assert await got.ack() is True
                    assert await got.nack() is False
                    assert await got.nack(1.0) is False
                assert got.acked
                assert not got.nacked

                got = await messages.receive()
                assert got == second
                with trio.fail_after(AT_ONCE):
                    assert await got.nack() is True
                    assert await got.nack() is True
                    assert await got.ack() is False
                assert got.nacked
                assert not got.acked
                again = await messages.receive()  # the nacked one, once
                assert again == second
                assert again.delivery is not None
                assert again.delivery.attempt == 2
                assert await again.ack()
            await provider.publisher.publish(topic, third)
            await receive_exactly(messages, [third])  # the acked first one never came back


@pytest.mark.parametrize("case", cases(*CASES))
async def test_bad_nack_delays(case: str) -> None:
    """A negative, NaN, infinite or non-number delay: ValueError at once, and the
    message is left unsettled (a valid nack then redelivers it)."""
    async with open_case(case) as provider:
        topic = fresh()
        async with provider.subscriber.subscribe(topic) as messages:
            msg = Message(b"delayed", {"k": "v"})
            await provider.publisher.publish(topic, msg)
            with trio.fail_after(DELIVERY):
                got = await messages.receive()
            for delay in (-1, -0.001, -math.inf, math.nan, math.inf, "1", b"1", [1]):
                with trio.fail_after(AT_ONCE), pytest.raises(ValueError, match="delay"):
                    await got.nack(delay)  # type: ignore[arg-type]
                assert not got.nacked
                assert not got.acked
            assert await got.nack(0)
            with trio.fail_after(DELIVERY):
                again = await messages.receive()
            assert again == msg
            assert again.delivery is not None
            assert again.delivery.attempt == 2
            assert await again.ack()
            after = Message(b"after")
            await provider.publisher.publish(topic, after)
            await receive_exactly(messages, [after])


# -- the router ---------------------------------------------------------------------

#: What a handler with a publish_topic may not return.
WRONG_OUTPUTS: list[object] = ["text", b"bytes", 42, {"k": "v"}, [Message(b"ok"), "text"]]


@pytest.mark.parametrize("case", cases(*CASES))
async def test_handler_returning_the_wrong_type_nacks_its_input(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that returns something other than None, a Message or a sequence of
    Messages (or messages without a publish_topic) fails with HandlerOutputError:
    its input is nacked and redelivered, nothing is published, and the router
    carries on."""
    caplog.set_level(logging.WARNING, logger="piko_trio_events.router")
    wrong: list[tuple[str, object, bool]] = [
        (f"w{i}", output, True) for i, output in enumerate(WRONG_OUTPUTS)
    ]
    wrong.append(("no_publish_topic", Message(b"out"), False))
    async with open_case(case) as provider:
        router = provider.router
        attempts: dict[str, list[int]] = {name: [] for name, _, _ in wrong}
        probed: set[str] = set()
        done = trio.Event()
        topic, out_topic = fresh("router"), fresh("router")

        def make_handler(name: str, output: object) -> Callable[[Message], Awaitable[Any]]:
            async def handle(msg: Message) -> Any:
                if msg.payload == b"probe":
                    probed.add(name)
                    return None
                assert msg.delivery is not None
                attempts[name].append(msg.delivery.attempt)
                if len(attempts[name]) == 1:
                    return output  # wrong: the input is nacked
                if all(len(a) >= 2 for a in attempts.values()):
                    done.set()
                return None

            return handle

        async with provider.subscriber.subscribe(out_topic) as published:
            for name, output, with_topic in wrong:
                router.add_handler(
                    name,
                    topic,
                    make_handler(name, output),
                    publish_topic=out_topic if with_topic else None,
                )
            with trio.fail_after(DELIVERY):
                # NATS handlers subscribe in the background: probe until all listen
                while len(probed) < len(wrong):
                    await provider.publisher.publish(topic, Message(b"probe"))
                    await trio.sleep(0.05)
                await provider.publisher.publish(topic, Message(b"input"))
                await done.wait()
            assert all(a[:2] == [1, 2] for a in attempts.values()), attempts
            # nothing the wrong handlers returned was published (not even the good
            # message in front of the bad element)
            marker = Message(b"marker")
            await provider.publisher.publish(out_topic, marker)
            await receive_exactly(published, [marker])
    # each wrong output failed with HandlerOutputError (logged by the router, as
    # every handler error is), naming the handler
    errors = [
        arg
        for record in caplog.records
        for arg in (record.args if isinstance(record.args, tuple) else ())
        if isinstance(arg, HandlerOutputError)
    ]
    assert len(errors) >= len(wrong), caplog.text
    assert {name for name, _, _ in wrong} <= {
        name for name, _, _ in wrong for e in errors if repr(name) in str(e)
    }


@pytest.mark.parametrize("case", cases(*CASES))
async def test_bad_handler_registration_raises_at_once(case: str) -> None:
    async with open_case(case) as provider:
        router = provider.router

        async def handle(msg: Message) -> None:
            return None

        for topic, publish_topic in (("a..b", None), ("ok", "a.*"), ("ok", "a b"), ("", None)):
            with pytest.raises(InvalidTopicError, match="topic"):
                router.add_handler(f"h{next(_ids)}", topic, handle, publish_topic=publish_topic)
        with pytest.raises(ValueError, match="concurrency"):
            router.add_handler("c", "ok", handle, concurrency=0)
        assert not router.handlers
        topic = fresh()
        async with provider.subscriber.subscribe(topic) as messages:
            msg = Message(b"still fine")
            await provider.publisher.publish(topic, msg)
            await receive_exactly(messages, [msg])


# -- JetStream without auto-provisioning ---------------------------------------------


@pytest.mark.nats
async def test_unknown_stream_with_auto_provision_off() -> None:
    async with open_nats_server(jetstream=True) as server:
        # a stream for "known" exists, made by a provider that provisions
        async with open_nats_provider(nats_config("jetstream", server.url)) as maker:
            await maker.publisher.publish("known.setup", Message(b"setup"))
        config = nats_config("jetstream", server.url, auto_provision=False)
        async with open_nats_provider(config) as provider:

            async def subscribe() -> None:
                async with provider.subscriber.subscribe("unknown.topic"):
                    pytest.fail("subscribed to a topic no stream holds")

            error = await at_once(StreamNotFoundError, "unknown.topic", subscribe)
            assert "auto_provision" in str(error)
            await at_once(
                StreamNotFoundError,
                "unknown.topic",
                lambda: provider.publisher.publish("unknown.topic", Message(b"x")),
            )
            topic = fresh("known")
            async with provider.subscriber.subscribe(topic) as messages:
                msg = Message(b"known", {"k": "v"})
                await provider.publisher.publish(topic, msg)
                await receive_exactly(messages, [msg])


# -- fuzz ---------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def topic_is_valid(topic: object) -> bool:
    """The documented rules (API.md, Topics), written out independently."""
    if not isinstance(topic, str) or not 0 < len(topic) <= 255:
        return False
    if any(c in topic for c in " \t\r\n\f\v*>") or not _utf8(topic):
        return False  # no whitespace; no wildcard, nor a token holding one
    if any(c < " " or c == "\x7f" for c in topic):
        return False  # no control character
    return all(topic.split("."))


def metadata_is_valid(metadata: dict[str, str]) -> bool:
    """NATS header rules: token keys, not ``Nats-`` nor the uuid header; values
    without line breaks or whitespace at either end (str.strip()); all of it
    encodable."""
    for key, value in metadata.items():
        if not _TOKEN.fullmatch(key) or key.lower().startswith("nats-") or key == UUID_HEADER:
            return False
        if "\r" in value or "\n" in value or not _utf8(value):
            return False
        if value != value.strip():
            return False
    return True


def uuid_is_valid(uuid: str | None) -> bool:
    if uuid is None:
        return True
    return bool(uuid) and metadata_is_valid({"k": uuid})


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


_JUNK = ["", " ", "\t", "\r", "\n", "\r\n", ".", "*", ">", ":", "é", "\x00", "\ud800", "\u2028"]
_token_text = st.text(
    # mostly valid: junk (control characters, wildcards, ...) comes from the others
    alphabet=st.characters(exclude_characters=" .*>", exclude_categories=["Cs", "Cc"]),
    min_size=1,
    max_size=12,
)
_valid_topics = (
    st.lists(_token_text, min_size=1, max_size=5).map(".".join).filter(lambda t: len(t) <= 255)
)
# half the topics valid, half junk
topics: st.SearchStrategy[object] = st.one_of(
    _valid_topics,
    st.one_of(
        st.lists(
            st.sampled_from(["a", "b", "é", "$x", "_y", "a*", *_JUNK]), min_size=1, max_size=5
        ).map(".".join),
        st.text(max_size=20),
        st.integers(250, 260).map(lambda n: "l" + "x" * (n - 1)),  # around the length limit
        st.one_of(st.none(), st.integers(), st.binary(max_size=4)),  # not a str
    ),
)
_token_keys = st.from_regex(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,12}", fullmatch=True)
_keys = st.one_of(
    _token_keys,
    st.sampled_from(["Nats-Msg-Id", "nats-x", UUID_HEADER, "Status", "Description", *_JUNK]),
    st.text(max_size=8),
)
_values = st.one_of(
    st.text(max_size=24),
    st.sampled_from(["100", "404", " x", "x ", "a\r\nb", "\ud800", *_JUNK]),
    st.text(st.characters(codec="utf-8"), max_size=200),
)
_safe_values = st.text(max_size=40).map(lambda v: v.replace("\r", "").replace("\n", "").strip())
_valid_metadata = st.dictionaries(_token_keys, _safe_values, max_size=6).filter(metadata_is_valid)
# valid metadata, or valid metadata plus one drawn entry (often junk)
metadatas = st.one_of(
    _valid_metadata,
    st.tuples(_valid_metadata, _keys, _values).map(lambda t: {**t[0], t[1]: t[2]}),
)
uuids = st.one_of(st.none(), st.one_of(st.text(max_size=40), st.sampled_from(_JUNK)))
payloads = st.one_of(
    st.binary(max_size=256),
    st.builds(lambda n, b: bytes([b]) * n, st.integers(1024, 256 * 1024), st.integers(0, 255)),
)
messages_st = st.lists(st.tuples(payloads, metadatas, uuids), min_size=1, max_size=4)

#: Per-example bound: a publish, a round trip, a subscription (JetStream: a consumer).
EXAMPLE_TIMEOUT = 30.0
#: At most this many examples for the NATS providers (each a few server round trips).
NATS_EXAMPLES = 500


async def fuzz_example(
    provider: Provider,
    canary: trio.abc.ReceiveChannel[Message],
    canary_topic: str,
    topic: object,
    drawn: list[tuple[bytes, dict[str, str], str | None]],
    batch: bool,
    stats: Counter[str],
) -> None:
    """Publish the drawn messages to ``topic``, one per call or all in one call:
    each call raises the documented error at once (and publishes nothing), or
    its messages arrive intact. Then the provider still works."""
    publish = provider.publisher.publish
    built: list[tuple[Message, bool]] = []
    for payload, metadata, uuid in drawn:
        if not uuid_is_valid(uuid):
            with pytest.raises(ValueError, match="uuid"):
                Message(payload, metadata, uuid=uuid)
            uuid = None
        built.append((Message(payload, metadata, uuid=uuid), metadata_is_valid(metadata)))
    if not topic_is_valid(topic):
        for msg, _ in built:
            await at_once(InvalidTopicError, "topic", lambda msg=msg: publish(topic, msg))  # type: ignore[arg-type, misc]
    else:
        assert isinstance(topic, str)
        sent = []
        # start="new": a topic drawn again must not replay an earlier example's
        # messages (memory persistent; JetStream's private default anyway)
        async with provider.subscriber.subscribe(topic, start="new") as messages:
            if batch:
                everything = [msg for msg, _ in built]
                if all(valid for _, valid in built):
                    await publish(topic, *everything)
                    sent = everything
                else:
                    await at_once(ValueError, "metadata", lambda: publish(topic, *everything))
            else:
                for msg, valid in built:
                    if valid:
                        await publish(topic, msg)
                        sent.append(msg)
                    else:
                        await at_once(ValueError, "metadata", lambda msg=msg: publish(topic, msg))  # type: ignore[misc]
            await receive_exactly(messages, sent, topic)
        stats["delivered"] += len(sent)
        stats["refused"] += len(built) - len(sent)
    stats["valid topic" if topic_is_valid(topic) else "bad topic"] += 1
    alive = Message(b"canary", {"n": str(next(_ids))})
    await publish(canary_topic, alive)
    await receive_exactly(canary, [alive])


async def run_fuzz(provider: Provider, max_examples: int) -> Counter[str]:
    """Run the hypothesis examples in a worker thread against one open provider:
    each example comes back into trio (``trio.from_thread``) with its own deadline."""
    canary_topic = f"canary{uuid_module.uuid4().hex}.alive"
    stats: Counter[str] = Counter()
    async with provider.subscriber.subscribe(canary_topic) as canary:

        @settings(
            max_examples=max_examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(topic=topics, drawn=messages_st, batch=st.booleans())
        def example(
            topic: object, drawn: list[tuple[bytes, dict[str, str], str | None]], batch: bool
        ) -> None:
            stats["examples"] += 1

            async def bounded() -> None:
                with trio.fail_after(EXAMPLE_TIMEOUT):
                    await fuzz_example(provider, canary, canary_topic, topic, drawn, batch, stats)

            trio.from_thread.run(bounded)

        await trio.to_thread.run_sync(example)
    return stats


@pytest.mark.parametrize("case", cases(*CASES))
async def test_fuzz_topics_metadata_and_payloads(case: str) -> None:
    """No crash, hang or lost message for any topic, metadata, uuid or payload;
    one provider (and server) serves every example."""
    async with open_case(case) as provider:
        limit = settings().max_examples
        if case in NATS_CASES:
            limit = min(limit, NATS_EXAMPLES)
        stats = await run_fuzz(provider, limit)
        print(f"{case}: {dict(stats)}")
        assert stats["examples"] > 0
        assert stats["delivered"] > 0
        assert provider.running
