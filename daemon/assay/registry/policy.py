"""Promotion policy: a pure evaluation of declared rules against facts.

The daemon gathers the facts (re-hashed digest, re-inspected format, size, metadata,
approvals, publisher signatures); this module only decides. A refusal names every rule
that failed, not just the first, so an admin can fix them all at once.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import Field

from assay.core.schema import Strict

PUBLISHER_SIGNATURE_DOMAIN = b"assay-publisher-v1\x00"


class PublisherKey(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    #: Raw 32-byte Ed25519 public key, base64.
    public_key: str


class PublisherRule(Strict):
    required: bool = False
    keys: tuple[PublisherKey, ...] = ()


class Policy(Strict):
    """One ``policies/*.yaml`` file."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    description: str = ""
    allowed_formats: tuple[str, ...] = ("safetensors", "gguf")
    max_size_bytes: int = Field(default=64 * 1024**3, ge=1)
    required_metadata: tuple[str, ...] = ()
    approvals_required: int = Field(default=1, ge=1, le=16)
    publisher_signature: PublisherRule = PublisherRule()


@dataclass(frozen=True)
class Facts:
    """What the daemon established about an artifact just now, for this decision."""

    digest: str
    format: str
    size: int
    metadata: Mapping[str, str]
    #: Token ids that approved and may still approve now.
    approvers: frozenset[str]
    #: (key_id, base64 signature) pairs offered for this artifact.
    signatures: tuple[tuple[str, str], ...] = ()
    #: (token id, why) for approvals on record that no longer count: the token was
    #: revoked, removed, or lost ``artifacts:promote`` since it approved.
    not_counted: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    failed: tuple[str, ...]
    passed: tuple[str, ...]
    #: True when every rule but the approval count passed: more approvals can still promote.
    awaiting_approvals: bool = False
    notes: dict[str, object] = field(default_factory=dict)


def signed_message(digest: str) -> bytes:
    """What a publisher signs: a domain tag and the ``sha256:<hex>`` digest."""
    return PUBLISHER_SIGNATURE_DOMAIN + digest.encode()


def _signature_valid(policy: Policy, digest: str, key_id: str, sig_b64: str) -> bool:
    for key in policy.publisher_signature.keys:
        if key.id != key_id:
            continue
        try:
            public = Ed25519PublicKey.from_public_bytes(
                base64.b64decode(key.public_key, validate=True)
            )
            public.verify(base64.b64decode(sig_b64, validate=True), signed_message(digest))
        except (InvalidSignature, ValueError, binascii.Error):
            return False
        return True
    return False


def evaluate(policy: Policy, facts: Facts) -> Decision:
    """Evaluate every rule; each check is numbered and named after the rule it enforces."""
    failed: list[str] = []
    passed: list[str] = []

    # Step 1 (POL-1 allowed_formats): the re-inspected format is on the list.
    if facts.format in policy.allowed_formats:
        passed.append(f"allowed_formats: {facts.format}")
    else:
        failed.append(f"allowed_formats: {facts.format} not in {', '.join(policy.allowed_formats)}")

    # Step 2 (POL-2 max_size_bytes): the stored size is within the limit.
    if facts.size <= policy.max_size_bytes:
        passed.append(f"max_size_bytes: {facts.size} <= {policy.max_size_bytes}")
    else:
        failed.append(f"max_size_bytes: {facts.size} > {policy.max_size_bytes}")

    # Step 3 (POL-3 required_metadata): every required key is present and non-empty.
    missing = [k for k in policy.required_metadata if not facts.metadata.get(k)]
    if missing:
        failed.append(f"required_metadata: missing {', '.join(missing)}")
    else:
        passed.append("required_metadata: present")

    # Step 4 (POL-4 publisher_signature): a configured publisher key signed the digest.
    if policy.publisher_signature.required:
        good = sorted(
            {
                kid
                for kid, sig in facts.signatures
                if _signature_valid(policy, facts.digest, kid, sig)
            }
        )
        if good:
            passed.append(f"publisher_signature: valid from {', '.join(good)}")
        else:
            failed.append("publisher_signature: no valid signature from a configured publisher key")

    # Step 5 (POL-5 approvals_required): distinct token ids approved (two-person rule at 2),
    # counting only approvals whose token may still approve; the others are named.
    counted = facts.approvers - {token_id for token_id, _why in facts.not_counted}
    have = len(counted)
    approvals_ok = have >= policy.approvals_required
    ignored = "; ".join(f"{tid}: {why}" for tid, why in sorted(facts.not_counted))
    suffix = f" (not counted: {ignored})" if ignored else ""
    if approvals_ok:
        passed.append(f"approvals_required: {have}/{policy.approvals_required}{suffix}")
    else:
        failed.append(
            f"approvals_required: {have}/{policy.approvals_required} distinct approvers{suffix}"
        )

    awaiting = not approvals_ok and len(failed) == 1
    return Decision(
        allowed=not failed,
        failed=tuple(failed),
        passed=tuple(passed),
        awaiting_approvals=awaiting,
        notes={"approvals": have, "approvals_required": policy.approvals_required},
    )
