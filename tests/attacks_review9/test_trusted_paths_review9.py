"""Review 9: files trusted beyond their modes, the next members of the class.

Issue 9 (point 7) made config.yaml and the policies check type, mode, owner and the
*immediate* parent directory. An attacker who can rename or replace any directory on the
path, or any secret file, still decides what the daemon trusts. Each test arranges one
such deployment and asserts the safe behaviour: ``assay serve`` refuses to start, naming
the path. Runs as root in this sandbox (chown to another uid needs it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Deployment, init_deployment

pytestmark = pytest.mark.e2e

NOBODY = 65534


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    outer = tmp_path / "outer"
    outer.mkdir(mode=0o755)
    d = init_deployment(outer)
    try:
        yield d
    finally:
        d.stop()


def refuses_to_start(d: Deployment, path: Path) -> None:
    """The daemon must exit (not become ready), and say which path is unsafe."""
    try:
        d.start()
    except AssertionError:
        assert str(path) in d.stderr(), d.stderr()[-2000:]
        return
    raise AssertionError(f"daemon started although {path} lets another user replace it")


def test_config_under_world_writable_grandparent_is_refused(dep: Deployment) -> None:
    # The deployment dir (config.yaml's parent) is 0700 and root's, but the directory
    # holding *it* is 0777 without the sticky bit: anyone can `mv outer/d outer/x` and
    # put their own d/ (their config, their policies, their tokens) in its place.
    grand = dep.dir.parent
    os.chmod(grand, 0o777)
    refuses_to_start(dep, grand)


def test_secrets_directory_writable_by_others_is_refused(dep: Deployment) -> None:
    # tokens.json and the audit HMAC key are 0600, but their directory is 0777: anyone
    # can replace tokens.json with one holding their own admin token's fingerprint.
    secrets = dep.dir / "secrets"
    os.chmod(secrets, 0o777)
    refuses_to_start(dep, secrets)


def test_secret_file_owned_by_another_user_is_refused(dep: Deployment) -> None:
    # A 0600 secret owned by uid 65534: that user can rewrite it (or chmod it) at will.
    # Config files follow "owned by root or the daemon's uid"; secrets must too.
    key = dep.dir / "secrets" / "audit-hmac.key"
    os.chown(key, NOBODY, NOBODY)
    refuses_to_start(dep, key)


def test_token_file_owned_by_another_user_is_refused(dep: Deployment) -> None:
    tokens = dep.dir / "secrets" / "tokens.json"
    os.chown(tokens, NOBODY, NOBODY)
    refuses_to_start(dep, tokens)
