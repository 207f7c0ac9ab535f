"""docs/relay.md's quick start, run as it is written, and what ``relay init`` makes.

The fenced blocks after the ``<!-- quickstart: ... -->`` markers are taken from the doc
and run by ``sh`` in a fresh directory, with ``assay`` on ``PATH`` (this checkout's) and
``$ASSAY_RELAY_BIND`` naming a free port (the only thing the doc leaves to the
environment): the first block's last command is the server, started in the background;
the second block is run once it is ready, and its answers are checked. So the doc
cannot drift from the commands again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from assay.cli import relay_init
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.e2e

DOC = ROOT / "docs" / "relay.md"


def quickstart_blocks() -> dict[str, str]:
    text = DOC.read_text()
    found = re.findall(r"<!-- quickstart: (\w+)[^>]*-->\n```sh\n(.*?)```", text, re.DOTALL)
    return dict(found)


def commands(block: str) -> list[str]:
    """The block's commands, continuation lines joined, comments and blanks dropped."""
    joined = block.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def _env(tmp: Path) -> dict[str, str]:
    shim = tmp / "bin"
    shim.mkdir()
    (shim / "assay").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m assay "$@"\n')
    (shim / "assay").chmod(0o755)
    return {
        "PATH": f"{shim}:/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "HOME": str(tmp),
        "ASSAY_RELAY_BIND": f"127.0.0.1:{free_port()}",
    }


def _answers(stdout: str) -> list[Any]:
    decoder, docs, i = json.JSONDecoder(), [], 0
    while i < len(stdout):
        if stdout[i].isspace():
            i += 1
            continue
        doc, i = decoder.raw_decode(stdout, i)
        docs.append(doc)
    return docs


@pytest.mark.skipif(shutil.which("curl") is None, reason="the quick start uses curl")
def test_the_relay_quick_start_works_as_written(tmp_path: Path) -> None:
    blocks = quickstart_blocks()
    assert set(blocks) == {"serve", "ask"}, blocks
    env = _env(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    *setup, serve = commands(blocks["serve"])
    assert serve.startswith("assay relay serve"), "the serve block ends with the server"
    for command in setup:
        subprocess.run(["sh", "-ec", command], cwd=work, env=env, check=True, timeout=300,
                       capture_output=True, stdin=subprocess.DEVNULL)  # fmt: skip
    log = (tmp_path / "relay.log").open("wb")
    server = subprocess.Popen(["sh", "-c", f"exec {serve}"], cwd=work, env=env,
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log)  # fmt: skip
    try:
        url = f"http://{env['ASSAY_RELAY_BIND']}"
        for _ in range(1200):
            assert server.poll() is None, (tmp_path / "relay.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        ask = subprocess.run(["sh", "-ec", blocks["ask"]], cwd=work, env=env, check=True,
                             timeout=120, capture_output=True, text=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    person, aggregate = _answers(ask.stdout)
    sample = dict(
        line.split("=", 1)
        for line in (work / "relay-demo" / "relay.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert sample["RELAY_URL"] == url
    assert person["count"] == 1
    assert person["records"][0]["national_id"] == sample["SAMPLE_NATIONAL_ID"]
    assert aggregate["groups"] and {g["municipality"] for g in aggregate["groups"]} == {"M01"}


def test_init_writes_secrets_private_and_refuses_to_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(relay_init.BIND_ENV, raising=False)
    out = relay_init.init_relay(tmp_path / "demo", bind="127.0.0.1:8480", people=300)
    demo = tmp_path / "demo"
    assert out["url"] == "http://127.0.0.1:8480" and "sources" in out["checked"]
    for d in (demo, demo / "secrets", demo / "state"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for f in [*(demo / "secrets").iterdir(), demo / "relay.env", demo / "relay.yaml"]:
        mode = stat.S_IMODE(f.stat().st_mode)
        assert mode == (0o644 if f.suffix == ".pub" else 0o600), (f, oct(mode))
    env = (demo / "relay.env").read_text()
    for key_id in relay_init.KEY_IDS:
        raw = re.search(rf"^{key_id.upper()}_KEY=(assayrk_\S+)$", env, re.MULTILINE)
        assert raw is not None
        config = (demo / "relay.yaml").read_text()
        assert raw.group(1) not in config  # the raw key is only on the client's side
        assert out["api_keys"][key_id]["commitment"] in config
    from assay.core.errors import ConfigError

    with pytest.raises(ConfigError, match="not empty"):
        relay_init.init_relay(demo, bind="127.0.0.1:8480", people=300)


def _shape(doc: dict[str, Any]) -> dict[str, Any]:
    """The config minus what init fills in: the address and each key's secret parts."""
    doc = json.loads(json.dumps(doc))
    doc["server"].pop("bind")
    for key in doc["auth"]["api_keys"]:
        key.pop("fingerprint")
        key.pop("commitment")
    return doc


def test_init_makes_the_shipped_example_config() -> None:
    """``relay/example/relay.yaml`` and what ``relay init`` writes are one config."""
    shipped = yaml.safe_load((ROOT / "relay" / "example" / "relay.yaml").read_text())
    made = yaml.safe_load(relay_init.TEMPLATE.substitute(
        bind="127.0.0.1:1", caseworker_commitment="c", statistics_commitment="s"))  # fmt: skip
    assert _shape(made) == _shape(shipped)
    ids = [k["id"] for k in made["auth"]["api_keys"]]
    assert tuple(ids) == relay_init.KEY_IDS


@pytest.mark.parametrize("where", ["missing", "empty", "cwd"])
def test_a_refused_init_leaves_the_directory_as_it_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # Refused by the check at the end (a non-loopback bind), after every file was
    # written: nothing of it may remain, in DIR or beside it, and the retry succeeds.
    from assay.core.errors import AssayError

    demo = tmp_path / "demo"
    if where != "missing":
        demo.mkdir(mode=0o755)
    target = demo
    if where == "cwd":
        monkeypatch.chdir(demo)
        target = Path(".")
    with pytest.raises(AssayError):
        relay_init.init_relay(target, bind="192.0.2.1:80", people=20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if where == "missing" else ["demo"])
    if where != "missing":
        assert list(demo.iterdir()) == []
    out = relay_init.init_relay(target, bind=f"127.0.0.1:{free_port()}", people=20)
    assert (demo / "relay.yaml").is_file() and (demo / "data").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no staging left
    assert stat.S_IMODE(demo.stat().st_mode) == 0o700
    assert out["config"] == str(target / "relay.yaml")
