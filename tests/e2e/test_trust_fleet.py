"""Past one host: ``assay trust export DIR`` writes the TUF repository; a loopback static
HTTP server stands in for the other host; its consumers are python-tuf's stock
``ngclient.Updater`` (default urllib3 fetcher) with the root pinned at install.

The attacks are the server's: it serves an older export (rollback), a repository frozen
in the past (freeze), files of one version under the names of another (mix-and-match),
and endless bytes.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api import exceptions
from tuf.ngclient import Updater

from assay.trust import metadata
from assay.trust.config import TrustSection
from assay.trust.keys import load_signer_file
from assay.trust.repository import Repository, read_root_chain
from tests.conftest import Deployment, run_cli, upload
from tests.formats_factory import valid_st
from tests.trust_util import Clock, static_server

pytestmark = pytest.mark.e2e


def export(dep: Deployment, target: Path) -> dict[str, Any]:
    out = run_cli("trust", "export", str(target), "--config", str(dep.config), "--json",
                  check=True)  # fmt: skip
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def pinned(dep: Deployment) -> bytes:
    """What a consumer host installs: the root the deployment was created with."""
    return (dep.dir / "trust" / "root" / "1.root.json").read_bytes()


def updater(dep: Deployment, cache: Path, url: str) -> Updater:
    cache.mkdir(parents=True, exist_ok=True)
    return Updater(metadata_dir=str(cache), metadata_base_url=url, bootstrap=pinned(dep))


def promoted(dep: Deployment, i: int) -> str:
    with dep.client() as c:
        r = upload(c, valid_st({"w": ("F32", [4])}, fill=100 + i), name=f"fleet/{i}")
        d: str = r.json()["artifact"]["digest"]
        assert c.post(f"/v1/artifacts/{d}/promote").status_code == 200
    return d


def revoke(dep: Deployment, d: str) -> None:
    with dep.client() as c:
        assert c.post(f"/v1/artifacts/{d}/revoke", json={"reason": "fleet"}).status_code == 200


def test_stock_updater_follows_an_exported_repository_over_http(
    deployment: Deployment, tmp_path: Path
) -> None:
    dep = deployment
    d = promoted(dep, 0)
    served = tmp_path / "www"
    export(dep, served)
    with static_server(served) as url:
        client = updater(dep, tmp_path / "host-b", url)
        info = client.get_targetinfo(f"fleet/0@{d}")
        assert info is not None and info.hashes["sha256"] == d.removeprefix("sha256:")
        assert info.custom["format"] == "safetensors"
        name = client.get_targetinfo("fleet/0")
        assert name is not None and name.hashes["sha256"] == d.removeprefix("sha256:")
        revoke(dep, d)
        export(dep, served)  # the host's periodic copy
        again = updater(dep, tmp_path / "host-b", url)  # same cache: it remembers
        assert again.get_targetinfo(f"fleet/0@{d}") is None
        assert again.get_targetinfo("fleet/0") is None


def test_rollback_attack_by_the_fleet_server_is_refused(
    deployment: Deployment, tmp_path: Path
) -> None:
    dep = deployment
    d = promoted(dep, 1)
    old = tmp_path / "old"
    export(dep, old)  # still trusts fleet/1
    revoke(dep, d)
    new = tmp_path / "new"
    export(dep, new)
    with static_server(new) as url:
        updater(dep, tmp_path / "host", url).refresh()
    with static_server(old) as url, pytest.raises(exceptions.BadVersionNumberError):
        updater(dep, tmp_path / "host", url).refresh()
    # And the export itself never rolls a served dir back.
    proc = run_cli("trust", "export", str(new), "--config", str(dep.config), "--from", str(old))
    assert proc.returncode == 1 and "roll it back" in proc.stderr


def test_freeze_attack_by_the_fleet_server_is_refused(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The server replays a repository as the daemon signed it two hours ago, when the
    now-revoked artifact was still trusted: its timestamp has expired."""
    dep = deployment
    d = promoted(dep, 2)
    revoke(dep, d)
    past = Clock()
    past.advance(-2 * 3600)
    frozen = tmp_path / "frozen"
    repo = Repository(
        publish_dir=frozen,
        state_dir=tmp_path / "frozen-state",
        roots=metadata.check_root_chain(read_root_chain(dep.dir / "trust" / "root")),
        signer=load_signer_file(dep.dir / "secrets" / "tuf-online.key", what="online key"),
        section=TrustSection(online_key={"file": "unused"}),
        clock=past,
        wall_ns=past.wall_ns,
    )
    repo.open()
    then = metadata.Entry("fleet/2", d, 0, "safetensors", "2030-01-01T00:00:00.000Z")
    published = repo.publish(frozenset({then}))
    assert published.timestamp_expires < Clock().now - timedelta(minutes=30)
    with static_server(frozen) as url:
        client = updater(dep, tmp_path / "fresh-host", url)
        with pytest.raises(exceptions.ExpiredMetadataError):
            client.refresh()


@pytest.mark.parametrize("role", ["snapshot", "targets"])
def test_mix_and_match_attack_by_the_fleet_server_is_refused(
    deployment: Deployment, tmp_path: Path, role: str
) -> None:
    """Current timestamp, but an older snapshot (or targets) under the current name."""
    dep = deployment
    d = promoted(dep, 3)
    old = tmp_path / "old"
    old_out = export(dep, old)
    revoke(dep, d)
    new = tmp_path / "new"
    new_out = export(dep, new)
    old_bytes = (old / f"{old_out[role + '_version']}.{role}.json").read_bytes()
    current_name = f"{new_out[role + '_version']}.{role}.json"

    def lie(path: str) -> bytes | None:
        return old_bytes if path == current_name else None

    with static_server(new, override=lie) as url:
        client = updater(dep, tmp_path / "host", url)
        with pytest.raises((exceptions.LengthOrHashMismatchError,
                            exceptions.DownloadLengthMismatchError)):  # fmt: skip
            client.refresh()


def test_endless_data_from_the_fleet_server_is_cut_at_the_length_limit(
    deployment: Deployment, tmp_path: Path
) -> None:
    dep = deployment
    served = tmp_path / "www"
    export(dep, served)
    endless = b" " * (64 * 1024 * 1024)

    def lie(path: str) -> bytes | None:
        return endless if path == "timestamp.json" else None

    with static_server(served, override=lie) as url:
        client = updater(dep, tmp_path / "host", url)
        with pytest.raises(exceptions.DownloadLengthMismatchError):
            client.refresh()


def test_the_exported_dir_is_a_repository_assay_consumers_verify_too(
    deployment: Deployment, tmp_path: Path
) -> None:
    from assay.consumer.tuf import TrustCheck

    dep = deployment
    d = promoted(dep, 4)
    copied = tmp_path / "copied"
    export(dep, copied)
    shutil.copytree(copied, tmp_path / "rsynced")  # "copies it with anything static"
    check = TrustCheck(tmp_path / "rsynced", pinned(dep), tmp_path / "cache")
    assert check.is_trusted("fleet/4", d)
