"""Hypothesis strategies for raw requests an outside attacker can send.

Shared by the registry's and the relay's edge searches. Everything a client chooses is
drawn: the method, the path (long, percent-encoded junk, raw unicode, traversal), the
query (any unicode in names and values, empty names, thousands of parameters, huge
keys), and the headers that flow into records (``X-Purpose``, ``X-Request-Id``) or
decide who is asking (a real credential, junk, none), sometimes with bytes the HTTP
parser must refuse, and sometimes a request to switch protocols (a WebSocket handshake,
whole or in part, or ``Upgrade: h2c``), which neither daemon may take. Sizes stay under
the parser's 1 MiB bound on an incomplete head, past which the answer is a connection
close by design.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote_from_bytes

from hypothesis import strategies as st

from tests.rawhttp import request

#: Any code point, lone surrogates and controls included.
ANY_CHAR = st.characters(codec=None)
TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=12),
    st.text(ANY_CHAR, min_size=200, max_size=1500),
    st.builds(lambda c, n: c * n, ANY_CHAR, st.integers(0, 6000)),
)
#: Header values: visible bytes mostly, sometimes ones h11 refuses (NUL, CR, DEL, 8-bit).
CLEAN_VALUE = st.binary(max_size=40).map(lambda b: bytes(c for c in b if 0x20 <= c < 0x7F))
HEADER_VALUE = st.one_of(
    CLEAN_VALUE,
    CLEAN_VALUE,  # clean values mostly, so requests get past the parser to the app
    CLEAN_VALUE,
    st.builds(lambda c, n: bytes([c]) * n, st.integers(0x21, 0x7E), st.integers(0, 9000)),
    st.binary(min_size=1, max_size=40),
)


def encoded(text: str) -> bytes:
    """Percent-encoded UTF-8, surrogates kept as the invalid bytes they would be."""
    return quote_from_bytes(text.encode("utf-8", "surrogatepass"), safe="").encode()


RAW_PARAM = st.sampled_from([b"=", b"&", b"==", b"a", b"%", b"%zz", b"%00=%ff", b";"])


def query_strategy(names: Sequence[str]) -> st.SearchStrategy[bytes]:
    """Junk names and values, the route's own parameter names with junk values, raw
    separators, and thousands of parameters with empty, huge or non-ASCII names."""
    known = st.sampled_from([n.encode() for n in names] or [b"name"])
    param = st.one_of(
        st.tuples(TEXT.map(encoded), TEXT.map(encoded)),
        st.tuples(known, TEXT.map(encoded)),
        st.tuples(known, st.sampled_from([b"1", b"0", b"-1", b"99999999", b"", b"a,b"])),
    ).map(b"=".join)
    return st.one_of(
        st.lists(st.one_of(param, param, RAW_PARAM), max_size=6).map(b"&".join),
        st.builds(
            lambda n, stem: b"&".join(b"%s%d=1" % (stem, i) for i in range(n)),
            st.integers(60, 3000),
            st.sampled_from([b"p", b"", b"k" * 300, b"%e2%80%a6"]),
        ),
    )


COMMON_METHODS = st.sampled_from([b"GET", b"GET", b"POST", b"DELETE", b"PUT", b"HEAD"])
METHOD = st.one_of(
    COMMON_METHODS,
    COMMON_METHODS,  # listed twice: weighs the search towards what reaches the routes
    COMMON_METHODS,
    st.sampled_from([b"OPTIONS", b"TRACE", b"PATCH", b"PRI"]),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ!#$%&'*+-.^_`|~0123456789", min_size=1, max_size=50).map(
        str.encode
    ),
    st.builds(lambda n: b"X" * n, st.integers(100, 5000)),
)


def path_strategy(known: Sequence[str]) -> st.SearchStrategy[bytes]:
    """Real routes (so authentication and scopes run), junk, and raw bytes."""
    segment = st.one_of(st.sampled_from([b"..", b".", b"", b"%2e%2e", b"v1"]), TEXT.map(encoded))
    routes = st.sampled_from([p.encode() for p in known])
    return st.one_of(
        routes,
        routes,  # twice: half the paths reach a real route (and its auth)
        routes,
        st.lists(segment, max_size=6).map(lambda segs: b"/" + b"/".join(segs)),
        st.builds(
            lambda p, n: p.encode() + b"/" + b"x" * n,
            st.sampled_from(known),
            st.integers(1000, 9000),
        ),
        st.binary(max_size=30).map(lambda b: b"/" + b),
        st.just(b"*"),
    )


#: Pieces of protocol switches: hypercorn handed a WebSocket handshake to the app as a
#: scope no route served (a bare 500, no record), and answered one it judged malformed
#: with a bare 400 of its own.
UPGRADE_PIECES: list[tuple[bytes, bytes]] = [
    (b"Connection", b"Upgrade"),
    (b"Connection", b"keep-alive, Upgrade"),
    (b"Upgrade", b"websocket"),
    (b"Upgrade", b"WebSocket"),
    (b"Upgrade", b"h2c"),
    (b"Upgrade", b"websocket, h2c"),
    (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"Sec-WebSocket-Version", b"13"),
    (b"Sec-WebSocket-Version", b"8"),
    (b"HTTP2-Settings", b"AAMAAABkAAQCAAAAAAIAAAAA"),
]
HANDSHAKE = [UPGRADE_PIECES[i] for i in (0, 2, 6, 7)]
UPGRADE = st.one_of(
    st.just([]),
    st.just([]),
    st.just([]),  # mostly none, so the rest of the search keeps its weight
    st.just(HANDSHAKE),
    st.lists(st.sampled_from(UPGRADE_PIECES), max_size=4),
)


def headers_strategy(
    credentials: Sequence[tuple[bytes, bytes]],
) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    real = st.sampled_from(credentials)
    return st.lists(
        st.one_of(
            real,
            real,
            st.tuples(st.sampled_from([b"Authorization", b"X-API-Key"]), HEADER_VALUE),
            st.tuples(st.just(b"X-Purpose"), HEADER_VALUE),
            st.tuples(st.just(b"X-Request-Id"), HEADER_VALUE),
            st.tuples(
                st.sampled_from([b"Accept", b"Assay-Digest", b"Content-Type", b"X-Junk"]),
                HEADER_VALUE,
            ),
            st.just((b"Expect", b"100-continue")),
            st.just((b"Accept", b"application/jose")),
        ),
        max_size=4,
    )


BODY = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    st.sampled_from([b"{}", b'{"reason": "x"}', b"[]", b"null"]),
    st.builds(lambda n: b"{" * n, st.integers(2000, 300_000)),  # over the JSON cap
)


def request_strategy(
    known: Sequence[str],
    credentials: Sequence[tuple[bytes, bytes]],
    names: Sequence[str] = (),
) -> st.SearchStrategy[bytes]:
    """Half plausible (a real route and method, clean headers with or without the real
    credential, junk only in the query and values), half junk everywhere."""

    def build(method: bytes, path: bytes, query: bytes | None, headers: list[tuple[bytes, bytes]],
              host: bool, body: bytes, upgrade: list[tuple[bytes, bytes]]) -> bytes:  # fmt: skip
        target = path if query is None else path + b"?" + query
        return request(method, target, headers + upgrade, body, host=host)

    query = st.one_of(st.none(), query_strategy(names))
    clean = st.tuples(
        st.sampled_from([b"X-Purpose", b"X-Request-Id", b"Accept", b"X-Junk"]), CLEAN_VALUE
    )
    plausible = st.builds(
        build,
        COMMON_METHODS,
        st.sampled_from([p.encode() for p in known]),
        query,
        st.lists(st.one_of(st.sampled_from(credentials), clean), max_size=3),
        st.just(True),
        BODY,
        UPGRADE,
    )
    junk = st.builds(
        build,
        METHOD,
        path_strategy(known),
        query,
        headers_strategy(credentials),
        st.sampled_from([True] * 7 + [False]),  # Host, mostly
        BODY,
        UPGRADE,
    )
    return st.one_of(plausible, junk)
