"""journald's CODE_FILE, CODE_LINE and CODE_FUNC must name the code that made the event,
never the logging wrapper: a journal that says every promotion happened in
``logsetup.py:67`` tells an investigator nothing.

systemd-python's JournalHandler copies them from the LogRecord's ``pathname``, ``lineno``
and ``funcName``, so a handler that keeps the records sees what journald would store.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from assay.core import logsetup
from assay.registry import daemon as registry_daemon


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def recorded() -> Iterator[list[logging.LogRecord]]:
    logger = logging.getLogger("assay")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    recorder = Recorder()
    logger.handlers[:] = [recorder]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield recorder.records
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def here() -> int:
    """The line number of the caller's next line (where the call under test sits)."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno + 1


def assert_attributed_to_this_file(record: logging.LogRecord, line: int, func: str) -> None:
    assert Path(record.pathname).resolve() == Path(__file__).resolve(), record.pathname
    assert (record.lineno, record.funcName) == (line, func)


def test_an_event_names_its_caller_not_logsetup(recorded: list[logging.LogRecord]) -> None:
    line = here()
    logsetup.event("promote", "promote sha256:ab", digest="sha256:ab", seq=7)
    (record,) = recorded
    assert_attributed_to_this_file(record, line, "test_an_event_names_its_caller_not_logsetup")
    assert Path(record.pathname).name != "logsetup.py"
    # The structured fields still ride along.
    assert record.__dict__["MESSAGE_ID"] == logsetup.MESSAGE_IDS["promote"]
    assert record.__dict__["ASSAY_SEQ"] == "7"


def test_an_error_event_from_a_nested_caller_is_attributed_to_it(
    recorded: list[logging.LogRecord],
) -> None:
    def sweeper_found_a_bad_blob() -> int:
        line = here()
        logsetup.event("integrity_failed", "bad", priority=logging.ERROR, digest="sha256:cd")
        return line

    line = sweeper_found_a_bad_blob()
    (record,) = recorded
    assert record.levelno == logging.ERROR
    assert_attributed_to_this_file(record, line, "sweeper_found_a_bad_blob")


def test_a_forwarding_wrapper_can_hand_on_its_callers_frame(
    recorded: list[logging.LogRecord],
) -> None:
    """A wrapper that forwards someone else's event passes ``stacklevel + 1``; each level
    it adds moves the attribution one frame further out, never into the wrapper."""

    def wrapper(kind: str, *, stacklevel: int = 1) -> None:
        logsetup.event(kind, kind, stacklevel=stacklevel + 1)

    def outer_wrapper(kind: str) -> None:
        wrapper(kind, stacklevel=2)

    first = here()
    wrapper("revoke")
    second = here()
    outer_wrapper("delete")
    name = "test_a_forwarding_wrapper_can_hand_on_its_callers_frame"
    assert [(r.lineno, r.funcName) for r in recorded] == [(first, name), (second, name)]
    for record in recorded:
        assert_attributed_to_this_file(record, record.lineno, name)


def test_registry_events_through_the_daemons_callback_name_the_registry_code(
    recorded: list[logging.LogRecord],
) -> None:
    """The daemon hands the registry a closure that calls ``_events``, which calls
    ``event``: two wrappers. The same shape as ``run``'s ``events`` closure must land on
    the registry method that emitted the event."""
    source = inspect.getsource(registry_daemon.run)
    assert "_events(kind, fields, stacklevel=2)" in source

    def events(kind: str, fields: dict[str, Any]) -> None:  # run()'s closure, as written
        registry_daemon._events(kind, fields, stacklevel=2)

    def promote() -> int:  # a registry method calling self._events(...)
        line = here()
        events("promote", {"digest": "sha256:ef", "state": "trusted"})
        return line

    line = promote()
    (record,) = recorded
    assert_attributed_to_this_file(record, line, "promote")
    assert record.getMessage() == "promote sha256:ef"


def test_systemd_journal_handler_sends_the_call_site() -> None:
    """Differential against the real JournalHandler (when systemd-python is installed,
    as in the package's venv): the CODE_* fields it would send name this test."""
    journal = pytest.importorskip("systemd.journal")
    sent: list[dict[str, Any]] = []

    # journal.send's own parameter name: the record's "message" attribute arrives as a field.
    def sender(MESSAGE: str, **fields: Any) -> None:
        sent.append({"MESSAGE": MESSAGE, **fields})

    logger = logging.getLogger("assay")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers[:] = [journal.JournalHandler(sender_function=sender)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        line = here()
        logsetup.event("checkpoint", "checkpoint size=3", seq=3)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    (fields,) = sent
    assert Path(fields["CODE_FILE"]).resolve() == Path(__file__).resolve()
    assert int(fields["CODE_LINE"]) == line
    assert fields["CODE_FUNC"] == "test_systemd_journal_handler_sends_the_call_site"
    assert fields["ASSAY_SEQ"] == "3"
