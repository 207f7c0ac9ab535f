"""Promotion policy: every rule evaluated, every failure named."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.registry.policy import Facts, Policy, evaluate, signed_message

DIGEST = "sha256:" + "ab" * 32


def facts(**kw: object) -> Facts:
    base: dict[str, object] = {
        "digest": DIGEST,
        "format": "safetensors",
        "size": 100,
        "metadata": {"source": "hf", "license": "mit"},
        "approvers": frozenset({"alice"}),
    }
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def policy(**kw: object) -> Policy:
    base: dict[str, object] = {"name": "p", "required_metadata": ["source", "license"]}
    base.update(kw)
    return Policy.model_validate(base)


def test_clean_artifact_passes_every_rule() -> None:
    d = evaluate(policy(), facts())
    assert d.allowed and not d.failed
    assert len(d.passed) == 4


def test_refusal_lists_every_failed_rule_not_just_the_first() -> None:
    d = evaluate(
        policy(allowed_formats=["gguf"], max_size_bytes=10),
        facts(metadata={}, format="safetensors", size=11),
    )
    assert not d.allowed
    rules = {f.split(":")[0] for f in d.failed}
    assert rules == {"allowed_formats", "max_size_bytes", "required_metadata"}


def test_two_person_rule_waits_for_a_second_distinct_approver() -> None:
    p = policy(approvals_required=2)
    first = evaluate(p, facts(approvers=frozenset({"alice"})))
    assert not first.allowed and first.awaiting_approvals
    same_again = evaluate(p, facts(approvers=frozenset({"alice"})))
    assert not same_again.allowed
    second = evaluate(p, facts(approvers=frozenset({"alice", "bob"})))
    assert second.allowed


def test_missing_approvals_with_other_failures_is_not_merely_awaiting() -> None:
    d = evaluate(policy(approvals_required=2), facts(metadata={}))
    assert not d.allowed and not d.awaiting_approvals


def test_empty_metadata_value_does_not_satisfy_required_key() -> None:
    d = evaluate(policy(), facts(metadata={"source": "", "license": "mit"}))
    assert any("source" in f for f in d.failed)


def _keypair() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return key, base64.b64encode(pub).decode()


def test_publisher_signature_over_the_digest_is_accepted() -> None:
    key, pub = _keypair()
    p = policy(publisher_signature={"required": True, "keys": [{"id": "pub1", "public_key": pub}]})
    sig = base64.b64encode(key.sign(signed_message(DIGEST))).decode()
    assert evaluate(p, facts(signatures=(("pub1", sig),))).allowed


def test_signature_over_another_digest_is_refused() -> None:
    key, pub = _keypair()
    p = policy(publisher_signature={"required": True, "keys": [{"id": "pub1", "public_key": pub}]})
    sig = base64.b64encode(key.sign(signed_message("sha256:" + "cd" * 32))).decode()
    d = evaluate(p, facts(signatures=(("pub1", sig),)))
    assert not d.allowed and any("publisher_signature" in f for f in d.failed)


def test_signature_from_unconfigured_key_is_refused() -> None:
    key, _pub = _keypair()
    _other, pub2 = _keypair()
    p = policy(publisher_signature={"required": True, "keys": [{"id": "pub1", "public_key": pub2}]})
    sig = base64.b64encode(key.sign(signed_message(DIGEST))).decode()
    assert not evaluate(p, facts(signatures=(("pub1", sig), ("evil", sig)))).allowed


def test_garbage_signature_is_refused_not_crashing() -> None:
    _key, pub = _keypair()
    p = policy(publisher_signature={"required": True, "keys": [{"id": "pub1", "public_key": pub}]})
    assert not evaluate(p, facts(signatures=(("pub1", "!!notbase64"),))).allowed


def test_an_approval_that_no_longer_counts_is_named_and_not_counted() -> None:
    p = policy(approvals_required=2)
    d = evaluate(
        p,
        facts(
            approvers=frozenset({"alice", "bob"}),
            not_counted=(("alice", "token revoked"),),
        ),
    )
    assert not d.allowed and d.awaiting_approvals
    (rule,) = [f for f in d.failed if f.startswith("approvals_required")]
    assert rule == (
        "approvals_required: 1/2 distinct approvers (not counted: alice: token revoked)"
    )
    enough = evaluate(
        p,
        facts(
            approvers=frozenset({"alice", "bob", "carol"}),
            not_counted=(("alice", "token revoked"),),
        ),
    )
    assert enough.allowed
    assert "approvals_required: 2/2 (not counted: alice: token revoked)" in enough.passed


@settings(max_examples=200, deadline=None)
@given(
    approvers=st.frozensets(st.sampled_from("abcdefg"), max_size=7),
    void=st.frozensets(st.sampled_from("abcdefg"), max_size=7),
    required=st.integers(1, 7),
)
def test_a_promotion_never_counts_an_approval_that_no_longer_counts(
    approvers: frozenset[str], void: frozenset[str], required: int
) -> None:
    d = evaluate(
        policy(approvals_required=required),
        facts(approvers=approvers, not_counted=tuple((v, "token revoked") for v in sorted(void))),
    )
    assert d.allowed == (len(approvers - void) >= required)
