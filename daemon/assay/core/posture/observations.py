"""What a probe saw on the host, as plain values, and the rules that turn it into hits.

Why split from the probe: the probe (``assay.core.posture.probe``) touches files, runs
``systemd-analyze`` and reads the audit log; everything it learns lands in
``Observations``, and the decision "is this a finding" is made here, over values, so the
property tests can feed it any deployment without building one on disk. Pure.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

#: A key older than this is a ``POS-KEY-AGE`` finding.
MAX_KEY_AGE_SECONDS = 365 * 86_400
#: A unit whose ``systemd-analyze security`` exposure exceeds this is ``POS-UNIT-SANDBOX``.
MAX_EXPOSURE = 4.0
#: Records may wait this many checkpoint intervals (plus a minute) for their checkpoint.
CHECKPOINT_GRACE_INTERVALS = 2

PathKind = Literal["config", "secret", "state"]


@dataclass(frozen=True)
class Bind:
    address: str
    loopback: bool


@dataclass(frozen=True)
class PathMode:
    """One file or directory whose mode matters. ``mode`` None: it does not exist."""

    role: str
    path: str
    kind: PathKind
    mode: int | None
    symlink: bool = False
    #: Owned by root or by the user the daemon runs as.
    owner_ok: bool = True


@dataclass(frozen=True)
class SecretCheck:
    """One secret the config names, judged against what it claims to be."""

    role: str
    source: Literal["file", "env", "credential"]
    #: Why it is not what it claims (wrong kind, unparsable, too short); None = it is.
    invalid: str | None = None
    #: Why it is not random enough; None = no sign of it.
    weak: str | None = None
    #: Why it holds a raw credential where only fingerprints belong; None = it does not.
    raw_credential: str | None = None
    #: Seconds since it was created (file mtime or a recorded creation); None = unknown.
    age_seconds: float | None = None
    is_key: bool = True


@dataclass(frozen=True)
class UnitScore:
    unit: str
    path: str | None
    #: systemd's overall exposure (0 safest .. 10); None = no unit file was found.
    exposure: float | None
    method: Literal["systemd-analyze", "directives", "none"] = "none"


@dataclass(frozen=True)
class AuditState:
    #: The whole chain was verified (with the HMAC key); False = not checked this time.
    verified: bool = False
    breaks: tuple[str, ...] = ()
    records: int = 0
    signing_configured: bool = True
    #: The latest checkpoint's age; None = no checkpoint at all.
    checkpoint_age_seconds: float | None = None
    #: Age of the oldest record no checkpoint covers; None = every record is covered.
    uncovered_age_seconds: float | None = None
    checkpoint_interval_seconds: float = 60.0


@dataclass(frozen=True)
class Observations:
    daemon: Literal["registry", "relay"]
    binds: tuple[Bind, ...] = ()
    paths: tuple[PathMode, ...] = ()
    secrets: tuple[SecretCheck, ...] = ()
    units: tuple[UnitScore, ...] = ()
    audit: AuditState = field(default_factory=AuditState)
    fault_injection: bool = False


@dataclass(frozen=True)
class Hit:
    """One reason a finding fires: what, about which subject, in words for the operator."""

    finding: str
    subject: str
    detail: str


def _mode_hits(p: PathMode) -> Iterator[Hit]:
    if p.mode is None:
        return
    if p.kind == "secret":
        bad = p.mode & 0o077
        finding = "POS-MODE-SECRET"
    elif p.kind == "config":
        # A sticky directory (/tmp) may be writable by others, as assay.core.trusted_files
        # allows: only the owner can replace what is in it.
        bad = 0 if p.mode & 0o1000 else p.mode & 0o022
        finding = "POS-MODE-CONFIG"
    else:
        bad = p.mode & 0o007
        finding = "POS-MODE-STATE"
    if bad:
        yield Hit(finding, p.role, f"{p.path} has mode {p.mode:04o}")
    if p.symlink and p.kind != "state":
        yield Hit(finding, p.role, f"{p.path} is a symlink")
    if not p.owner_ok and p.kind != "state":
        yield Hit(finding, p.role, f"{p.path} is owned by another user")


def _secret_hits(s: SecretCheck) -> Iterator[Hit]:
    if s.invalid is not None:
        yield Hit("POS-SECRET-INVALID", s.role, s.invalid)
    if s.weak is not None:
        yield Hit("POS-SECRET-WEAK", s.role, s.weak)
    if s.raw_credential is not None:
        yield Hit("POS-TOKEN-RAW", s.role, s.raw_credential)
    if s.source == "env":
        yield Hit("POS-SECRET-ENV", s.role, "passed in an environment variable")
    if s.is_key and s.age_seconds is not None and s.age_seconds > MAX_KEY_AGE_SECONDS:
        days = int(s.age_seconds // 86_400)
        yield Hit("POS-KEY-AGE", s.role, f"{days} days old")


def _unit_hits(u: UnitScore) -> Iterator[Hit]:
    if u.exposure is None:
        yield Hit("POS-UNIT-UNSCORED", u.unit, "no unit file found")
    elif u.exposure > MAX_EXPOSURE:
        yield Hit("POS-UNIT-SANDBOX", u.unit,
                  f"exposure {u.exposure:.1f} > {MAX_EXPOSURE} ({u.method})")  # fmt: skip


def _audit_hits(a: AuditState) -> Iterator[Hit]:
    if a.verified and a.breaks:
        shown = "; ".join(a.breaks[:3])
        more = f" (+{len(a.breaks) - 3} more)" if len(a.breaks) > 3 else ""
        yield Hit("POS-AUDIT-CHAIN", "audit", f"{len(a.breaks)} break(s): {shown}{more}")
    if not a.signing_configured:
        yield Hit("POS-AUDIT-UNSIGNED", "audit", "audit.signing_key is not set")
    if not a.signing_configured or a.uncovered_age_seconds is None:
        return  # unsigned logs have no checkpoints (POS-AUDIT-UNSIGNED says so)
    grace = CHECKPOINT_GRACE_INTERVALS * a.checkpoint_interval_seconds + 60.0
    if a.uncovered_age_seconds > grace:
        since = ("no checkpoint" if a.checkpoint_age_seconds is None
                 else f"last checkpoint {int(a.checkpoint_age_seconds)} s old")  # fmt: skip
        yield Hit(
            "POS-CHECKPOINT-STALE",
            "audit",
            f"a record has waited {int(a.uncovered_age_seconds)} s for a checkpoint "
            f"(grace {int(grace)} s; {since})",
        )


def hits(obs: Observations) -> list[Hit]:
    """Every reason a catalogue finding fires for these observations (before gates)."""
    out: list[Hit] = []
    out += [Hit("POS-BIND-NONLOOPBACK", b.address, f"listens on {b.address}")
            for b in obs.binds if not b.loopback]  # fmt: skip
    for p in obs.paths:
        out.extend(_mode_hits(p))
    for s in obs.secrets:
        out.extend(_secret_hits(s))
    for u in obs.units:
        out.extend(_unit_hits(u))
    out.extend(_audit_hits(obs.audit))
    if obs.fault_injection:
        out.append(Hit("POS-FAULT-INJECTION", "watchdog", "watchdog.allow_fault_injection"))
    return out


def raw_token_shape(text: str, prefix: str, body_chars: int) -> bool:
    """Does ``text`` contain something shaped like a raw token (``prefix`` + base64url)?"""
    start = text.find(prefix)
    while start != -1:
        body = text[start + len(prefix) : start + len(prefix) + body_chars]
        if len(body) == body_chars and all(c.isalnum() or c in "-_" for c in body):
            return True
        start = text.find(prefix, start + 1)
    return False


def weakness(secret: bytes) -> str | None:
    """Why a secret of adequate length is still not random, or None.

    Two shapes a typed or copy-pasted secret takes and a random one almost never does:
    a short pattern repeated (a period of at most 64 bytes, at least twice), or very few
    distinct symbols
    (under 8; hex keys have 16, base64 ones up to 64).
    """
    n = len(secret)
    if n == 0:
        return "empty"
    for period in range(1, min(64, n // 2) + 1):
        if all(secret[i] == secret[i % period] for i in range(n)):
            return f"a {period}-byte pattern repeated"
    distinct = len(set(secret))
    if distinct < 8:
        return f"only {distinct} distinct byte values"
    return None
