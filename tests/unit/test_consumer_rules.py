"""The consumer socket's pure rules: who a peer is, what a request may say, what an answer
may carry, and which ``consumer:`` configs load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.consumer.protocol import (
    MAX_ANSWER_BYTES,
    MAX_REQUEST_BYTES,
    BadAnswer,
    decode_answer,
    encode_answer,
    encode_request,
)
from assay.core.errors import AssayError, BadRequest, ConfigError, ScopeDenied
from assay.registry.config import parse_config
from assay.registry.consumers import (
    ConsumerSection,
    Peer,
    PeerRule,
    parse_request,
    principal_for,
    rules,
    sender_of,
)
from assay.registry.errors import NotTrusted, StoredBytesCorrupt

DIGEST = "sha256:" + "ab" * 32
BASE = """
auth: {token_file: {file: t.json}}
audit: {dir: a, hmac_key: {file: k}}
"""


def rule(rid: str, uids: set[int] = frozenset(), gids: set[int] = frozenset()) -> PeerRule:  # type: ignore[assignment]
    return PeerRule(rid, frozenset(uids), frozenset(gids), frozenset({"artifacts:read"}))


def test_a_peer_is_known_by_its_uid_or_any_of_its_groups_and_the_first_rule_wins() -> None:
    table = [rule("one-uid", uids={1001}), rule("group", gids={500}), rule("late", uids={1001})]
    assert principal_for(Peer(1, 1001, 9), table).id == "one-uid"  # type: ignore[union-attr]
    # A supplementary group counts (a DynamicUser consumer's primary gid is dynamic).
    found = principal_for(Peer(1, 64000, 64000, frozenset({64000, 500})), table)
    assert found is not None and found.id == "group" and found.auth_mode == "peer"
    assert principal_for(Peer(1, 2000, 500), table).id == "group"  # type: ignore[union-attr]


def test_a_peer_in_no_rule_is_nobody() -> None:
    assert principal_for(Peer(1, 2000, 2000, frozenset({2000, 7})), [rule("g", gids={500})]) is None
    assert principal_for(Peer(1, 2**32 - 1, 500), [rule("g", gids={500})]) is None  # no creds


def test_group_names_resolve_to_gids_given_at_startup() -> None:
    principal = {"id": "svc", "groups": ["assay-consumers"], "gids": [7], "scopes": ["a:b"]}
    section = ConsumerSection.model_validate({"principals": [principal]})
    (only,) = rules(section, {"assay-consumers": 999})
    assert only.gids == {7, 999}


@pytest.mark.parametrize(
    ("consumer", "problem"),
    [
        ("{socket_mode: 0666}", "consumer.socket_mode"),
        ("{socket_mode: 0460}", "consumer.socket_mode"),
        ("{principals: [{id: a, scopes: [artifacts:read]}]}", "consumer.principals"),
        ("{principals: [{id: a, uids: [1], scopes: []}]}", "consumer.principals"),
        ("{principals: [{id: a, uids: [-1], scopes: [artifacts:read]}]}", "consumer.principals"),
        ("{principals: [{id: a, uids: [1], scopes: [read]}]}", "consumer.principals"),
        (
            "{principals: [{id: '../x', uids: [1], scopes: [artifacts:read]}]}",
            "consumer.principals",
        ),
        (
            "{principals: [{id: a, groups: ['a b'], scopes: [artifacts:read]}]}",
            "consumer.principals",
        ),
        (
            "{principals: [{id: a, uids: [1], scopes: [artifacts:read]},"
            " {id: a, gids: [2], scopes: [artifacts:read]}]}",
            "consumer",
        ),
        ("{sockett: x}", "consumer.sockett"),
        ("{max_connections: 0}", "consumer.max_connections"),
        ("{request_timeout_seconds: 0}", "consumer.request_timeout_seconds"),
        ("{socket_group: 'wheel;'}", "consumer.socket_group"),
    ],
)
def test_unsafe_or_unknown_consumer_settings_stop_startup(consumer: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + f"consumer: {consumer}\n", source=Path("c.yaml"))
    assert caught.value.extra["path"].startswith(problem), caught.value.detail


def test_a_config_without_a_consumer_section_still_loads_with_the_socket_off() -> None:
    cfg = parse_config(BASE, source=Path("c.yaml"))
    assert cfg.consumer.socket is None and cfg.consumer.principals == ()
    on = parse_config(BASE + "consumer: {socket: s.sock, socket_mode: 0600}\n", source=Path("c"))
    assert on.consumer.socket == "s.sock" and on.consumer.socket_mode == 0o600


def test_a_request_names_exactly_one_target_and_may_carry_a_token() -> None:
    by_name = parse_request(b'{"v":1,"name":"demo/tiny"}', max_bytes=MAX_REQUEST_BYTES)
    assert (by_name.name, by_name.digest, by_name.target) == ("demo/tiny", None, "name:demo/tiny")
    by_digest = parse_request(json.dumps({"digest": DIGEST, "token": "t"}).encode(),
                              max_bytes=MAX_REQUEST_BYTES)  # fmt: skip
    assert (by_digest.digest, by_digest.token) == (DIGEST, "t")
    assert parse_request(encode_request("demo/tiny"), max_bytes=MAX_REQUEST_BYTES).name


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{}",
        b"[]",
        b'{"name":"a","digest":"' + DIGEST.encode() + b'"}',
        b'{"name":"../etc/passwd"}',
        b'{"name":"a\\n"}',
        b'{"digest":"sha256:../../x"}',
        b'{"name":1}',
        b'{"name":"a","token":5}',
        b'{"name":"a","name":"b"}',
        b'{"name":"a","extra":1}',
        b'{"v":2,"name":"a"}',
        b'{"name":"a"' + b" " * MAX_REQUEST_BYTES + b"}",
        b"\xff\xfe{}",
        b'{"name":' + b"[" * 100 + b"]" * 100 + b"}",
        b'{"name":NaN}',
    ],
)
def test_a_malformed_request_is_a_typed_refusal(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_request(raw, max_bytes=MAX_REQUEST_BYTES)


@given(st.binary(max_size=MAX_REQUEST_BYTES + 64))
def test_any_bytes_as_a_request_parse_or_are_refused_as_bad_input(raw: bytes) -> None:
    try:
        req = parse_request(raw, max_bytes=MAX_REQUEST_BYTES)
    except BadRequest:
        return
    assert (req.name is None) != (req.digest is None)


TARGETS = st.one_of(st.text(max_size=40), st.just(DIGEST), st.just("a/b"), st.integers(),
                    st.none())  # fmt: skip


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "name", "digest", "token", "x"]), TARGETS))
def test_any_json_object_as_a_request_parses_only_to_a_checked_target(
    obj: dict[str, object],
) -> None:
    try:
        req = parse_request(json.dumps(obj).encode(), max_bytes=MAX_REQUEST_BYTES)
    except BadRequest:
        return
    if req.digest is not None:
        assert req.digest.startswith("sha256:") and len(req.digest) == 71
    else:
        assert req.name is not None and ".." not in req.name.split("/")


@pytest.mark.parametrize("err", [
    NotTrusted("x is revoked"), StoredBytesCorrupt("x failed"),
    ScopeDenied("no", required_scope="artifacts:read"),
    BadRequest("bad", code="request.timeout"),
])  # fmt: skip
def test_a_problem_answer_comes_back_as_the_daemon_s_own_error(err: AssayError) -> None:
    with pytest.raises(type(err)) as caught:
        decode_answer(encode_answer(err.problem()))
    assert caught.value.code == err.code and caught.value.detail == err.detail


def test_an_answer_too_long_is_cut_to_its_stable_parts_and_still_decodes() -> None:
    body = NotTrusted("x" * (2 * MAX_ANSWER_BYTES)).problem()
    raw = encode_answer(body)
    assert len(raw) <= MAX_ANSWER_BYTES
    with pytest.raises(NotTrusted):
        decode_answer(raw)


@pytest.mark.parametrize("raw", [
    b"", b"[]", b"nope", b'{"ok":true}', b'{"ok":true,"digest":"d","size":-1,"name":"n",'
    b'"format":"f","verified_at":"t"}', b'{"ok":true,"digest":"d","size":true,"name":"n",'
    b'"format":"f","verified_at":"t"}', b'{"ok":1}', b"{}", b"\xff",
    b"{" + b" " * MAX_ANSWER_BYTES + b"}",
])  # fmt: skip
def test_an_answer_that_is_neither_header_nor_problem_is_refused(raw: bytes) -> None:
    with pytest.raises(BadAnswer):
        decode_answer(raw)


def test_a_request_too_large_to_send_is_refused_before_sending() -> None:
    with pytest.raises(BadRequest):
        encode_request("a" * MAX_REQUEST_BYTES)


CONNECTED = Peer(pid=10, uid=0, gid=0, groups=frozenset({0, 54320}))


@settings(max_examples=200, deadline=None)
@given(pid=st.integers(0, 2**31 - 1), uid=st.integers(0, 2**32 - 2), gid=st.integers(0, 2**32 - 2))
def test_attack_a_socket_connected_by_one_uid_speaks_only_for_its_sender(
    pid: int, uid: int, gid: int
) -> None:
    """SO_PEERCRED is frozen at connect(): a request is authorized as the credentials on
    its own message, and the opener's supplementary groups never follow another sender."""
    table = [rule("root", uids={0}), rule("group", gids={54320})]
    sender = sender_of((pid, uid, gid), CONNECTED)
    found = principal_for(sender, table)
    if (pid, uid, gid) == (10, 0, 0):
        assert sender == CONNECTED and found is not None and found.id == "root"
        return
    assert (sender.pid, sender.uid, sender.gid) == (pid, uid, gid)
    assert sender.groups == {gid} and sender.fields()["connected_uid"] == 0
    expected = "root" if uid == 0 else "group" if gid == 54320 else None
    assert (found.id if found else None) == expected


def test_attack_a_message_without_credentials_is_nobody() -> None:
    sender = sender_of(None, CONNECTED)
    assert principal_for(sender, [rule("any", uids={0}, gids={0})]) is None


def test_attack_empty_request_is_a_typed_refusal() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request(b"", max_bytes=MAX_REQUEST_BYTES)
    assert caught.value.code == "request.empty"
