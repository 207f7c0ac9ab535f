"""A problem never reflects unbounded caller text (core.problem, the one translator).

Searched: whatever path, detail and reasons reach ``from_error`` or ``from_status``, the
answer stays under a fixed size, a cut value is marked with ``…``, a cut path is marked
``instance_truncated``, and what fits comes back unchanged.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from assay.core import problem
from assay.core.errors import BadRequest

#: Every member bounded: the fixed members, a cut instance, detail and 64 cut reasons
#: (six bytes per character at worst, as JSON escapes a control character).
WORST = 6 * (problem.MAX_INSTANCE_CHARS + problem.MAX_DETAIL_CHARS * (1 + problem.MAX_REASONS))


@given(
    st.text(max_size=3000),
    st.text(max_size=5000),
    st.lists(st.text(max_size=3000), max_size=80),
)
def test_a_typed_error_answer_is_bounded_and_marked(
    path: str, detail: str, reasons: list[str]
) -> None:
    status, body = problem.from_error(
        BadRequest(detail, reasons=reasons), instance=path, request_id="r1"
    )
    assert status == 400 and len(problem.encode(body)) <= WORST + 1024
    assert (
        body["instance"] == path
        if len(path) <= problem.MAX_INSTANCE_CHARS
        else (
            body["instance"] == path[: problem.MAX_INSTANCE_CHARS - 1] + problem.MARK
            and body["instance_truncated"] is True
        )
    )
    assert ("instance_truncated" in body) == (len(path) > problem.MAX_INSTANCE_CHARS)
    assert len(body["detail"]) <= problem.MAX_DETAIL_CHARS
    assert body["detail"] == detail or body["detail"].endswith(problem.MARK)
    limit = problem.MAX_DETAIL_CHARS
    expected = [r if len(r) <= limit else r[: limit - 1] + problem.MARK for r in reasons]
    assert body.get("reasons", []) == expected[: problem.MAX_REASONS]


@given(st.text(max_size=70_000).map(lambda s: "/v1/artifacts/" + s))
def test_a_framework_error_answer_reflects_at_most_a_bounded_path(path: str) -> None:
    _status, body = problem.from_status(404, "not found", instance=path, request_id="r1")
    assert len(body["instance"]) <= problem.MAX_INSTANCE_CHARS
    assert path.startswith(body["instance"].removesuffix(problem.MARK))


def test_a_60_kb_path_comes_back_as_512_characters_marked() -> None:
    path = "/v1/artifacts/" + "a" * 60_000
    _status, body = problem.from_status(400, "bad digest", instance=path, request_id="r1")
    assert len(body["instance"]) == problem.MAX_INSTANCE_CHARS
    assert body["instance"].endswith(problem.MARK) and body["instance_truncated"] is True
    assert len(problem.encode(body)) < 1024
