"""The transition table is the whole lifecycle: test it exhaustively, as data."""

from __future__ import annotations

import itertools

import pytest

from assay.registry.errors import StateConflict
from assay.registry.states import (
    CONSUMABLE,
    INITIAL_STATE,
    TRANSITIONS,
    Action,
    State,
    is_terminal,
    next_state,
)


def test_every_artifact_enters_quarantined() -> None:
    assert INITIAL_STATE is State.QUARANTINED


def test_only_trusted_is_consumable() -> None:
    assert CONSUMABLE == {State.TRUSTED}


def test_only_promote_reaches_trusted() -> None:
    into_trusted = {(s, a) for (s, a), to in TRANSITIONS.items() if to is State.TRUSTED}
    assert into_trusted == {(State.QUARANTINED, Action.PROMOTE)}


def test_revoked_artifact_can_never_be_promoted_again() -> None:
    with pytest.raises(StateConflict) as info:
        next_state(State.REVOKED, Action.PROMOTE)
    assert info.value.code == "artifact.state_conflict"
    assert info.value.status == 409


def test_deleted_artifact_can_never_be_promoted_or_deleted_again() -> None:
    for action in Action:
        with pytest.raises(StateConflict):
            next_state(State.DELETED, action)
    assert is_terminal(State.DELETED)


def test_delete_is_allowed_from_every_state_but_deleted() -> None:
    for state in State:
        if state is State.DELETED:
            continue
        assert next_state(state, Action.DELETE) is State.DELETED


def test_trusted_cannot_be_promoted_twice() -> None:
    with pytest.raises(StateConflict):
        next_state(State.TRUSTED, Action.PROMOTE)


@pytest.mark.parametrize(("state", "action"), list(itertools.product(State, Action)))
def test_table_is_total_over_state_action_pairs(state: State, action: Action) -> None:
    """Every pair either has an entry or raises the typed conflict: nothing else."""
    if (state, action) in TRANSITIONS:
        assert next_state(state, action) is TRANSITIONS[(state, action)]
    else:
        with pytest.raises(StateConflict) as info:
            next_state(state, action)
        assert state.value in info.value.detail


def test_no_transition_leaves_revoked_except_delete() -> None:
    assert {a for (s, a) in TRANSITIONS if s is State.REVOKED} == {Action.DELETE}
