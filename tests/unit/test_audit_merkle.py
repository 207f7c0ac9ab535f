"""Merkle trees: compact range, streaming proofs and RFC 9162 verification vs a naive tree."""

from __future__ import annotations

import hashlib

import pytest

from assay.core.audit import merkle
from assay.core.audit.merkle import CompactRange, inclusion_proof, leaf_hash, verify_inclusion


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def naive_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH by its recursive definition, over raw leaf data."""
    n = len(leaves)
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return _h(b"\x01" + naive_root(leaves[:k]) + naive_root(leaves[k:]))


def naive_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 PATH(m, D[n]) by its recursive definition."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*naive_path(m, leaves[:k]), naive_root(leaves[k:])]
    return [*naive_path(m - k, leaves[k:]), naive_root(leaves[:k])]


LEAVES = [f"leaf-{i}".encode() * (i % 3 + 1) for i in range(64)]

#: Roots from RFC 6962's reference test data (certificate-transparency merkle_tree_test).
RFC_LEAVES = [bytes.fromhex(x) for x in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
)]  # fmt: skip
RFC_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_empty_tree_root_is_hash_of_nothing() -> None:
    assert CompactRange().root() == merkle.EMPTY_ROOT == _h(b"")


def test_rfc6962_reference_roots() -> None:
    cr = CompactRange()
    for leaf, root in zip(RFC_LEAVES, RFC_ROOTS, strict=True):
        cr.push_data(leaf)
        assert cr.root().hex() == root


@pytest.mark.parametrize("size", range(1, 65))
def test_compact_range_matches_naive_root(size: int) -> None:
    cr = CompactRange()
    for leaf in LEAVES[:size]:
        cr.push_data(leaf)
    assert cr.root() == naive_root(LEAVES[:size])
    assert len(cr.hashes) == size.bit_count()
    assert merkle.root_of(leaf_hash(x) for x in LEAVES[:size]) == cr.root()


@pytest.mark.parametrize("size", range(1, 65))
def test_inclusion_proofs_match_naive_and_verify(size: int) -> None:
    leaves = LEAVES[:size]
    hashes = [leaf_hash(x) for x in leaves]
    root = naive_root(leaves)
    for m in range(size):
        proof = inclusion_proof(m, size, iter(hashes))
        assert proof == naive_path(m, leaves), (m, size)
        assert verify_inclusion(m, size, hashes[m], proof, root)
        # Wrong leaf, wrong index or a damaged path must all fail. (The size itself is
        # bound by the signed checkpoint that carries the root, not by the path.)
        assert not verify_inclusion(m, size, leaf_hash(b"other"), proof, root)
        if size > 1:
            assert not verify_inclusion((m + 1) % size, size, hashes[m], proof, root)
            bad = list(proof)
            bad[0] = bytes(32)
            assert not verify_inclusion(m, size, hashes[m], bad, root)
        assert not verify_inclusion(m, size, hashes[m], [*proof, bytes(32)], root)


def test_proof_streams_extra_leaves_and_refuses_too_few() -> None:
    hashes = [leaf_hash(x) for x in LEAVES]
    assert inclusion_proof(3, 10, iter(hashes)) == naive_path(3, LEAVES[:10])
    with pytest.raises(ValueError):
        inclusion_proof(3, 10, iter(hashes[:9]))
    with pytest.raises(ValueError):
        merkle.path_ranges(10, 10)


def test_index_outside_tree_never_verifies() -> None:
    assert not verify_inclusion(0, 0, leaf_hash(b""), [], merkle.EMPTY_ROOT)
    assert not verify_inclusion(-1, 4, leaf_hash(b""), [], merkle.EMPTY_ROOT)


def test_compact_range_state_round_trips_and_continues() -> None:
    cr = CompactRange()
    for leaf in LEAVES[:37]:
        cr.push_data(leaf)
    restored = CompactRange(cr.size, cr.hashes)
    for leaf in LEAVES[37:]:
        cr.push_data(leaf)
        restored.push_data(leaf)
    assert restored.root() == cr.root() == naive_root(LEAVES)
    with pytest.raises(ValueError):
        CompactRange(5, [bytes(32)])  # 5 = 0b101 needs two subtree roots
    with pytest.raises(ValueError):
        CompactRange(1, [b"short"])


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert merkle.node_hash(a, b) != leaf_hash(a + b)
