"""The finding catalogue: every posture finding, its gate under each profile, its remedy.

Why one table: the daemons' startup gate, ``/readyz``, ``/admin/v1/posture``, ``assay
doctor`` and docs/posture.md all read these rows, so a finding means the same thing
everywhere; ``tests/unit/test_posture_docs.py`` keeps the docs' table equal to this one.

Gates are listed in profile order (local, hosted_lab, production, evidence_grade); None
means "not applicable under that profile" (reported, never counted). The rows are checked
at import (``_check``): a stricter profile never gates a finding less than a looser one.
Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from assay.core.posture.model import (
    PROFILE_ORDER,
    EvidenceKind,
    Profile,
    Severity,
    severity_rank,
)

W, E, R, S = Severity.WARN, Severity.ERROR, Severity.READINESS, Severity.STARTUP
Gates = tuple[Severity | None, Severity | None, Severity | None, Severity | None]

#: Which daemons a finding can fire for.
BOTH = ("registry", "relay")


@dataclass(frozen=True)
class Finding:
    id: str
    title: str
    remediation: str
    gates: Gates
    #: Declared, unexpired evidence of this kind satisfies the finding (it stands no more).
    satisfied_by: EvidenceKind | None = None
    #: False for findings about the waivers themselves: a waiver cannot excuse a waiver.
    waivable: bool = True
    daemons: tuple[str, ...] = BOTH

    def gate(self, profile: Profile) -> Severity | None:
        return self.gates[profile.rank]


FINDINGS: tuple[Finding, ...] = (
    Finding(
        "POS-BIND-NONLOOPBACK",
        "The HTTP listener binds a non-loopback address",
        "Bind 127.0.0.1 (or a Unix socket) and put a TLS-terminating proxy in front; "
        "or waive with the reason the network is trusted.",
        (W, W, E, R),
    ),
    Finding(
        "POS-MODE-CONFIG",
        "A config or policy file is writable by group or others, or is a symlink",
        "chmod go-w the file and its directory, owned by root or the daemon's user.",
        (S, S, S, S),
    ),
    Finding(
        "POS-MODE-SECRET",
        "A secret file is readable or writable by group or others, or is a symlink",
        "chmod 600 the secret (or pass it with systemd LoadCredential=).",
        (S, S, S, S),
    ),
    Finding(
        "POS-MODE-STATE",
        "A state directory (store, database, audit log) is open to others",
        "chmod o-rwx the directory (the packaged units use StateDirectoryMode=0700).",
        (W, W, E, R),
    ),
    Finding(
        "POS-UNIT-SANDBOX",
        "The systemd unit's sandbox exposure score is above 4.0",
        "Use the packaged unit (units/*.service) or restore its hardening directives; "
        "check with `systemd-analyze security --offline=yes UNIT`.",
        (None, W, E, R),
    ),
    Finding(
        "POS-UNIT-UNSCORED",
        "No systemd unit file was found to score the sandbox",
        "Run under the packaged unit, pass `assay doctor --unit PATH`, or declare "
        "`sandbox` evidence for another confinement (container, VM).",
        (None, None, W, E),
        satisfied_by=EvidenceKind.SANDBOX,
    ),
    Finding(
        "POS-KEY-AGE",
        "A key (audit HMAC, signing, TUF online) is older than 365 days",
        "Rotate the key (docs/posture.md, Key ages) and keep the old public key for verifiers.",
        (None, W, W, E),
    ),
    Finding(
        "POS-AUDIT-CHAIN",
        "The audit log does not verify (a broken, edited or reordered record)",
        "Run `assay audit verify DIR --key-file KEY`, investigate, and `assay audit "
        "recover` only a torn tail; never edit the log.",
        (E, E, R, S),
    ),
    Finding(
        "POS-AUDIT-UNSIGNED",
        "No audit signing key: checkpoints and receipts are not signed",
        "Set audit.signing_key (`assay keys generate --out DIR`).",
        (None, W, E, S),
    ),
    Finding(
        "POS-CHECKPOINT-STALE",
        "Audit records are not covered by a recent signed checkpoint",
        "Start the daemon (it checkpoints every audit.checkpoint_every_seconds) or "
        "investigate why the writer stopped checkpointing.",
        (None, W, E, R),
    ),
    Finding(
        "POS-SECRET-INVALID",
        "A secret is not what its config claims (wrong key kind, too short, unparsable)",
        "Regenerate the secret with the command the docs name for it (`assay keys "
        "generate`, `assay relay generate-signing-key`, `assay init`).",
        (S, S, S, S),
    ),
    Finding(
        "POS-SECRET-WEAK",
        "A secret is long enough but not random (a short pattern repeated, few symbols)",
        "Replace it with 32 random bytes, e.g. `head -c 32 /dev/urandom | base64`.",
        (W, E, S, S),
    ),
    Finding(
        "POS-SECRET-ENV",
        "A secret is passed in an environment variable",
        "Use a file (mode 0600) or systemd LoadCredential=; the environment is inherited "
        "by child processes and readable in /proc by the same user.",
        (None, W, E, E),
    ),
    Finding(
        "POS-TOKEN-RAW",
        "A token or API-key file holds a raw credential, not only its fingerprint",
        "Revoke the exposed credential and mint a new one (`assay token create`, "
        "`assay relay generate-api-key`); the files hold sha256 fingerprints only.",
        (E, E, S, S),
    ),
    Finding(
        "POS-FAULT-INJECTION",
        "The test-only fault-injection switch is enabled",
        "Remove watchdog.allow_fault_injection from the config.",
        (W, E, S, S),
        daemons=("registry",),
    ),
    Finding(
        "POS-EVIDENCE-BACKUPS",
        "No evidence of backups is declared",
        "Back up the state and audit directories and declare it under deployment.evidence "
        "(kind: backups).",
        (None, None, W, E),
        satisfied_by=EvidenceKind.BACKUPS,
    ),
    Finding(
        "POS-EVIDENCE-KEY-CUSTODY",
        "No evidence of key custody is declared",
        "Record who holds the keys and where (HSM, sealed copy) and declare it under "
        "deployment.evidence (kind: key_custody).",
        (None, None, W, R),
        satisfied_by=EvidenceKind.KEY_CUSTODY,
    ),
    Finding(
        "POS-EVIDENCE-REVIEW",
        "No evidence of a security review of this deployment is declared",
        "Have the deployment reviewed and declare it under deployment.evidence (kind: review).",
        (None, None, None, E),
        satisfied_by=EvidenceKind.REVIEW,
    ),
    Finding(
        "POS-WAIVER-EXPIRED",
        "A waiver has expired",
        "Fix the finding it waived, or renew the waiver with a new expiry and approver.",
        (W, W, E, R),
        waivable=False,
    ),
)

BY_ID: dict[str, Finding] = {f.id: f for f in FINDINGS}


def finding(finding_id: str) -> Finding:
    return BY_ID[finding_id]


def _check(rows: tuple[Finding, ...]) -> None:
    """Import-time guard: ids unique and shaped, gates monotone over the profile order."""
    seen: set[str] = set()
    for row in rows:
        if row.id in seen or not row.id.startswith("POS-") or row.id.upper() != row.id:
            raise AssertionError(f"finding id {row.id!r} duplicate or malformed")
        seen.add(row.id)
        ranks = [severity_rank(row.gate(p)) for p in PROFILE_ORDER]
        if ranks != sorted(ranks):
            raise AssertionError(f"{row.id}: a stricter profile gates it less")


_check(FINDINGS)
