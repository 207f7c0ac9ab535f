"""docs/posture.md's finding catalogue is the code's catalogue, row for row.

The table is what operators read to write a waiver or plan a profile; a finding added,
regated or renamed in ``assay.core.posture.catalogue`` without the docs fails here.
"""

from __future__ import annotations

from pathlib import Path

from assay.core.posture import FINDINGS
from assay.core.posture.model import PROFILE_ORDER, EvidenceKind, Profile, Severity

DOC = Path(__file__).resolve().parents[2] / "docs" / "posture.md"
COLUMNS = ["id", "finding", *[p.value for p in PROFILE_ORDER], "satisfied by", "waivable",
           "remedy"]  # fmt: skip


def _cells(line: str) -> list[str]:
    body = line.strip()[1:-1].replace("\\|", "\x00")
    return [c.strip().replace("\x00", "|") for c in body.split("|")]


def _table() -> list[list[str]]:
    lines = DOC.read_text().split("\n")
    start = lines.index("## Finding catalogue")
    rows = [ln for ln in lines[start:] if ln.startswith("|")]
    assert _cells(rows[0]) == COLUMNS
    return [_cells(r) for r in rows[2:] if r.startswith("| `POS-")]


def test_the_docs_list_every_finding_with_its_gates_in_code_order() -> None:
    documented = _table()
    assert [r[0].strip("`") for r in documented] == [f.id for f in FINDINGS]
    for row, f in zip(documented, FINDINGS, strict=True):
        gates = ["—" if f.gate(p) is None else f.gate(p).value for p in PROFILE_ORDER]  # type: ignore[union-attr]
        expected = [f"`{f.id}`", f.title, *gates,
                    f.satisfied_by.value if f.satisfied_by else "—",
                    "yes" if f.waivable else "no", f.remediation]  # fmt: skip
        assert row == expected, f.id


def test_the_docs_name_every_profile_severity_and_evidence_kind() -> None:
    text = DOC.read_text()
    for name in [*Profile, *Severity, *EvidenceKind]:
        assert f"`{name.value}`" in text, name
