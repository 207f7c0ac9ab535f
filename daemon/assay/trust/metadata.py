"""The trusted set as TUF metadata, built and checked with python-tuf's Metadata API.

Why TUF and not a format of our own: a consumer on this host or on any other can check
the set with python-tuf's stock client (``ngclient``), which already knows rollback,
freeze and mix-and-match, and bounds every download by the lengths the metadata signs.

The layout (``docs/trust.md``): one root key signs root only; one online key, held by
the daemon, signs targets, snapshot and timestamp. Consistent snapshots: targets and
snapshot are published as ``N.targets.json`` / ``N.snapshot.json`` and never rewritten,
so a reader that read one timestamp finds exactly the files it names.

Targets: every trusted, intact artifact is ``NAME@sha256:HEX`` (the set itself), and
``NAME`` is the one its name resolves to (what ``GET /v1/trusted/{name}`` answers). Names
cannot hold ``@``, so the two kinds never collide. Pure: values in, bytes out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from assay.registry.model import Artifact
from assay.registry.states import State
from assay.trust.errors import TrustConfigError

ONLINE_ROLES = (Targets.type, Snapshot.type, Timestamp.type)
#: The largest root file the daemon will read or publish (ngclient's own default limit).
MAX_ROOT_BYTES = 512_000
_SERIALIZER = JSONSerializer(compact=True)


@dataclass(frozen=True, order=True)
class Entry:
    """One trusted artifact as the metadata describes it."""

    name: str
    digest: str
    size: int
    format: str
    promoted_at: str


def trusted_entries(artifacts: Iterable[Artifact]) -> frozenset[Entry]:
    """The trusted set: trusted and intact, exactly what the daemon itself would serve."""
    return frozenset(
        Entry(a.name, a.digest, a.size, a.format, a.state_changed_at)
        for a in artifacts
        if a.state == State.TRUSTED and a.integrity == "ok"
    )


def target_path(name: str, digest: str) -> str:
    return f"{name}@{digest}"


def target_files(entries: Iterable[Entry]) -> dict[str, TargetFile]:
    """``NAME@DIGEST`` for each entry, and ``NAME`` for the entry each name resolves to
    (latest promotion, then digest: the order ``Registry.resolve_trusted`` uses)."""
    out: dict[str, TargetFile] = {}
    latest: dict[str, Entry] = {}
    for entry in sorted(entries):
        path = target_path(entry.name, entry.digest)
        out[path] = _target_file(path, entry)
        current = latest.get(entry.name)
        if current is None or (entry.promoted_at, entry.digest) > (
            current.promoted_at,
            current.digest,
        ):
            latest[entry.name] = entry
    for name, entry in latest.items():
        out[name] = _target_file(name, entry)
    return out


def _target_file(path: str, entry: Entry) -> TargetFile:
    custom: dict[str, Any] = {
        "name": entry.name,
        "digest": entry.digest,
        "format": entry.format,
        "promoted_at": entry.promoted_at,
    }
    return TargetFile(
        length=entry.size,
        hashes={"sha256": entry.digest.removeprefix("sha256:")},
        path=path,
        unrecognized_fields={"custom": custom},
    )


def meta_file(data: bytes, version: int) -> MetaFile:
    """What a parent role signs about a file: its version, exact length and SHA-256, so
    a client reads no byte past the length and takes no other content."""
    return MetaFile(version=version, length=len(data), hashes={"sha256": sha256_hex(data)})


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign(signed: Signed, signer: Signer) -> bytes:
    """``signed`` wrapped in Metadata, signed once, in compact JSON."""
    md: Metadata[Any] = Metadata(signed)
    try:
        md.sign(signer)
    except UnsignedMetadataError as exc:
        raise TrustConfigError(f"signing {signed.type} failed: {exc}") from None
    return md.to_bytes(_SERIALIZER)


def targets_bytes(entries: Iterable[Entry], *, version: int, expires: datetime,
                  signer: Signer) -> bytes:  # fmt: skip
    return sign(Targets(version=version, expires=expires, targets=target_files(entries)), signer)


def snapshot_bytes(targets: MetaFile, *, version: int, expires: datetime,
                   signer: Signer) -> bytes:  # fmt: skip
    return sign(Snapshot(version=version, expires=expires, meta={"targets.json": targets}), signer)


def timestamp_bytes(snapshot: MetaFile, *, version: int, expires: datetime,
                    signer: Signer) -> bytes:  # fmt: skip
    return sign(Timestamp(version=version, expires=expires, snapshot_meta=snapshot), signer)


def new_root(root_key: Key, online_key: Key, *, version: int, expires: datetime) -> Root:
    """A root that gives the root role to ``root_key`` and every other top-level role to
    ``online_key``, each with threshold 1, consistent snapshots on."""
    root = Root(version=version, expires=expires, consistent_snapshot=True)
    root.add_key(root_key, Root.type)
    for role in ONLINE_ROLES:
        root.add_key(online_key, role)
    return root


@dataclass(frozen=True)
class RootChain:
    """Root versions 1..N, each checked against the one before it (TUF 5.3.4-5.3.5)."""

    files: tuple[bytes, ...]
    latest: Root


def check_root_chain(files: Sequence[bytes]) -> RootChain:
    """Refuse a chain a client would refuse: version 1 first, each next version exactly
    one more, each signed by the threshold of the previous root's keys and of its own."""
    if not files:
        raise TrustConfigError("no root metadata: expected 1.root.json in trust.root_dir")
    trusted: Root | None = None
    for number, data in enumerate(files, start=1):
        if len(data) > MAX_ROOT_BYTES:
            raise TrustConfigError(f"{number}.root.json is larger than {MAX_ROOT_BYTES} bytes")
        try:
            md = Metadata[Root].from_bytes(data)
        except DeserializationError as exc:
            raise TrustConfigError(f"{number}.root.json is not root metadata: {exc}") from None
        if not isinstance(md.signed, Root):
            raise TrustConfigError(f"{number}.root.json is {md.signed.type} metadata, not root")
        new = md.signed
        # Step ROOT-1: versions count up from 1 without a gap.
        if new.version != number:
            raise TrustConfigError(f"{number}.root.json carries version {new.version}")
        try:
            # Step ROOT-2: the previous root's keys sign the new one (the first: itself).
            (trusted or new).verify_delegate(Root.type, md.signed_bytes, md.signatures)
            # Step ROOT-3: and the new root's own keys sign it too.
            new.verify_delegate(Root.type, md.signed_bytes, md.signatures)
        except (UnsignedMetadataError, ValueError) as exc:
            raise TrustConfigError(f"{number}.root.json is not signed as required: {exc}") from None
        trusted = new
    assert trusted is not None
    return RootChain(tuple(files), trusted)


def check_online_key(root: Root, key: Key) -> None:
    """The online key the daemon holds is the one the latest root names for every role it
    signs, with threshold 1; otherwise every consumer would refuse what it publishes."""
    for role in ONLINE_ROLES:
        assigned = root.roles[role]
        if key.keyid not in assigned.keyids or assigned.threshold != 1:
            raise TrustConfigError(
                f"trust.online_key (keyid {key.keyid[:16]}…) is not the threshold-1 key "
                f"root v{root.version} names for {role}"
            )
    if not root.consistent_snapshot:
        raise TrustConfigError(f"root v{root.version} has consistent_snapshot off")


def parse_version(data: bytes, role: str) -> int | None:
    """The version a file of ``role`` claims, unverified (only ever used to raise the
    versions the daemon uses next); None if it is not such a file."""
    try:
        md: Metadata[Any] = Metadata.from_bytes(data)
    except DeserializationError:
        return None
    return md.signed.version if md.signed.type == role else None
