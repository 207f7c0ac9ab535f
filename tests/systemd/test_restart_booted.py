"""Restarts under a real systemd with a large audit log stay inside the start timeout.

A day of reads at a few hundred requests a second is millions of records; a restart
that replayed them would run past ``TimeoutStartSec=`` and the service could not come
back after a reboot. Here the packaged deployment is filled (stopped, as root, through
the daemon's own modules: tests/fill.py) with thousands of artifacts and 300,000 read
records, then restarted cleanly and after SIGKILL. Counted, not timed: systemd must see
READY=1 within the unit's own timeout, and ``/v1/status`` says what replay read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.systemd.conftest import BootedSystem
from tests.systemd.test_booted import WORK, audit_verify, status_of, wait_restarted

pytestmark = pytest.mark.systemd

ROOT = Path(__file__).resolve().parents[2]
STATE = "/var/lib/private/assay"
READS = 300_000
ARTIFACTS = 2_000

FILL = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from fill import fill
done = fill(Path("/etc/assay/config.yaml"), artifacts=int(sys.argv[2]), reads=int(sys.argv[3]))
print(json.dumps({"head_seq": done.head_seq}))
"""


def replay_status(system: BootedSystem) -> dict[str, Any]:
    status, body = system.http("/v1/status", system.admin_token)
    assert status == 200, body
    replay: dict[str, Any] = json.loads(body)["replay"]
    return replay


def test_restarts_with_a_large_audit_log_stay_inside_the_start_timeout(
    system: BootedSystem,
) -> None:
    system.activate()
    system.systemctl("stop", "assay.service")
    system.write(f"{WORK}/fill.py", (ROOT / "tests" / "fill.py").read_text())
    system.write(f"{WORK}/run_fill.py", FILL)
    out = system.run(
        "/opt/assay/bin/python3", f"{WORK}/run_fill.py", WORK, str(ARTIFACTS), str(READS),
        env={"CREDENTIALS_DIRECTORY": "/etc/assay/credentials"}, timeout=900,
    ).stdout  # fmt: skip
    head = json.loads(out)["head_seq"]
    assert head > READS
    # Written as root: give the state back to the service's user, as assay-system does.
    system.run("sh", "-c", f"chown -R --reference={STATE} {STATE}")

    # 1. A clean start over the large log: systemctl start waits for READY=1 and fails
    # the job if the unit's TimeoutStartSec= passes first.
    system.systemctl("start", "assay.service")
    system.wait_active()
    shown = system.show("assay.service", "TimeoutStartUSec", "Result")
    assert shown["Result"] == "success", shown
    assert replay_status(system)["scanned"] == 0  # the fill left the mark at the head

    # 2. SIGKILL while serving: systemd restarts it; replay reads only the moments since
    # the last saved mark, never the 300,000 reads.
    before = int(status_of(system)["NRestarts"])
    system.systemctl("kill", "--signal=KILL", "assay.service")
    wait_restarted(system, before)
    replay = replay_status(system)
    assert replay["scanned"] < 1000 and replay["applied"] == 0, replay
    listed = json.loads(system.cli("list", "--json").stdout)
    assert listed["count"] >= ARTIFACTS
    log = system.journal_text(lines=400)
    assert "timed out" not in log, log
    verify = audit_verify(system)
    assert verify.returncode == 0, verify.stdout + verify.stderr
