"""``is_trusted(name, digest)``: the trust answer from the published TUF metadata, with no
request to the daemon.

Verification is python-tuf's own: ``tuf.ngclient.Updater`` with a fetcher that reads
the published directory, a metadata cache seeded with the root pinned at install. It
refuses rollback (versions below the cached ones), freeze (an expired timestamp, snapshot,
targets or root) and mix-and-match (files whose version, length or hash differ from what
their parent signs), and bounds every read by the signed lengths.

Why fast without being stale: the daemon replaces ``timestamp.json`` on every change
and every refresh, each time with a later mtime (``assay.trust.repository``). A check
stats it; while the stat is the one it verified and the verified metadata is unexpired
by this checker's clock, the answer comes from memory. Any publish, so any revocation,
changes the stat, and the next check verifies again.

While the daemon is down (under systemd its RuntimeDirectory is removed), checks answer
from the cache's last verified metadata, verified again by ngclient, until it expires;
then they fail closed. A withdrawn timestamp (the daemon could not publish a revocation)
fails closed at once, and is remembered in the cache (``assay.consumer.cache``): after
one, the cache's older metadata is never an answer again, only a newer publish is.
A cache dir (or a file in it) that anyone but this user could write is refused: the
checker then uses a private temporary cache, as with no ``cache_dir``. No trio, Quart or
hypercorn here (a test imports this with them blocked): consumers are ordinary programs.
"""

from __future__ import annotations

import calendar
import errno
import hmac
import json
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf.api import exceptions
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from assay.consumer.cache import (
    LockedCache,
    UnsafeCache,
    cache_problem,
    timestamp_version,
)

log = logging.getLogger("assay.consumer")

DEFAULT_TRUST_DIR = "/run/assay-trust"
DEFAULT_ROOT = "/etc/assay/trust/root/1.root.json"
ENV_DIR = "ASSAY_TRUST_DIR"
ENV_ROOT = "ASSAY_TRUST_ROOT"
ENV_CACHE = "ASSAY_TRUST_CACHE"

TIMESTAMP = "timestamp.json"
WITHDRAWN = "timestamp.withdrawn"
#: The fetcher's own URL prefix: ngclient forms ``BASE + name``; nothing goes on a network.
BASE_URL = "assay-local:/"
#: The only names ngclient asks for in a repository without delegations.
_METADATA_NAME = re.compile(r"(?:[1-9][0-9]{0,18}\.)?(?:root|timestamp|snapshot|targets)\.json")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9._+-]+(?:/[A-Za-z0-9._+-]+)*")
#: A failed verification is retried at most this often while nothing changes.
RETRY_SECONDS = 1.0
_MEMO_LIMIT = 4096
_READ_CHUNK = 1 << 16

Clock = Callable[[], float]


class DirectoryFetcher(FetcherInterface):
    """Serves ngclient's metadata requests from a directory: a name that is not TUF
    metadata, a missing file or anything but a regular file is a 404; reads never follow
    a symlink, never block on a FIFO and stop one byte past ngclient's length limit."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: Every file served whole, by name: what ngclient was given to verify.
        self.served: dict[str, bytes] = {}

    def _open(self, url: str) -> int:
        name = url.removeprefix(BASE_URL)
        if not url.startswith(BASE_URL) or not _METADATA_NAME.fullmatch(name):
            raise exceptions.DownloadHTTPError(f"{url}: not a metadata name", 404)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.directory / name, flags)
        except (FileNotFoundError, NotADirectoryError):
            raise exceptions.DownloadHTTPError(f"{name}: not found", 404) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise exceptions.DownloadHTTPError(f"{name}: a symlink", 404) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise exceptions.DownloadHTTPError(f"{name}: not a regular file", 404)
        return fd

    def _fetch(self, url: str) -> Iterator[bytes]:
        fd = self._open(url)
        return _chunks(fd)

    def download_bytes(self, url: str, max_length: int) -> bytes:
        fd = self._open(url)
        try:
            data = _read_at_most(fd, max_length + 1)
        finally:
            os.close(fd)
        if len(data) > max_length:
            raise exceptions.DownloadLengthMismatchError(
                f"{url}: more than the {max_length} bytes allowed"
            )
        self.served[url.removeprefix(BASE_URL)] = data
        return data


def _chunks(fd: int) -> Iterator[bytes]:
    try:
        while chunk := os.read(fd, _READ_CHUNK):
            yield chunk
    finally:
        os.close(fd)


def _read_at_most(fd: int, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while total < limit:
        chunk = os.read(fd, min(_READ_CHUNK, limit - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


@dataclass(frozen=True)
class Verdict:
    """One answer and why; ``trusted`` is the only field a decision should read."""

    trusted: bool
    reason: str
    length: int | None = None
    format: str | None = None


@dataclass
class _View:
    """The outcome of one verification, valid while the key matches and until expiry."""

    key: tuple[Any, ...]
    expires: float
    updater: Updater | None = None
    error: str | None = None
    source: str = "published"
    versions: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, TargetFile | None] = field(default_factory=dict)
    verdicts: dict[tuple[str, str], Verdict] = field(default_factory=dict)


class TrustCheck:
    """Checks (name, digest) against the trusted set a pinned root vouches for.

    ``published_dir``: the directory the daemon publishes (or an exported copy).
    ``root``: the pinned root, as bytes or a path to ``1.root.json``.
    ``cache_dir``: where ngclient keeps the metadata it verified (rollback protection
    across restarts, and the answer while the daemon is down); one per consumer, owned
    by this user and writable by nobody else (else it is refused, with a warning, and
    ``status()["cache_refused"]`` says why). Without one, a private temporary dir:
    protection only for this object's life.
    ``clock``: POSIX seconds; metadata is refused once it has expired by this clock
    (ngclient also checks the real clock: an injected clock can only refuse sooner).
    """

    def __init__(self, published_dir: Path | str, root: bytes | Path | str,
                 cache_dir: Path | str | None = None, *, clock: Clock = time.time,
                 config: UpdaterConfig | None = None) -> None:  # fmt: skip
        self.published_dir = Path(published_dir)
        self._timestamp_path = str(self.published_dir / TIMESTAMP)
        self._withdrawn_path = str(self.published_dir / WITHDRAWN)
        self._root = root if isinstance(root, bytes) else Path(root).read_bytes()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        #: Why the given cache dir was not used, if it was not.
        self.cache_refused: str | None = None
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
            # Step C-0: a cache others can write would let them plant old signed
            # metadata (a rollback the pinned root cannot tell): not a cache at all.
            self.cache_refused = cache_problem(Path(cache_dir))
            if self.cache_refused is not None:
                log.warning("trust cache refused, using a private one: %s", self.cache_refused)
                cache_dir = None
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="assay-trust-")
            cache_dir = self._tmp.name
        self.cache_dir = Path(cache_dir)
        self.clock = clock
        self.config = config or UpdaterConfig()
        self._view: _View | None = None
        self._verify_lock = threading.Lock()

    # -- answers ------------------------------------------------------------------------

    def is_trusted(self, name: str, digest: str) -> bool:
        return self.check(name, digest).trusted

    def check(self, name: str, digest: str) -> Verdict:
        # Step C-1: metadata verified by ngclient, current by stat and by the clock. Each
        # verification's answers are kept with it (bounded), so a repeated question
        # costs a stat and a lookup, and any publish starts afresh.
        view = self._current()
        if type(name) is not str or type(digest) is not str:
            return Verdict(False, "name and digest must be strings")
        verdict = view.verdicts.get((name, digest))
        if verdict is None:
            verdict = self._decide(view, name, digest)
            if len(view.verdicts) < _MEMO_LIMIT:
                view.verdicts[(name, digest)] = verdict
        return verdict

    def _decide(self, view: _View, name: str, digest: str) -> Verdict:
        # Step C-2: only well-formed names and digests can match anything.
        if not _DIGEST.fullmatch(digest):
            return Verdict(False, "not a sha256:<64 hex> digest")
        if not _NAME.fullmatch(name) or _dot_segment(name):
            return Verdict(False, "not an artifact name")
        if view.updater is None:
            return Verdict(False, view.error or "no verified metadata")
        # Step C-3: the trusted set holds NAME@DIGEST.
        info = self._lookup(view, f"{name}@{digest}")
        if info is None:
            return Verdict(False, f"{name}@{digest} is not in the trusted set")
        # Step C-4: the hash the metadata signs is the digest asked, never another one.
        signed = info.hashes.get("sha256", "")
        if not hmac.compare_digest(signed.encode(), digest.removeprefix("sha256:").encode()):
            return Verdict(False, "the signed sha256 differs from the digest asked")
        custom = info.custom if isinstance(info.custom, dict) else {}
        fmt = custom.get("format")
        return Verdict(True, "trusted", info.length, fmt if isinstance(fmt, str) else None)

    def resolve(self, name: str) -> str | None:
        """The digest ``name`` resolves to in the trusted set (like ``GET
        /v1/trusted/{name}``), or None."""
        if not isinstance(name, str) or not _NAME.fullmatch(name) or _dot_segment(name):
            return None
        view = self._current()
        if view.updater is None:
            return None
        info = self._lookup(view, name)
        signed = info.hashes.get("sha256") if info is not None else None
        return f"sha256:{signed}" if signed and re.fullmatch(r"[0-9a-f]{64}", signed) else None

    def status(self) -> dict[str, Any]:
        view = self._current()
        out: dict[str, Any] = {"ok": view.updater is not None, "source": view.source}
        if self.cache_refused:
            out["cache_refused"] = self.cache_refused
        if view.error:
            out["error"] = view.error
        if view.updater is not None:
            out["expires"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(view.expires))
            out["versions"] = view.versions
        return out

    def close(self) -> None:
        self._view = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- verification -------------------------------------------------------------------

    def _lookup(self, view: _View, path: str) -> TargetFile | None:
        if path in view.memo:
            return view.memo[path]
        assert view.updater is not None
        info = view.updater.get_targetinfo(path)
        if len(view.memo) < _MEMO_LIMIT:
            view.memo[path] = info
        return info

    def _current(self) -> _View:
        now = self.clock()
        key = self._key()
        view = self._view
        if view is not None and view.key == key and now < view.expires:
            return view
        with self._verify_lock:
            return self._verify(key)

    def _key(self) -> tuple[Any, ...]:
        """What the published dir holds now, by stat: a timestamp, a withdrawal, nothing.

        A timestamp is looked for again after a missing marker: the daemon writes the new
        timestamp before removing the marker, so a publish racing this never looks like
        the daemon being down."""
        for _attempt in range(2):
            found = _stat_key(self._timestamp_path)
            if found is not None:
                return found
            marker = _stat_key(self._withdrawn_path)
            if marker is not None:
                return ("withdrawn", *marker[1:])
        return ("absent",)

    def _verify(self, key: tuple[Any, ...]) -> _View:
        """Verify what ``key`` names (again if it changed meanwhile), with ngclient."""
        for _attempt in range(3):
            view = self._verify_once(key)
            after = self._key()
            if after == key:
                break
            key = after  # published again while we read: verify the new set
        self._view = view
        return view

    def _verify_once(self, key: tuple[Any, ...]) -> _View:
        now = self.clock()
        retry = now + RETRY_SECONDS
        # The daemon is down (or never published): the cache's last verified metadata,
        # verified again, until it expires.
        source = "published" if key[0] == "published" else "cache"
        try:
            with LockedCache(self.cache_dir) as cache:
                return self._verify_locked(key, cache, source, now)
        except UnsafeCache as exc:
            return _View(key, retry, error=f"cache refused: {exc}", source=source)
        except Exception as exc:  # fail closed on anything, and say what it was
            return _View(key, retry, error=_describe(exc, source), source=source)

    def _verify_locked(
        self, key: tuple[Any, ...], cache: LockedCache, source: str, now: float
    ) -> _View:
        retry = now + RETRY_SECONDS
        if key[0] == "withdrawn":
            # Step C-W1: remember the withdrawal durably, above every timestamp version
            # that could vouch for the withdrawn set (the withdrawn file's claim and what
            # this cache holds), so neither this checker nor a restarted one falls back.
            withdrawn = _read_small(self._withdrawn_path)
            floor = max(timestamp_version(withdrawn) or 0, cache.cached_timestamp_version())
            cache.remember_withdrawal(floor)
            return _View(key, retry, error="the daemon withdrew its metadata (a publish failed)")
        above = cache.withdrawn_above()
        if above is not None and source == "cache":
            # Step C-W2: after a withdrawal, the older cached set is never the answer.
            return _View(key, retry, source=source, error="the daemon withdrew its metadata "
                         "and has published nothing newer since")  # fmt: skip
        directory = self.published_dir if source == "published" else self.cache_dir
        updater = Updater(
            metadata_dir=str(self.cache_dir),
            metadata_base_url=BASE_URL,
            fetcher=DirectoryFetcher(directory),
            config=self.config,
            bootstrap=self._root,
        )
        updater.refresh()
        expires, versions = _expiry_and_versions(self.cache_dir)
        if above is not None:
            # Step C-W3: only a timestamp newer than the withdrawn one ends a withdrawal;
            # what it vouches for is durable in the cache before the marker goes.
            if versions["timestamp"]["version"] <= above:
                return _View(key, retry, source=source, error="the daemon withdrew its "
                             "metadata and this timestamp is not newer")  # fmt: skip
            cache.forget_withdrawal()
        # Step C-2a: ngclient checked expiry on the real clock; this checker's clock too.
        if now >= expires:
            return _View(key, retry, error=f"{source} metadata expired", source=source)
        return _View(key, expires, updater=updater, source=source, versions=versions)


def _read_small(path: str, limit: int = 1 << 20) -> bytes | None:
    """A regular file's first ``limit`` bytes, never through a link; None if unusable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read_at_most(fd, limit) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    finally:
        os.close(fd)


def _dot_segment(name: str) -> bool:
    return any(part in {".", ".."} for part in name.split("/"))


def _stat_key(path: str) -> tuple[Any, ...] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        # A directory this consumer may not read is not a daemon that is down: keyed as
        # published, its verification fails (closed) instead of falling back to the cache.
        return ("published", -1, exc.errno or 0, 0, 0)
    return ("published", st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _expiry_and_versions(cache: Path) -> tuple[float, dict[str, Any]]:
    """The earliest expiry of the metadata ngclient just verified and cached, and each
    role's version. Read after ``refresh()`` succeeded: these are the files it trusts."""
    versions: dict[str, Any] = {}
    earliest = float("inf")
    for role, path in (
        ("root", cache / "root.json"),
        ("timestamp", cache / "timestamp.json"),
        ("snapshot", cache / "snapshot.json"),
        ("targets", cache / "targets.json"),
    ):
        signed = json.loads(path.read_bytes())["signed"]
        expires = calendar.timegm(time.strptime(signed["expires"], "%Y-%m-%dT%H:%M:%SZ"))
        earliest = min(earliest, float(expires))
        versions[role] = {"version": signed["version"], "expires": signed["expires"]}
    return earliest, versions


def _describe(exc: Exception, source: str) -> str:
    kind = type(exc).__name__
    if isinstance(exc, exceptions.DownloadHTTPError) and source == "cache":
        return "no published metadata and no verified metadata cached"
    if isinstance(exc, exceptions.ExpiredMetadataError):
        return f"{source} metadata expired: {exc}"
    if isinstance(exc, exceptions.BadVersionNumberError):
        return f"{source} metadata rolled back: {exc}"
    if isinstance(exc, exceptions.LengthOrHashMismatchError):
        return f"{source} metadata mixed and matched: {exc}"
    return f"{source} metadata refused ({kind}): {str(exc)[:300]}"


# -- the module-level answer, configured from the environment ----------------------------

_default: TrustCheck | None = None
_default_lock = threading.Lock()


def default_check() -> TrustCheck:
    """The process-wide checker: ``$ASSAY_TRUST_DIR`` (default /run/assay-trust), the
    pinned root ``$ASSAY_TRUST_ROOT`` (default /etc/assay/trust/root/1.root.json), and
    the cache ``$ASSAY_TRUST_CACHE``, else systemd's ``$CACHE_DIRECTORY/assay-trust``,
    else ``$XDG_CACHE_HOME`` or ``~/.cache`` + ``/assay-trust``."""
    global _default
    with _default_lock:
        if _default is None:
            _default = TrustCheck(
                os.environ.get(ENV_DIR, DEFAULT_TRUST_DIR),
                Path(os.environ.get(ENV_ROOT, DEFAULT_ROOT)),
                _default_cache(),
            )
        return _default


def _default_cache() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    if os.environ.get("CACHE_DIRECTORY"):
        return Path(os.environ["CACHE_DIRECTORY"].split(":")[0]) / "assay-trust"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "assay-trust"


def is_trusted(name: str, digest: str) -> bool:
    """True only if the trusted set, as the pinned root vouches for it now, holds
    ``name`` at exactly ``digest``. Never raises for bad or missing metadata: False."""
    try:
        check = default_check()
    except OSError:  # no pinned root or no cache dir: nothing can be trusted
        return False
    return check.is_trusted(name, digest)
