"""Faults injected into a running relay: a 500 names its route, never an id or a message.

The reviewer's HTTP attacks (tests/relay/test_outside_review.py) found the inputs that
reached a 500; those are 400s now, so to keep the log line itself under test a fault is
injected into the service (a fake that raises, not a mock) and the log searched.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from assay.core.errors import BadRequest
from assay.relay.planner import Bounds, parse_value
from tests.relay.conftest import Running

HOUSEHOLD = "/v1/datasets/civil/entities/household/records"


async def test_a_500_logs_the_route_template_and_no_id_or_exception_text(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected error whose message (and whose cause's message) quotes the record
    id: the log names the route template and the exception types, nothing of the id, and
    a ``%0A`` in the path cannot start a line of its own."""
    secret = "H0000001"

    async def broken(*_args: Any, **_kw: Any) -> Any:
        try:
            raise ValueError(f"cause quoting {secret}")
        except ValueError as exc:
            raise KeyError(secret) from exc

    running.parts.relay.record = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.DEBUG):
        r = await running.get(f"{HOUSEHOLD}/{secret}%0AFORGED%20line")
    assert r.status_code == 500
    assert (await r.get_json())["detail"] == "internal error"  # no exception text
    text = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "KeyError" in text and "ValueError" in text
    assert "/records/<record_id>" in text
    assert secret not in text and "FORGED" not in text, text


_OFFSETS = st.integers(-24 * 60 + 1, 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))


_EAST = st.integers(1, 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
_WEST = st.integers(-24 * 60 + 1, -1).map(lambda m: timezone(timedelta(minutes=m)))
_STAMPS = st.one_of(
    st.datetimes(timezones=_OFFSETS),
    st.datetimes(max_value=datetime(1, 1, 1, 23, 59), timezones=_EAST),
    st.datetimes(min_value=datetime(9999, 12, 31), timezones=_WEST),
)


@given(_STAMPS)
def test_every_zoned_timestamp_parses_to_utc_or_is_a_typed_400(stamp: datetime) -> None:
    """The whole ``datetime`` range with every offset ``fromisoformat`` takes: the two
    ends overflow on the way to UTC, which must be ``entity.filter_value_invalid``."""
    try:
        value = parse_value(stamp.isoformat(), "timestamp", Bounds())
    except BadRequest as exc:
        assert exc.code == "entity.filter_value_invalid"
        assert stamp.year in (1, 9999)  # only the ends may be refused
        return
    assert value.tzinfo is UTC and value == stamp
