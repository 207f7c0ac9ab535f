"""The connection clock and the eviction choice, driven by generated event sequences.

Properties an attacker would have to break to hold a connection: no phase but a
request in progress is ever without a deadline; bytes of an unfinished head never push
its deadline out; inside a request, only moving bytes push it out, and a wait on the
client always has one; at the cap, a connection in a request is never the one closed.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from assay.core.connlimits import (
    Clock,
    Limits,
    Phase,
    descriptors_wanted,
    fit_to_descriptors,
    pick_eviction,
)

LIMITS = Limits(max_connections=8, keep_alive=5.0, header_read=10.0, request=60.0)

EVENTS = st.sampled_from(
    ["received", "sent", "head", "answered", "wait", "unwait", "finished", "tick"]
)
STEPS = st.lists(st.tuples(EVENTS, st.floats(0, 30), st.integers(0, 4096)), max_size=60)


def apply(clock: Clock, kind: str, now: float, count: int) -> None:
    if kind == "received":
        clock.received(now, count)
    elif kind == "sent":
        clock.sent(now, count)
    elif kind == "head":
        clock.head_complete(now)
    elif kind == "answered":
        clock.answered(now)
    elif kind == "wait":
        clock.wait_began(now)
    elif kind == "unwait":
        clock.wait_ended()
    elif kind == "finished":
        clock.app_finished(now)


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_only_a_request_the_app_works_on_unwaited_has_no_deadline(
    steps: list[tuple[str, float, int]],
) -> None:
    clock = Clock(LIMITS, since=0.0)
    now = 0.0
    for kind, dt, count in steps:
        now += dt
        apply(clock, kind, now, count)
        deadline = clock.deadline()
        if clock.phase is Phase.REQUEST and clock.waits == 0 and not clock.app_done:
            assert deadline is None
        else:
            assert deadline is not None
            limit = {Phase.IDLE: 5.0, Phase.HEAD: 10.0, Phase.REQUEST: 60.0}[clock.phase]
            assert deadline <= now + limit  # never further out than one full limit


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3), st.integers(1, 4096)), min_size=1, max_size=80))
def test_a_trickled_head_never_moves_its_deadline(trickle: list[tuple[float, int]]) -> None:
    clock = Clock(LIMITS, since=0.0)
    clock.received(1.0, 1)  # the head's first byte
    assert clock.phase is Phase.HEAD and clock.deadline() == 11.0
    now = 1.0
    for dt, count in trickle:
        now += dt
        clock.received(now, count)
        clock.sent(now, count)  # an error page going out does not help either
        assert clock.deadline() == 11.0
    assert clock.expired(11.0) and not clock.expired(10.999)


@settings(max_examples=300, deadline=None)
@given(STEPS, st.floats(0, 1000))
def test_inside_a_request_only_moving_bytes_push_the_deadline_out(
    steps: list[tuple[str, float, int]], later: float
) -> None:
    clock = Clock(LIMITS, since=0.0)
    clock.head_complete(0.0)
    clock.wait_began(0.0)
    assert clock.deadline() == 60.0
    now = 0.0
    last_progress = 0.0
    for kind, dt, count in steps:
        if kind in ("head", "answered", "unwait", "finished"):
            continue  # stay inside the request, with the client wait open
        now += dt
        apply(clock, kind, now, count)
        if kind in ("received", "sent") and count > 0:
            last_progress = now
        assert clock.deadline() == last_progress + 60.0  # another wait does not reset it
    # Nothing moves any more: the connection expires one limit after the last progress.
    assert clock.expired(last_progress + 60.0 + later)


def test_server_side_work_is_not_a_client_wait() -> None:
    clock = Clock(LIMITS, since=0.0)
    clock.head_complete(0.0)
    with_wait = Clock(LIMITS, since=0.0)
    with_wait.head_complete(0.0)
    with_wait.wait_began(0.0)
    assert not clock.expired(10**9)  # hashing a 70 GB artifact: no client wait, no cut
    assert with_wait.expired(60.0)
    with_wait.wait_ended()
    assert with_wait.deadline() is None


def test_an_answered_connection_falls_back_to_keep_alive() -> None:
    clock = Clock(LIMITS, since=0.0)
    clock.received(0.0, 100)
    clock.head_complete(0.5)
    clock.answered(2.0)
    assert clock.phase is Phase.IDLE and clock.deadline() == 7.0


PHASED = st.lists(
    st.tuples(st.sampled_from(list(Phase)), st.floats(0, 1000)), min_size=1, max_size=40
)


@settings(max_examples=300, deadline=None)
@given(PHASED)
def test_eviction_closes_the_oldest_connection_without_a_request(
    conns: list[tuple[Phase, float]],
) -> None:
    clocks = [Clock(LIMITS, since=since, phase=phase) for phase, since in conns]
    chosen = pick_eviction(clocks)
    evictable = [c for c in clocks if c.phase is not Phase.REQUEST]
    if not evictable:
        assert chosen is None  # all in a request: the newcomer is refused instead
        return
    assert chosen is not None
    assert clocks[chosen].phase is not Phase.REQUEST
    assert clocks[chosen].since == min(c.since for c in evictable)


def test_after_the_app_finished_only_the_transport_holds_the_request_and_it_is_timed() -> None:
    clock = Clock(LIMITS, since=0.0)
    clock.head_complete(0.0)
    assert clock.deadline() is None  # the app works
    clock.app_finished(100.0)  # answered; an unread body still holds the request
    assert clock.deadline() == 160.0
    clock.app_finished(150.0)  # a second notice changes nothing
    clock.received(150.0, 10)  # the body keeps coming: progress, not an endless hold
    assert clock.deadline() == 210.0
    clock.answered(151.0)
    assert clock.phase is Phase.IDLE and clock.deadline() == 156.0
    clock.received(152.0, 1)
    clock.head_complete(153.0)
    assert clock.deadline() is None  # the next request starts without the old state


@given(st.integers(1, 65536), st.integers(0, 1 << 20))
def test_the_cap_always_fits_the_descriptor_limit(cap: int, nofile: int) -> None:
    limits = Limits(max_connections=cap, keep_alive=5.0, header_read=10.0, request=60.0)
    fitted = fit_to_descriptors(limits, nofile)
    assert 1 <= fitted.max_connections <= cap
    if nofile >= descriptors_wanted(limits):
        assert fitted == limits  # room enough: untouched
    elif fitted.max_connections > 1:
        assert descriptors_wanted(fitted) <= nofile  # lowered only as far as needed
        assert descriptors_wanted(Limits(fitted.max_connections + 1, 5.0, 10.0, 60.0)) > nofile
