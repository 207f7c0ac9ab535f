"""The direct upload path against hypercorn's own, on generated request heads.

Two real daemons: one with the direct path (the default), one with
``registry.direct_upload: false`` so hypercorn reads every upload. Each example sends
both the same bytes: an upload head built from hostile pieces (bare-LF and CRLF line
ends mixed, obs-fold, duplicate and odd ``Content-Length`` values, ``Transfer-Encoding``
in the clear or folded into another header, random casing, NULs), the sample as its
body, and a second, pipelined upload of another file, split into TCP segments at
random points. The two daemons must agree on accept or refuse, and on the body they
stored (by digest), which must be exactly the body h11 itself frames from the same
bytes: where the head ends is where h11 says, and the pipelined upload is never read
as part of the body.

Two differences are hypercorn's, and allowed. It cannot answer once a client
half-closes mid-body (it treats EOF as the end of the connection), where the direct
path answers 400 ``request.incomplete``. And bytes after a request that asked to close
can make it answer a bare 400 in place of the app's answer (the direct path ignores
them, as RFC 9112 section 9.6 says to).
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import h11
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import SAMPLES, Deployment, init_deployment
from tests.e2e.wire import connect

pytestmark = pytest.mark.e2e

ST = (SAMPLES / "sample.safetensors").read_bytes()
GG = (SAMPLES / "sample.gguf").read_bytes()
TOKEN = "{token}"  # filled per daemon: both tokens have the same length


@dataclass
class Pair:
    direct: Deployment
    hypercorn: Deployment


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    direct = init_deployment(tmp_path_factory.mktemp("direct"), max_bytes=1024 * 1024)
    plain = init_deployment(tmp_path_factory.mktemp("plain"), max_bytes=1024 * 1024)
    plain.edit_config(
        "  sweep_interval_seconds: 3600\n",
        "  sweep_interval_seconds: 3600\n  direct_upload: false\n",
    )
    assert len(direct.admin_token) == len(plain.admin_token)
    try:
        direct.start()
        plain.start()
        yield Pair(direct, plain)
    finally:
        direct.stop()
        plain.stop()


# --- generated requests ---------------------------------------------------------------------

EOL = st.sampled_from([b"\r\n", b"\n"])
VALID_LENGTHS = [b"{n}", b" {n}", b"{n} ", b"0{n}", b"{n},{n}", b"{n}, {n}", b"{m}"]
ODD_LENGTHS = [b"+{n}", b"{n}, {m}", b"0", b"-1", b"0x{n}", b"", b"{n}\x00", b"9" * 23]
LENGTH_VALUES = st.one_of(st.sampled_from(VALID_LENGTHS), st.sampled_from(ODD_LENGTHS))
TE_VALUES = st.sampled_from([b"chunked", b"Chunked", b" chunked", b"gzip, chunked", b"identity"])


def recase(draw: st.DrawFn, name: bytes) -> bytes:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return bytes(
        c ^ 0x20 if flip and chr(c).isalpha() else c for c, flip in zip(name, flips, strict=True)
    )


@st.composite
def upload_requests(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """(request bytes with the token left as ``{token}``, segment split points)."""
    n, m = len(ST), len(ST) + draw(st.integers(1, 64))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    lines: list[bytes] = [
        b"POST /v1/artifacts?name=fz%2F{serial}&meta=source%3Dt&meta=license%3Dmit " + version,
        recase(draw, b"host") + b": fuzz",
        recase(draw, b"authorization") + b": Bearer " + TOKEN.encode(),
    ]
    chunked = draw(st.booleans()) and draw(st.booleans())  # a quarter of the examples
    if chunked:
        lines.append(recase(draw, b"transfer-encoding") + b": " + draw(TE_VALUES))
    for _ in range(draw(st.integers(0 if chunked else 1, 2))):
        value = draw(LENGTH_VALUES).replace(b"{n}", b"%d" % n).replace(b"{m}", b"%d" % m)
        lines.append(
            recase(draw, b"content-length") + b":" + draw(st.sampled_from([b" ", b""])) + value
        )
    for _ in range(draw(st.integers(0, 3))):  # extra lines anywhere after the first
        harmless = [
            b"X-Pad: " + b"a" * draw(st.integers(0, 300)),
            b"Expect: 100-continue",
            b"Connection: close",
            b"Connection: keep-alive",
            b"X-Empty:",
        ]
        hostile = [
            b" folded continuation",  # obs-fold of the line before
            b"\tTransfer-Encoding: chunked",  # TE hidden in an obs-fold
            b"X-Nul: a\x00b",
            b": no-name",
            b"X-Bare-CR: a\rb",
        ]
        extra = draw(st.one_of(st.sampled_from(harmless), st.sampled_from(hostile)))
        lines.insert(draw(st.integers(1, len(lines))), extra)
    ending = draw(st.sampled_from(["crlf", "lf", "lf", "mixed", "mixed"]))
    line_end = {"crlf": st.just(b"\r\n"), "lf": st.just(b"\n"), "mixed": EOL}[ending]
    eols = [draw(line_end) for _ in range(len(lines) + 1)]
    head = b"".join(line + end for line, end in zip(lines, eols[:-1], strict=True)) + eols[-1]
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(ST), ST) if chunked else ST
    pipelined = (
        b"POST /v1/artifacts?name=fz%2Fpipelined&meta=source%3Dt&meta=license%3Dmit HTTP/1.1"
        b"\r\nHost: fuzz\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(GG), GG)
    )
    data = head + body + pipelined
    splits = sorted(draw(st.lists(st.integers(1, len(data) - 1), max_size=2, unique=True)))
    return data, splits


# --- the reference and the exchange -----------------------------------------------------------


@dataclass
class Framing:
    body: bytes | None  # None: h11 refuses the head, or the body does not end in the data
    closes: bool  # the request asked to close (Connection: close, HTTP/1.0)


def h11_framing(data: bytes) -> Framing:
    """What h11 itself frames as the first request's body in ``data``."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    body = bytearray()
    try:
        for _ in range(10_000):
            event = conn.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Framing(bytes(body), conn.their_state is h11.MUST_CLOSE)
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                break
    except h11.RemoteProtocolError:
        pass
    return Framing(None, False)


@dataclass
class Answer:
    status: int | None  # None: the connection closed without an answer
    code: str | None
    digest: str | None
    header_names: frozenset[str]

    @property
    def accepted(self) -> bool:
        return self.status in (200, 201)


def exchange(dep: Deployment, data: bytes, splits: list[int]) -> Answer:
    data = data.replace(TOKEN.encode(), dep.admin_token.encode())
    cuts = [0, *splits, len(data)]
    with connect(dep.port) as sock:
        try:
            for i, (a, b) in enumerate(itertools.pairwise(cuts)):
                if i:
                    time.sleep(0.02)  # a separate segment (TCP_NODELAY)
                sock.sendall(data[a:b])
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # answered and closed early (EPIPE, ECONNRESET, ENOTCONN): still readable
        try:
            resp = http.client.HTTPResponse(sock, method="POST")
            resp.begin()
            raw = resp.read()
        except (http.client.RemoteDisconnected, http.client.IncompleteRead, ConnectionError):
            return Answer(None, None, None, frozenset())
    names = frozenset(k.lower() for k, _v in resp.getheaders()) - {"connection"}
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {}
    digest = doc.get("artifact", {}).get("digest") if isinstance(doc, dict) else None
    code = doc.get("code") if isinstance(doc, dict) else None
    return Answer(resp.status, code, digest, names)


SERIAL = itertools.count()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(upload_requests())
def test_direct_path_and_hypercorn_frame_every_generated_upload_alike(
    pair: Pair, request_bytes: tuple[bytes, list[int]]
) -> None:
    template, splits = request_bytes
    data = template.replace(b"{serial}", b"%d" % next(SERIAL))
    direct = exchange(pair.direct, data, splits)
    plain = exchange(pair.hypercorn, data, splits)

    framing = h11_framing(data.replace(TOKEN.encode(), pair.direct.admin_token.encode()))
    event(f"direct {direct.status}, hypercorn {plain.status}, h11 frames a body: "
          f"{framing.body is not None}, segments: {len(splits) + 1}")  # fmt: skip

    # 1. Both accept or both refuse. (Bytes after a request that asked to close are
    #    ignored by both, RFC 9112 9.6: hypercorn's h11 refuses them, and
    #    ``core.refusals`` lets the app's own answer go out instead of a bare 400.)
    assert direct.accepted == plain.accepted, (direct, plain)
    # 2. Where both answered, they answered alike (hypercorn cannot answer after the
    #    client half-closed mid-body; the direct path says request.incomplete).
    if direct.status is not None and plain.status is not None:
        assert (direct.status, direct.code) == (plain.status, plain.code), (direct, plain)
        assert direct.header_names == plain.header_names, (direct, plain)
    elif plain.status is None:
        assert direct.status is None or direct.code == "request.incomplete", direct
    else:
        raise AssertionError(f"only hypercorn answered: {plain}")
    # 3. What was stored is exactly the body h11 frames: the head ended where h11 says,
    #    and the pipelined upload was never part of it.
    if direct.accepted:
        assert framing.body is not None, direct
        expected = "sha256:" + hashlib.sha256(framing.body).hexdigest()
        assert direct.digest == expected
        assert plain.digest in (expected, None)
        assert direct.digest != "sha256:" + hashlib.sha256(GG).hexdigest()
