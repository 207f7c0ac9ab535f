"""The relay under the same booted systemd: socket activation on 127.0.0.1:8480, its
dataset seen only through a read-only path, its own dynamic user, keys only as credentials.

Runs after test_booted.py (file order) in the same namespace; ``assay-system relay-init``
makes the relay's keys, config and a small synthetic example dataset first.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.systemd.conftest import BootedSystem, wait_for

pytestmark = pytest.mark.systemd

RELAY = "http://127.0.0.1:8480"
UNIT = "assay-relay.service"
DYNAMIC_UIDS = range(61184, 65520)


@pytest.fixture(scope="module")
def relay(system: BootedSystem) -> dict[str, Any]:
    probe = system.run("/opt/assay/bin/assay", "relay", "--help", check=False)
    if probe.returncode != 0:
        pytest.skip("this build of assay has no `assay relay` command (relay CLI not wired)")
    out = system.run("assay-system", "relay-init", "--people", "3000", "--json", timeout=300)
    made: dict[str, Any] = json.loads(out.stdout)
    system.systemctl("start", "assay-relay.socket")
    return made


def test_first_request_activates_the_relay(system: BootedSystem, relay: dict[str, Any]) -> None:
    assert system.show("assay-relay.socket", "ActiveState")["ActiveState"] == "active"
    assert system.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    status, body = system.http("/healthz", base=RELAY)
    assert status == 200, body
    system.wait_active(UNIT)
    text = system.systemctl("status", UNIT, check=False)
    assert "active (running)" in text, text
    status, body = system.http("/readyz", base=RELAY)
    assert status == 200, body


def test_relay_answers_from_its_read_only_dataset(
    system: BootedSystem, relay: dict[str, Any]
) -> None:
    key = relay["api_keys"]["caseworker"]
    status, body = system.http("/v1/datasets", base=RELAY, headers={"X-API-Key": key})
    assert status == 200, body
    assert "civil" in body
    status, body = system.http("/v1/datasets", base=RELAY)
    assert status == 401, body

    system.wait_active(UNIT)
    pid = system.main_pid(UNIT)
    mounts = [line.split() for line in system.read(f"/proc/{pid}/mountinfo").splitlines()]
    datasets = [m for m in mounts if m[4] == "/srv/assay/datasets"]
    assert datasets, "no /srv/assay/datasets mount"
    assert all(m[5].split(",")[0] == "ro" for m in datasets), datasets
    srv = [m for m in mounts if m[4] == "/srv"]
    assert srv and all(m[5].split(",")[0] == "ro" for m in srv), srv
    listing = system.run("ls", f"/proc/{pid}/root/srv").stdout.split()
    assert listing == ["assay"], listing


def test_relay_runs_as_its_own_dynamic_user_with_credentials_only(
    system: BootedSystem, relay: dict[str, Any]
) -> None:
    system.wait_active(UNIT)
    pid = system.main_pid(UNIT)
    status = system.read(f"/proc/{pid}/status")
    uid = int(status.split("Uid:")[1].split()[0])
    assert uid in DYNAMIC_UIDS
    system.activate()
    assert uid != int(system.read(f"/proc/{system.main_pid()}/status").split("Uid:")[1].split()[0])
    creds = system.run("ls", "/run/credentials/assay-relay.service").stdout.split()
    assert "relay_answer-signing.key" in creds, creds
    assert "relay_key-caseworker.fp" in creds, creds
    environ = system.run("cat", f"/proc/{pid}/environ", text=False).stdout
    for raw in relay["api_keys"].values():
        assert raw.encode() not in environ
    fingerprint = system.run("cat", "/etc/assay/credentials/relay/key-caseworker.fp").stdout
    assert fingerprint.strip().encode() not in environ
    # The registry's state is out of reach of the relay's user.
    private = system.run("stat", "-c", "%a %u", "/var/lib/private", check=False).stdout.split()
    assert private[0] == "700" and private[1] == "0", private


def test_relay_stop_is_graceful(system: BootedSystem, relay: dict[str, Any]) -> None:
    system.wait_active(UNIT)
    system.systemctl("stop", UNIT)
    shown = system.show(UNIT, "Result", "ExecMainCode", "ExecMainStatus")
    assert shown["Result"] == "success", (shown, system.journal_text(UNIT))
    assert shown["ExecMainStatus"] == "0", shown
    status, body = system.http("/healthz", base=RELAY)
    assert status == 200, body
    wait_for(
        lambda: system.show(UNIT, "ActiveState")["ActiveState"] == "active",
        what="the relay to start again",
        timeout=120,
    )
