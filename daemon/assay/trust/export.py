"""``assay trust export DIR``: copy the published repository, as a client verified it.

The fleet format is the TUF repository itself: DIR can be served by any static server
or copied anywhere, and each host's consumers run python-tuf's stock
``ngclient.Updater`` against it with the root pinned at install.

  EXP-1 verify the source with ngclient against the pinned root, recording the exact
        bytes it verified (so the export is a set a client accepts, whatever happens to
        the source meanwhile);
  EXP-2 refuse to lower DIR's timestamp or snapshot version: an export must never be the
        rollback the fleet's clients would then refuse (or, fresh clients, believe);
  EXP-3 write the root chain, then targets, then snapshot, each durably, and
        ``timestamp.json`` last, so a server reading DIR never serves half a set;
  EXP-4 prune snapshot/targets versions older than the last ``keep``.

Blocking (files); no trio.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from tuf.ngclient import Updater

from assay.consumer.tuf import BASE_URL, DirectoryFetcher
from assay.core.atomic import atomic_write, fsync_dir
from assay.core.errors import IntegrityError
from assay.trust import metadata

_VERSIONED = re.compile(r"([1-9][0-9]{0,18})\.(snapshot|targets)\.json")


class ExportRefused(IntegrityError):
    code = "trust.export_refused"
    status = 409


def export(source: Path, target: Path, root: bytes, *, keep: int = 16) -> dict[str, Any]:
    # Step EXP-1: what a stock client verifies, byte for byte.
    fetcher = DirectoryFetcher(source)
    with tempfile.TemporaryDirectory(prefix="assay-export-") as cache:
        updater = Updater(metadata_dir=cache, metadata_base_url=BASE_URL, fetcher=fetcher,
                          bootstrap=root)  # fmt: skip
        try:
            updater.refresh()
        except Exception as exc:  # any refusal: export nothing
            raise ExportRefused(f"{source} does not verify against the pinned root: "
                                f"{type(exc).__name__}: {exc}") from None  # fmt: skip
    served = dict(fetcher.served)
    timestamp = served.pop("timestamp.json")
    snapshot_name = next(n for n in served if n.endswith(".snapshot.json"))
    new_ts = metadata.parse_version(timestamp, "timestamp") or 0
    new_snap = int(snapshot_name.split(".")[0])
    # Step EXP-2: never roll DIR back.
    target.mkdir(parents=True, exist_ok=True, mode=0o755)
    old = target / "timestamp.json"
    if old.is_file() and not old.is_symlink():
        old_ts = metadata.parse_version(old.read_bytes()[: 1 << 20], "timestamp") or 0
        old_snap = max((int(m.group(1)) for n in os.listdir(target)
                        if (m := _VERSIONED.fullmatch(n)) and m.group(2) == "snapshot"),
                       default=0)  # fmt: skip
        if new_ts < old_ts or new_snap < old_snap:
            raise ExportRefused(
                f"{target} holds timestamp v{old_ts} / snapshot v{old_snap}, newer than "
                f"the source's v{new_ts} / v{new_snap}: refusing to roll it back"
            )
    # Step EXP-3: roots, targets, snapshot, then the timestamp.
    files = {"1.root.json": root, **served}
    order = sorted(files, key=lambda n: (not n.endswith(".root.json"), "snapshot" in n))
    for name in order:
        atomic_write(target / name, files[name], mode=0o644)
    atomic_write(target / "timestamp.json", timestamp, mode=0o644)
    # Step EXP-4: keep the last ``keep`` versions for clients mid-update.
    targets_name = next(n for n in served if n.endswith(".targets.json"))
    newest = {"snapshot": new_snap, "targets": int(targets_name.split(".")[0])}
    for name in os.listdir(target):
        m = _VERSIONED.fullmatch(name)
        if m and int(m.group(1)) <= newest[m.group(2)] - keep:
            (target / name).unlink(missing_ok=True)
    fsync_dir(target)
    roots = sorted(n for n in files if n.endswith(".root.json"))
    return {
        "dir": str(target),
        "timestamp_version": new_ts,
        "snapshot_version": new_snap,
        "targets_version": newest["targets"],
        "root_versions": len(roots),
        "pinned_root_sha256": metadata.sha256_hex(root),
    }
