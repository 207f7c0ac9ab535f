"""Every directory on the way to a trusted file or a secret, not only its parent.

Review 9: config.yaml's parent was checked, its grandparent not, so anyone who could
write the grandparent could rename the deployment away and put their own in its place.
The differential test searches symlinked layouts: whenever renaming one entry of a
directory changes where a path leads, that directory is one ``directories_to`` checks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from assay.core.errors import SecretError, UnsafeFile
from assay.core.schema import SecretRef
from assay.core.secrets import read_secret
from assay.core.trusted_files import check_ancestors, directories_to, read_trusted


def _layout(tmp_path: Path) -> Path:
    top = tmp_path / "top"
    (top / "dep").mkdir(parents=True, mode=0o700)
    top.chmod(0o755)
    f = top / "dep" / "config.yaml"
    f.write_text("x: 1\n")
    f.chmod(0o600)
    return f


def test_a_world_writable_grandparent_is_refused_naming_it(tmp_path: Path) -> None:
    f = _layout(tmp_path)
    f.parent.parent.chmod(0o777)
    with pytest.raises(UnsafeFile) as info:
        read_trusted(f, max_bytes=100)
    assert str(f.parent.parent) in info.value.detail


def test_a_group_writable_ancestor_far_up_is_refused(tmp_path: Path) -> None:
    f = _layout(tmp_path)
    tmp_path.chmod(0o775)
    with pytest.raises(UnsafeFile, match=str(tmp_path)):
        check_ancestors(f)


def test_a_sticky_world_writable_ancestor_of_ours_is_allowed(tmp_path: Path) -> None:
    f = _layout(tmp_path)
    f.parent.parent.chmod(0o1777)  # as /tmp: nobody else can rename our entries
    assert read_trusted(f, max_bytes=100) == b"x: 1\n"


def test_an_ancestor_owned_by_another_user_is_refused_even_sticky(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    f = _layout(tmp_path)
    os.chown(f.parent.parent, 54321, 54321)
    f.parent.parent.chmod(0o1755)
    with pytest.raises(UnsafeFile, match="owned by uid 54321"):
        check_ancestors(f)


def test_the_directory_holding_a_symlink_on_the_way_is_checked(tmp_path: Path) -> None:
    f = _layout(tmp_path)
    hub = tmp_path / "hub"
    hub.mkdir(mode=0o777)
    hub.chmod(0o777)
    (hub / "link").symlink_to(f.parent)
    with pytest.raises(UnsafeFile, match=str(hub)):
        read_trusted(hub / "link" / "config.yaml", max_bytes=100)


def test_the_directories_of_a_symlinks_target_are_checked(tmp_path: Path) -> None:
    f = _layout(tmp_path)
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o755)
    (safe / "link").symlink_to(os.path.relpath(f.parent, safe))
    assert read_trusted(safe / "link" / "config.yaml", max_bytes=100)
    f.parent.parent.chmod(0o777)
    with pytest.raises(UnsafeFile, match=str(f.parent.parent)):
        read_trusted(safe / "link" / "config.yaml", max_bytes=100)


def test_a_symlink_loop_is_refused_not_followed_forever(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(UnsafeFile):
        check_ancestors(tmp_path / "a" / "config.yaml")


def test_a_secret_in_a_world_writable_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "secrets"
    d.mkdir(mode=0o700)
    key = d / "k"
    key.write_text("a" * 64)
    key.chmod(0o600)
    assert read_secret(SecretRef(file=str(key)), base=tmp_path) == b"a" * 64
    d.chmod(0o777)
    with pytest.raises(SecretError, match=str(d)):
        read_secret(SecretRef(file=str(key)), base=tmp_path)


def test_a_secret_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    key = tmp_path / "k"
    key.write_text("a" * 64)
    key.chmod(0o600)
    os.chown(key, 54321, 54321)
    with pytest.raises(SecretError, match="owned by uid 54321"):
        read_secret(SecretRef(file=str(key)), base=tmp_path)


NAMES = ["a", "b", "c"]
#: A link target: a chain of names, "..", relative or absolute (from the layout root).
TARGET = st.tuples(
    st.booleans(), st.lists(st.sampled_from([*NAMES, "..", "."]), min_size=1, max_size=3)
)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    dirs=st.lists(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3), min_size=1, max_size=4),
    links=st.lists(
        st.tuples(
            st.lists(st.sampled_from(NAMES), max_size=2), st.sampled_from(["l", "m"]), TARGET
        ),
        max_size=3,
    ),
    walk=st.lists(st.sampled_from([*NAMES, "l", "m", "l", "m", ".."]), min_size=1, max_size=4),
)
def test_every_directory_whose_entries_steer_the_lookup_is_checked(
    tmp_path_factory: pytest.TempPathFactory,
    dirs: list[list[str]],
    links: list[tuple[list[str], str, tuple[bool, list[str]]]],
    walk: list[str],
) -> None:
    """Differential against the kernel: rename each entry of each directory in the
    layout away in turn; if that changes what the path's directory resolves to (or
    whether it resolves), the directory holding the entry must be among those checked."""
    root = tmp_path_factory.mktemp("layout")
    for chain in dirs:
        (root.joinpath(*chain)).mkdir(parents=True, exist_ok=True)
    for where, name, (absolute, parts) in links:
        holder = root.joinpath(*where)
        if not holder.is_dir() or (holder / name).exists() or (holder / name).is_symlink():
            continue
        target = str(root.joinpath(*parts)) if absolute else os.path.join(*parts)
        (holder / name).symlink_to(target)
    path = root.joinpath(*walk) / "config.yaml"

    def where() -> tuple[int, int] | None:
        try:
            info = os.stat(path.parent)
        except OSError:
            return None
        return (info.st_dev, info.st_ino)

    before = where()
    if before is None:
        return  # the layout does not resolve: nothing to steer
    checked = {str(d) for d in directories_to(path)}
    assert os.path.realpath(path.parent) == str(directories_to(path)[-1])
    for holder, subdirs, files in os.walk(root):
        for entry in subdirs + files:
            moved = os.path.join(holder, entry + ".moved")
            os.rename(os.path.join(holder, entry), moved)
            try:
                changed = where() != before
            finally:
                os.rename(moved, os.path.join(holder, entry))
            if changed:
                event("an entry steered the lookup")
                if holder != str(root) and os.path.islink(os.path.join(holder, entry)):
                    event("a symlink below the root steered it")
                assert holder in checked, (holder, entry, sorted(checked))
