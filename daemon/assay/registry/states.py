"""The artifact lifecycle as data: states, actions and the transition table.

Default deny: every artifact enters ``quarantined``; only ``promote`` makes it
``trusted``; ``revoked`` is terminal except for soft deletion, which keeps metadata and
history for forensic review; ``deleted`` is terminal. Pure: no I/O, like h11's _state.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from assay.registry.errors import StateConflict


class State(StrEnum):
    QUARANTINED = "quarantined"
    TRUSTED = "trusted"
    REVOKED = "revoked"
    DELETED = "deleted"


class Action(StrEnum):
    PROMOTE = "promote"
    REVOKE = "revoke"
    DELETE = "delete"


INITIAL_STATE = State.QUARANTINED

#: The only legal moves. Anything absent is a 409 ``artifact.state_conflict``.
TRANSITIONS: Mapping[tuple[State, Action], State] = MappingProxyType(
    {
        (State.QUARANTINED, Action.PROMOTE): State.TRUSTED,
        (State.QUARANTINED, Action.REVOKE): State.REVOKED,
        (State.TRUSTED, Action.REVOKE): State.REVOKED,
        (State.QUARANTINED, Action.DELETE): State.DELETED,
        (State.TRUSTED, Action.DELETE): State.DELETED,
        (State.REVOKED, Action.DELETE): State.DELETED,
    }
)

#: Only these states may be consumed at runtime (served, resolved by name).
CONSUMABLE: frozenset[State] = frozenset({State.TRUSTED})

#: States whose bytes are kept in the store (deleted artifacts keep metadata only).
KEEPS_BYTES: frozenset[State] = frozenset({State.QUARANTINED, State.TRUSTED, State.REVOKED})


def next_state(current: State, action: Action) -> State:
    """The state ``action`` leads to from ``current``, or ``StateConflict``."""
    try:
        return TRANSITIONS[(current, action)]
    except KeyError:
        allowed = sorted(a.value for (s, a) in TRANSITIONS if s == current)
        raise StateConflict(
            f"cannot {action.value} an artifact that is {current.value}",
            state=current.value,
            action=action.value,
            allowed_actions=allowed,
        ) from None


def is_terminal(state: State) -> bool:
    return not any(s == state for (s, _a) in TRANSITIONS)
