"""The published TUF repository on disk: durable writes, in the order that keeps readers safe.

Blocking; the publisher (``assay.trust.publisher``) calls it from one worker thread at
a time. Every publish:

  PUB-1 reserves the versions it will use in the state dir (temp, fsync, rename, fsync
        dir) before any file is published, so a crash can skip versions, never reuse one
        with other content: versions only increase, across restarts and reboots, even
        though the published dir may be a tmpfs that a reboot empties. Each new version
        is also at least the wall clock in microseconds since the epoch (``version_floor``):
        a state dir restored from an older backup beside an emptied published dir
        (nothing left to raise the versions from) still publishes versions above every
        one published before, since none was ever ahead of its own publish time (one
        publish signs and fsyncs: far slower than one per microsecond). Only a restore
        together with a wall clock set back can still go backwards (THREAT_MODEL.md);
  PUB-2 writes ``N.targets.json``, then PUB-3 ``N.snapshot.json`` (new names, never
        rewritten: consistent snapshots);
  PUB-4 replaces ``timestamp.json`` last, with an mtime strictly later than any earlier
        one's, so a reader sees the old set or the new one, never half of one, and a
        consumer that keys its cache on the file's stat sees every publish;
  PUB-5 removes a withdrawal marker and prunes old snapshot/targets versions.

Withdrawal (a publish failed while the old metadata vouches for something no longer
trusted): ``timestamp.json`` is renamed to ``timestamp.withdrawn``, which needs no space,
and consumers then trust nothing until the next publish (``docs/trust.md``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.metadata import MetaFile, Snapshot, Targets, Timestamp

from assay.core.atomic import atomic_write, fsync_dir
from assay.trust import metadata
from assay.trust.config import TrustSection
from assay.trust.errors import TrustConfigError
from assay.trust.metadata import Entry, RootChain

log = logging.getLogger("assay.trust")

VERSIONS_FILE = "versions.json"
TIMESTAMP = "timestamp.json"
WITHDRAWN = "timestamp.withdrawn"
_VERSIONED = re.compile(r"([1-9][0-9]{0,18})\.(root|snapshot|targets)\.json")
_MAX_STATE_BYTES = 4096
_MAX_META_BYTES = 64 * 1024 * 1024
#: Versions are at least the wall clock in these units since the epoch (microseconds:
#: 16 digits until the year 2286, below 2**53 so any JSON reader keeps them exact).
VERSION_FLOOR_NS = 1_000
#: timestamp.json mtimes step by at least this much (and are whole multiples of it), so
#: file systems that keep only micro- or milliseconds still see every publish.
MTIME_STEP_NS = 1_000_000


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Versions:
    """The highest version of each role ever reserved, and the last timestamp mtime."""

    targets: int = 0
    snapshot: int = 0
    timestamp: int = 0
    mtime_ns: int = 0


@dataclass(frozen=True)
class Published:
    """What consumers can read now."""

    entries: frozenset[Entry]
    versions: Versions
    timestamp_expires: datetime
    snapshot_expires: datetime
    targets_expires: datetime
    root_version: int
    root_expires: datetime

    def status(self) -> dict[str, Any]:
        return {
            "trusted": len(self.entries),
            "root": {"version": self.root_version, "expires": _iso(self.root_expires)},
            "targets": {"version": self.versions.targets, "expires": _iso(self.targets_expires)},
            "snapshot": {"version": self.versions.snapshot, "expires": _iso(self.snapshot_expires)},
            "timestamp": {
                "version": self.versions.timestamp,
                "expires": _iso(self.timestamp_expires),
            },
        }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Repository:
    def __init__(
        self,
        *,
        publish_dir: Path,
        state_dir: Path,
        roots: RootChain,
        signer: Signer,
        section: TrustSection,
        clock: Callable[[], datetime] = utcnow,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.publish_dir = publish_dir
        self.state_dir = state_dir
        self.roots = roots
        self.signer = signer
        self.section = section
        self.clock = clock
        self.wall_ns = wall_ns
        self.versions = Versions()
        #: Set by each publish, cleared by a withdrawal.
        self.current: Published | None = None
        self._snapshot_meta: MetaFile | None = None

    # -- startup ------------------------------------------------------------------------

    def open(self) -> None:
        """Create the directories, load the reserved versions, publish the root chain."""
        _ensure_dir(self.state_dir, 0o700)
        _ensure_dir(self.publish_dir, 0o755)
        saved = self._load_versions()
        # Published files can only raise the versions (a state dir restored from an
        # older backup must not make the daemon publish versions consumers refuse).
        self.versions = _max_versions(saved, self._published_floor())
        self._remove_stale_temps()
        for number, data in enumerate(self.roots.files, start=1):
            path = self.publish_dir / f"{number}.root.json"
            if _read_bounded(path, metadata.MAX_ROOT_BYTES + 1) != data:
                atomic_write(path, data, mode=0o644)

    # -- publishing ---------------------------------------------------------------------

    def publish(self, entries: frozenset[Entry]) -> Published:
        """New targets, snapshot and timestamp for ``entries`` (PUB-1..PUB-5)."""
        now = self.clock()
        v = self._reserve(targets=True)
        s = self.section
        targets_exp = now + timedelta(seconds=s.targets_expiry_seconds)
        snapshot_exp = now + timedelta(seconds=s.snapshot_expiry_seconds)
        targets = metadata.targets_bytes(entries, version=v.targets, expires=targets_exp,
                                         signer=self.signer)  # fmt: skip
        snapshot = metadata.snapshot_bytes(metadata.meta_file(targets, v.targets),
                                           version=v.snapshot, expires=snapshot_exp,
                                           signer=self.signer)  # fmt: skip
        snapshot_meta = metadata.meta_file(snapshot, v.snapshot)
        # Step PUB-2 and PUB-3: the files the new timestamp will name, first.
        atomic_write(self.publish_dir / f"{v.targets}.{Targets.type}.json", targets, mode=0o644)
        atomic_write(self.publish_dir / f"{v.snapshot}.{Snapshot.type}.json", snapshot,
                     mode=0o644)  # fmt: skip
        ts_exp = self._write_timestamp(snapshot_meta, v, now)
        self._snapshot_meta = snapshot_meta
        self.current = Published(
            entries=entries,
            versions=v,
            timestamp_expires=ts_exp,
            snapshot_expires=snapshot_exp.replace(microsecond=0),
            targets_expires=targets_exp.replace(microsecond=0),
            root_version=self.roots.latest.version,
            root_expires=self.roots.latest.expires,
        )
        self._finish()
        return self.current

    def refresh(self) -> Published:
        """A new timestamp over the current snapshot; a full publish when there is no
        current snapshot or targets/snapshot would expire too soon."""
        current = self.current
        if current is None or self._snapshot_meta is None or self.needs_full(current):
            return self.publish(current.entries if current else frozenset())
        now = self.clock()
        v = self._reserve(targets=False)
        ts_exp = self._write_timestamp(self._snapshot_meta, v, now)
        self.current = replace(current, versions=v, timestamp_expires=ts_exp)
        self._finish()
        return self.current

    def needs_full(self, current: Published) -> bool:
        """Re-sign targets and snapshot once half their life is gone, or earlier if less
        than two refresh intervals past a timestamp's life would be left."""
        now = self.clock()
        s = self.section
        margin = timedelta(seconds=s.timestamp_expiry_seconds + 2 * s.refresh_interval_seconds)
        for expires, life in (
            (current.targets_expires, s.targets_expiry_seconds),
            (current.snapshot_expires, s.snapshot_expiry_seconds),
        ):
            if expires - now < max(margin, timedelta(seconds=life / 2)):
                return True
        return False

    def withdraw(self) -> None:
        """Stop vouching for anything: consumers fail closed until the next publish."""
        self.current = None
        self._snapshot_meta = None
        try:
            os.replace(self.publish_dir / TIMESTAMP, self.publish_dir / WITHDRAWN)
        except FileNotFoundError:
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(self.publish_dir / WITHDRAWN, flags, 0o644))
        fsync_dir(self.publish_dir)

    # -- the steps ----------------------------------------------------------------------

    def _reserve(self, *, targets: bool) -> Versions:
        """Step PUB-1: the next versions (and timestamp mtime), durable before use."""
        v = self.versions
        step = MTIME_STEP_NS
        # A whole multiple of the step, later than every earlier one by at least a step.
        wall = self.wall_ns()
        mtime = math.ceil(max(wall, v.mtime_ns + step) / step) * step
        floor = version_floor(wall)
        new = Versions(
            targets=max(v.targets + 1, floor) if targets else v.targets,
            snapshot=max(v.snapshot + 1, floor) if targets else v.snapshot,
            timestamp=max(v.timestamp + 1, floor),
            mtime_ns=mtime,
        )
        data = json.dumps(asdict(new), sort_keys=True).encode() + b"\n"
        atomic_write(self.state_dir / VERSIONS_FILE, data, mode=0o600)
        self.versions = new
        return new

    def _write_timestamp(self, snapshot_meta: MetaFile, v: Versions, now: datetime) -> datetime:
        """Step PUB-4: ``timestamp.json`` replaced last, with its reserved mtime."""
        expires = now + timedelta(seconds=self.section.timestamp_expiry_seconds)
        data = metadata.timestamp_bytes(snapshot_meta, version=v.timestamp, expires=expires,
                                        signer=self.signer)  # fmt: skip
        _replace_with_mtime(self.publish_dir / TIMESTAMP, data, v.mtime_ns)
        return expires.replace(microsecond=0)

    def _finish(self) -> None:
        """Step PUB-5: no withdrawal marker under a valid timestamp; old versions pruned."""
        (self.publish_dir / WITHDRAWN).unlink(missing_ok=True)
        keep = self.section.keep_versions
        found: dict[str, list[int]] = {Targets.type: [], Snapshot.type: []}
        for name in os.listdir(self.publish_dir):
            m = _VERSIONED.fullmatch(name)
            if m and m.group(2) in found:
                found[m.group(2)].append(int(m.group(1)))
        # The ``keep`` newest of each role, by rank: versions jump (``version_floor``).
        for role, numbers in found.items():
            for number in sorted(numbers)[:-keep]:
                (self.publish_dir / f"{number}.{role}.json").unlink(missing_ok=True)
        fsync_dir(self.publish_dir)

    # -- state --------------------------------------------------------------------------

    def _load_versions(self) -> Versions:
        path = self.state_dir / VERSIONS_FILE
        data = _read_bounded(path, _MAX_STATE_BYTES)
        if data is None:
            return Versions()
        try:
            raw = json.loads(data)
            fields = {k: raw[k] for k in ("targets", "snapshot", "timestamp", "mtime_ns")}
            if set(raw) != set(fields) or not all(
                type(x) is int and x >= 0 for x in fields.values()
            ):
                raise ValueError("unexpected fields")
        except (ValueError, KeyError, TypeError) as exc:
            # Guessing would risk reusing a version with other content: refuse to start.
            raise TrustConfigError(
                f"{path} is not a versions file ({exc}); restore it or remove the whole "
                "trust state and published directories together"
            ) from None
        return Versions(**fields)

    def _published_floor(self) -> Versions:
        """The highest versions already in the published dir (names and the timestamp)."""
        found = {Targets.type: 0, Snapshot.type: 0, Timestamp.type: 0}
        for name in os.listdir(self.publish_dir):
            m = _VERSIONED.fullmatch(name)
            if m and m.group(2) in found:
                found[m.group(2)] = max(found[m.group(2)], int(m.group(1)))
        mtime = 0
        for name in (TIMESTAMP, WITHDRAWN):
            data = _read_bounded(self.publish_dir / name, _MAX_META_BYTES)
            version = metadata.parse_version(data, Timestamp.type) if data else None
            found[Timestamp.type] = max(found[Timestamp.type], version or 0)
            if data is not None:
                mtime = max(mtime, os.lstat(self.publish_dir / name).st_mtime_ns)
        return Versions(found[Targets.type], found[Snapshot.type], found[Timestamp.type], mtime)

    def _remove_stale_temps(self) -> None:
        """Temp files a crash left between PUB-2 and PUB-4 (``atomic_write``'s names)."""
        for directory in (self.publish_dir, self.state_dir):
            for name in os.listdir(directory):
                if name.startswith(".") and name.endswith(".tmp"):
                    (directory / name).unlink(missing_ok=True)


def version_floor(wall_ns: int) -> int:
    """The least version a publish at wall time ``wall_ns`` may use (``VERSION_FLOOR_NS``)."""
    return max(wall_ns // VERSION_FLOOR_NS, 0)


def _max_versions(a: Versions, b: Versions) -> Versions:
    return Versions(*(max(x, y) for x, y in zip(asdict(a).values(), asdict(b).values(),
                                                strict=True)))  # fmt: skip


def _ensure_dir(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise TrustConfigError(f"{path} is not a directory (a symlink is refused)")
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


def _read_bounded(path: Path, limit: int) -> bytes | None:
    """A regular file's bytes (at most ``limit``), None if absent; never follows a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TrustConfigError(f"{path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TrustConfigError(f"{path} is not a regular file")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _replace_with_mtime(path: Path, data: bytes, mtime_ns: int) -> None:
    """``atomic_write``'s steps, with the temp file's mtime set before the rename (and
    checked: a file system that cannot keep it would let a consumer miss a publish)."""
    directory = path.parent
    tmp = directory / f".{path.name}.{os.urandom(8).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.utime(fd, ns=(mtime_ns, mtime_ns))
        if os.fstat(fd).st_mtime_ns != mtime_ns:
            raise TrustConfigError(f"{directory}: the file system does not keep mtimes "
                                   "to the millisecond")  # fmt: skip
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)


def read_root_chain(root_dir: Path) -> list[bytes]:
    """``1.root.json``, ``2.root.json``, ... from ``root_dir``, stopping at the first gap."""
    files: list[bytes] = []
    for number in range(1, 10_000):
        data = _read_bounded(root_dir / f"{number}.root.json", metadata.MAX_ROOT_BYTES + 1)
        if data is None:
            break
        files.append(data)
    return files
