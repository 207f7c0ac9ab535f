"""The host probe: looks at a deployment and returns ``Observations`` (plain values).

The thin I/O adapter of posture. It never decides what is a finding (that is
``observations.hits`` and ``evaluate``); it only measures, with the parsers that own each
format, never a hand-made scan beside them:

1. modes and owners of the config, policies, secrets and state directories (``lstat``:
   a symlink is seen as one, never followed);
2. each TCP bind, loopback or not (``assay.core.schema.is_loopback_host``);
3. each secret against the kind its config claims: an HMAC key's length and randomness,
   an Ed25519 key parsed by ``cryptography`` (and the audit key checked against its
   ``.pub``), a token file parsed as JSON whose entries must be fingerprints, an API-key
   fingerprint that must be ``sha256:<hex>`` and not the raw ``assayrk_`` key;
4. key ages, from each key file's mtime;
5. the unit's sandbox exposure: ``systemd-analyze security --offline=yes UNITFILE`` when
   the tool exists (its "Overall exposure level" line), else the unit file's hardening
   directives, counted;
6. the audit log: the whole chain verified with ``verify_stream`` (when asked: it reads
   every byte) and the latest checkpoint's size and age.

Never prints or returns a secret's value: a check says what is wrong, not what it read.
"""

from __future__ import annotations

import configparser
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from assay.core.audit import files as audit_files
from assay.core.audit.checkpoint import raw_public
from assay.core.audit.keys import PUBLIC_NAME, public_key_from_pem
from assay.core.audit.verify import verify_stream
from assay.core.errors import AssayError
from assay.core.posture.observations import (
    AuditState,
    Bind,
    Observations,
    PathKind,
    PathMode,
    SecretCheck,
    UnitScore,
    raw_token_shape,
    weakness,
)
from assay.core.schema import AuditConfig, SecretRef, is_loopback_host
from assay.core.secrets import MIN_SECRET_BYTES, resolve_path

SecretKind = Literal["hmac", "ed25519", "token_file", "fingerprint", "dsn"]

#: Where systemd looks for unit files, most specific first.
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system",
             "/lib/systemd/system")  # fmt: skip
ANALYZE_TIMEOUT_SECONDS = 60.0
_EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")
#: Raw credential shapes: the core's bearer tokens and the relay's API keys (32 random
#: bytes, base64url without padding: 43 characters).
RAW_SHAPES = (("assay_", 43), ("assayrk_", 43))
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
MAX_TOKEN_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class SecretSpec:
    role: str
    ref: SecretRef
    kind: SecretKind


@dataclass(frozen=True)
class Target:
    """What to look at: built from a loaded config by ``assay.core.posture.targets``."""

    daemon: Literal["registry", "relay"]
    base: Path
    binds: tuple[str, ...]
    config_paths: tuple[tuple[str, Path], ...]
    state_paths: tuple[tuple[str, Path], ...]
    secrets: tuple[SecretSpec, ...]
    audit: AuditConfig
    unit_names: tuple[str, ...]
    unit_files: tuple[Path, ...] = ()
    #: Files a secret points at that must be kept like secrets (modes only: a key that a
    #: DSN names), by role.
    secret_paths: tuple[tuple[str, Path], ...] = ()
    fault_injection: bool = False
    #: Where ``env`` secrets are read; never in the repr (it holds their values).
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ), repr=False)


# -- 1. modes ------------------------------------------------------------------------------


def path_mode(role: str, path: Path, kind: PathKind) -> PathMode:
    try:
        info = os.lstat(path)
    except OSError:
        return PathMode(role, str(path), kind, None)
    return PathMode(
        role, str(path), kind, stat.S_IMODE(info.st_mode),
        symlink=stat.S_ISLNK(info.st_mode), owner_ok=info.st_uid in (0, os.geteuid()),
    )  # fmt: skip


# -- 2. binds ------------------------------------------------------------------------------


def bind_of(bind: str) -> Bind | None:
    if bind.startswith("fd://"):
        return None  # the socket unit decides; its ListenStream= is the unit's business
    host = bind.rpartition(":")[0]
    return Bind(bind, is_loopback_host(host))


# -- 3./4. secrets -------------------------------------------------------------------------


def _read_file(path: Path) -> tuple[bytes, float]:
    """A regular file's bytes (bounded, no symlink followed) and its mtime."""
    # O_NONBLOCK: a FIFO planted where a secret belongs must not hang the probe.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "not a regular file")
        if info.st_size > MAX_TOKEN_FILE_BYTES:
            raise OSError(0, f"larger than {MAX_TOKEN_FILE_BYTES} bytes")
        return audit_files.pread_all(fd, 0, info.st_size), info.st_mtime
    finally:
        os.close(fd)


def _judge_hmac(data: bytes) -> tuple[str | None, str | None]:
    key = data.strip()
    if len(key) < MIN_SECRET_BYTES:
        return f"{len(key)} bytes; an HMAC key needs at least {MIN_SECRET_BYTES}", None
    return None, weakness(key)


def _judge_ed25519(data: bytes, path: Path | None, role: str) -> str | None:
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = load_pem_private_key(text, password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text.decode()))
    except (ValueError, TypeError, UnicodeDecodeError):
        return "not an Ed25519 private key (PKCS#8 PEM or 64 hex characters)"
    if not isinstance(key, Ed25519PrivateKey):
        return f"a {type(key).__name__.lstrip('_')}, not an Ed25519 private key"
    if role == "audit.signing_key" and path is not None:
        pub = path.with_name(PUBLIC_NAME)
        with contextlib.suppress(OSError, AssayError):
            data_pub, _ = _read_file(pub)
            if raw_public(public_key_from_pem(data_pub)) != raw_public(key.public_key()):
                return f"{pub} is not this key's public half"
    return None


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > 16:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, depth + 1)


def _has_raw(text: str) -> bool:
    return any(raw_token_shape(text, prefix, n) for prefix, n in RAW_SHAPES)


def _judge_token_file(data: bytes) -> tuple[str | None, str | None]:
    try:
        doc = json.loads(data.decode()) if data.strip() else {"version": 1, "tokens": []}
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "not a JSON token file", None
    tokens = doc.get("tokens") if isinstance(doc, dict) else None
    if not isinstance(tokens, list):
        return "no tokens list", None
    raw: list[str] = []
    for i, item in enumerate(tokens):
        fp = item.get("fingerprint") if isinstance(item, dict) else None
        if not isinstance(fp, str) or not _FINGERPRINT.fullmatch(fp):
            raw.append(f"tokens[{i}].fingerprint is not sha256:<64 hex>")
        if any(_has_raw(s) for s in _strings(item)):
            raw.append(f"tokens[{i}] holds a raw token")
    return None, ("; ".join(raw[:5]) or None)


def _judge_dsn(data: bytes) -> str | None:
    """A connection string is text; its TLS policy is the relay's own startup check
    (``pgsource.check_dsn``), which doctor does not repeat. The value is never shown."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    return None if text.strip() else "is empty"


def _judge_fingerprint(data: bytes) -> tuple[str | None, str | None]:
    text = data.decode(errors="replace").strip()
    if _has_raw(text):
        return None, "holds the raw API key, not its sha256 fingerprint"
    if not _FINGERPRINT.fullmatch(text):
        return "not sha256:<64 hex>", None
    return None, None


def check_secret(
    spec: SecretSpec, base: Path, environ: dict[str, str], now: float
) -> SecretCheck | None:
    """Read one secret and judge it against its claimed kind; None = cannot be reached
    from here (a systemd credential outside its service)."""
    ref = spec.ref
    source: Literal["file", "env", "credential"] = (
        "env" if ref.env is not None else "credential" if ref.credential is not None else "file"
    )
    is_key = spec.kind in ("hmac", "ed25519")
    path: Path | None = None
    age: float | None = None
    if ref.env is not None:
        value = environ.get(ref.env)
        if value is None:
            return SecretCheck(spec.role, source, invalid=f"{ref.env} is not set", is_key=is_key)
        data = value.encode()
    else:
        if ref.credential is not None and not environ.get("CREDENTIALS_DIRECTORY"):
            return None
        try:
            path = resolve_path(ref, base=base)
            assert path is not None
            data, mtime = _read_file(path)
        except (OSError, AssayError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return SecretCheck(spec.role, source, invalid=f"unreadable: {why}", is_key=is_key)
        # A systemd credential is a copy made at service start: its mtime is no age.
        age = None if ref.credential is not None else max(0.0, now - mtime)
    invalid: str | None = None
    weak: str | None = None
    raw: str | None = None
    if spec.kind == "hmac":
        invalid, weak = _judge_hmac(data)
    elif spec.kind == "ed25519":
        invalid = _judge_ed25519(data, path, spec.role)
    elif spec.kind == "token_file":
        invalid, raw = _judge_token_file(data)
    elif spec.kind == "dsn":
        invalid = _judge_dsn(data)
    else:
        invalid, raw = _judge_fingerprint(data)
    return SecretCheck(spec.role, source, invalid=invalid, weak=weak, raw_credential=raw,
                       age_seconds=age if is_key else None, is_key=is_key)  # fmt: skip


# -- 5. unit sandbox -----------------------------------------------------------------------

#: The packaged units' hardening: each missing or weakened one adds to the fallback score.
HARDENING = {
    "NoNewPrivileges": {"yes", "true", "1"},
    "ProtectSystem": {"strict"},
    "ProtectHome": {"yes", "true", "read-only", "tmpfs"},
    "PrivateTmp": {"yes", "true"},
    "PrivateDevices": {"yes", "true"},
    "ProtectKernelTunables": {"yes", "true"},
    "ProtectKernelModules": {"yes", "true"},
    "ProtectControlGroups": {"yes", "true"},
    "RestrictNamespaces": {"yes", "true"},
    "LockPersonality": {"yes", "true"},
    "MemoryDenyWriteExecute": {"yes", "true"},
    "RestrictRealtime": {"yes", "true"},
    "RestrictSUIDSGID": {"yes", "true"},
    "SystemCallArchitectures": {"native"},
}
_NONEMPTY = ("CapabilityBoundingSet", "RestrictAddressFamilies", "SystemCallFilter")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a directory we may not search
        return False


def find_unit(name: str, explicit: tuple[Path, ...]) -> Path | None:
    for p in explicit:
        if p.name == name and _is_file(p):
            return p
    for d in UNIT_DIRS:
        candidate = Path(d) / name
        if _is_file(candidate):
            return candidate
    return None


def directive_exposure(text: str) -> float:
    """0..10: the share of the packaged hardening directives missing, times ten."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text)
    except configparser.Error:
        return 10.0
    svc = parser["Service"] if parser.has_section("Service") else {}
    missing = sum(1 for k, ok in HARDENING.items() if str(svc.get(k, "")).strip().lower()
                  not in ok)  # fmt: skip
    missing += sum(1 for k in _NONEMPTY if not str(svc.get(k, "")).strip())
    return round(10.0 * missing / (len(HARDENING) + len(_NONEMPTY)), 1)


def unit_score(name: str, explicit: tuple[Path, ...], *, use_tool: bool = True) -> UnitScore:
    """The unit's exposure: ``systemd-analyze`` when ``use_tool`` and it exists (doctor),
    else its directives (a daemon: no program is run from inside the sandbox)."""
    path = find_unit(name, explicit)
    if path is None:
        return UnitScore(name, None, None)
    tool = shutil.which("systemd-analyze") if use_tool else None
    if tool is not None:
        try:
            proc = subprocess.run(
                [tool, "security", "--offline=yes", "--no-pager", str(path)],
                capture_output=True, text=True, timeout=ANALYZE_TIMEOUT_SECONDS,
                stdin=subprocess.DEVNULL, cwd="/",
            )  # fmt: skip
            match = _EXPOSURE.search(proc.stdout)
            if match:
                return UnitScore(name, str(path), float(match.group(1)), "systemd-analyze")
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        text = path.read_text(errors="replace")[: 256 * 1024]
    except OSError:
        return UnitScore(name, str(path), 10.0, "directives")
    return UnitScore(name, str(path), directive_exposure(text), "directives")


# -- 6. audit ------------------------------------------------------------------------------


def _checkpoint_age(ts: str, now: float) -> float | None:
    try:
        when = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, now - when.timestamp())


def _first_uncovered(
    snap: list[tuple[Path, int, int]], state: dict[str, Any] | None, covered: int
) -> bytes | None:
    """The first record line after the checkpoint's saved position (or the log's first
    line when nothing is covered); None when the checkpoint covers every record."""
    start_file, start_off = 0, 0
    if covered:
        if state is None:
            return None  # no position saved: cannot tell cheaply, claim nothing
        try:
            seg, off = int(state["segment"]), int(state["offset"])
        except (KeyError, TypeError, ValueError):
            return None
        names = [p.name for p, _fd, _size in snap]
        wanted = audit_files.rotated_name(seg)
        start_file = names.index(wanted) if wanted in names else len(snap) - 1
        start_off = off
    for i in range(start_file, len(snap)):
        _path, fd, size = snap[i]
        for _end, line in audit_files.lines(fd, start_off if i == start_file else 0, size):
            if line.strip():
                return line
    return None


def _record_age(line: bytes, now: float) -> float | None:
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        return None
    ts = rec.get("ts") if isinstance(rec, dict) else None
    return _checkpoint_age(ts, now) if isinstance(ts, str) else None


def audit_state(target: Target, *, verify: bool, now: float) -> AuditState:
    cfg = target.audit
    directory = Path(cfg.dir) if Path(cfg.dir).is_absolute() else target.base / cfg.dir
    latest = None
    with contextlib.suppress(OSError, AssayError):
        latest = audit_files.read_latest_checkpoint(directory)
    cp_age = _checkpoint_age(latest[0].ts, now) if latest is not None else None
    records, verified = 0, False
    breaks: tuple[str, ...] = ()
    uncovered: float | None = None
    try:
        with audit_files.snapshot(directory) as snap:
            if verify and snap:
                key = _hmac_key(target)
                public = _audit_public_key(target)
                checkpoint = latest[0] if latest is not None and public is not None else None
                report = verify_stream(
                    [(str(p), audit_files.chunks(fd, 0, size)) for p, fd, size in snap],
                    key, checkpoint, [public] if public is not None else [], max_breaks=20,
                )  # fmt: skip
                records, verified = report.records, key is not None
                breaks = tuple(str(b) for b in report.breaks)
            line = _first_uncovered(snap, latest[1] if latest else None,
                                    latest[0].size if latest else 0)  # fmt: skip
            if line is not None:
                uncovered = _record_age(line, now)
    except (OSError, AssayError):
        pass
    return AuditState(
        verified=verified, breaks=breaks, records=records,
        signing_configured=cfg.signing_key is not None,
        checkpoint_age_seconds=cp_age, uncovered_age_seconds=uncovered,
        checkpoint_interval_seconds=cfg.checkpoint_every_seconds,
    )  # fmt: skip


def _audit_public_key(target: Target) -> Ed25519PublicKey | None:
    """The ``audit-signing.pub`` beside the signing key file, if it is there and parses."""
    ref = target.audit.signing_key
    if ref is None or ref.file is None:
        return None
    try:
        path = resolve_path(ref, base=target.base)
        assert path is not None
        data, _ = _read_file(path.with_name(PUBLIC_NAME))
        return public_key_from_pem(data)
    except (OSError, AssayError):
        return None


def _hmac_key(target: Target) -> bytes | None:
    ref = target.audit.hmac_key
    try:
        if ref.env is not None:
            value = target.environ.get(ref.env)
            return value.encode().strip() if value else None
        path = resolve_path(ref, base=target.base)
        assert path is not None
        data, _ = _read_file(path)
        return data.strip() or None
    except (OSError, AssayError):
        return None


# -- all together --------------------------------------------------------------------------


def observe(
    target: Target, *, verify_audit: bool, now: float | None = None, run_tools: bool = True
) -> Observations:
    """Everything the probe measures for ``target`` (blocking; reads the log if asked).

    ``now`` (seconds since the epoch) dates key ages and checkpoint waits; default: now.
    """
    now = time.time() if now is None else now
    paths = [path_mode(role, p, "config") for role, p in target.config_paths]
    paths += [path_mode(role, p, "state") for role, p in target.state_paths]
    paths += [path_mode(role, p, "secret") for role, p in target.secret_paths]
    checks: list[SecretCheck] = []
    for spec in target.secrets:
        if spec.ref.file is not None:
            with contextlib.suppress(AssayError):
                file = resolve_path(spec.ref, base=target.base)
                if file is not None:
                    paths.append(path_mode(spec.role, file, "secret"))
        found = check_secret(spec, target.base, target.environ, now)
        if found is not None:
            checks.append(found)
    binds = tuple(b for b in (bind_of(x) for x in target.binds) if b is not None)
    units = tuple(unit_score(n, target.unit_files, use_tool=run_tools) for n in target.unit_names)
    return Observations(
        daemon=target.daemon, binds=binds, paths=tuple(paths), secrets=tuple(checks),
        units=units, audit=audit_state(target, verify=verify_audit, now=now),
        fault_injection=target.fault_injection,
    )  # fmt: skip
