"""Schemathesis, every check, against the real relay process and its own document.

With a key that holds every scope of the ``civil`` dataset and its ``case`` entity, and
again with none. The dataset and entity in paths are given real names (one each, the
run's ``parameters``), so the runs reach the planner, budgets and disclosure control
rather than only the 404 of an unknown name; aggregates and record ids are generated.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import schemathesis_run
from tests.e2e.test_schemathesis_registry import failures
from tests.relay.conftest import RelayEnv, build_env
from tests.relay.test_e2e import running_relay

pytestmark = pytest.mark.e2e

#: Sent on every request, as a caller of an entity that requires a purpose must; the
#: document says which routes read it, but not which entities insist on it (config).
PURPOSE = "schemathesis-conformance"

#: ``limit``, ``fields``, ``cursor`` and the filters are bounded per entity by the relay's
#: config (``max_limit``, its fields, ``allowed_filters``, ``required_filters``), which
#: the document describes but does not enumerate: it is readable with any credential and
#: must not disclose the catalog. So on the three routes that take them, a schema-valid
#: value may be the planner's 400 (tests/relay/test_filters.py tests those refusals);
#: every other check, and positive acceptance on every other route, stays as it is.
CONFIG = """
[parameters]
"path.dataset" = "civil"
"path.entity" = "household"

[[operations]]
include-path-regex = "/(records|aggregates)"
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "400", "401", "403", "404", "409", "429",
]
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayEnv, str]]:
    tmp = tmp_path_factory.mktemp("relay-schemathesis")
    env = build_env(tmp, people=200)
    with running_relay(env, tmp / "relay.log") as (url, _proc):
        yield env, url


def run(live: tuple[RelayEnv, str], tmp: Path, key: str | None, seconds: int, *extra: str) -> None:
    env, url = live
    doc = httpx.get(f"{url}/openapi.json", headers=env.headers("case"), timeout=30).json()
    report = tmp / "junit.xml"
    token = env.keys[key] if key else None
    extra = (*extra, "-H", f"X-Purpose: {PURPOSE}")
    proc = schemathesis_run.run(url, doc, token=token, config=CONFIG, report=report,
                                extra=extra, max_seconds=seconds)  # fmt: skip
    found = failures(report) if report.exists() else []
    output = proc.stdout[-20000:] + proc.stderr[-5000:]
    assert proc.returncode == 0 and not found, "\n".join(found) + output


def test_schemathesis_finds_nothing_with_every_scope(
    live: tuple[RelayEnv, str], tmp_path: Path
) -> None:
    run(live, tmp_path, "case", 40)


def test_schemathesis_finds_nothing_without_a_key(
    live: tuple[RelayEnv, str], tmp_path: Path
) -> None:
    run(live, tmp_path, None, 15, "--phases", "fuzzing")
