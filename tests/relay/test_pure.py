"""The relay's pure modules reach no I/O, and the planner refuses any input only by type."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from assay.core.errors import BadRequest
from assay.relay.planner import Bounds, FieldSpec, plan_records

FIELDS = (
    FieldSpec("id", "id", "string", True),
    FieldSpec("size", "size", "integer"),
    FieldSpec("born", "born", "date"),
    FieldSpec("seen", "seen", "timestamp"),
    FieldSpec("ok", "ok", "boolean"),
    FieldSpec("score", "score", "number"),
)
ALLOWED = {f.name: frozenset({"eq", "in", "gte", "lte", "between"}) for f in FIELDS}
NAMES = st.sampled_from(
    ["id", "size", "size.in", "born.between", "seen.gte", "ok", "score.lte", "limit",
     "cursor", "fields", "x", "id.in", "size.between"]
)  # fmt: skip

#: Free text is marked with a "\u00a7" so a value echoed into ``reasons`` is caught.
VALUES = st.text(max_size=40).map(lambda t: "\u00a7" + t) | st.sampled_from(
    ["1", "5", "2024-01-01", "2024-01-01T00:00:00Z", "true", "1,2", "1.5", "a,b,c"]
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(NAMES | st.text(max_size=12), VALUES),
        max_size=25,
    )
)
def test_planner_turns_any_input_into_a_plan_or_a_bad_request(
    args: list[tuple[str, str]],
) -> None:
    try:
        plan = plan_records(
            args, fields=FIELDS, allowed=ALLOWED, required=(), default_limit=10,
            max_limit=100, bounds=Bounds(max_filters=20, max_in_values=5, max_value_chars=32),
            max_cursor_chars=64,
        )  # fmt: skip
    except BadRequest as err:
        assert err.code.split(".")[0] in {"entity", "request"}
        # Values never reach reasons (which the audit keeps); no field name holds a "\u00a7".
        assert "\u00a7" not in " ".join(err.reasons) or any("\u00a7" in k for k, _ in args)
        return
    assert 1 <= plan.limit <= 100
    assert all(c.field in ALLOWED for c in plan.conditions)
    assert len(plan.conditions) <= 20
