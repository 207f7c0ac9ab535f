"""``assay doctor``: check a deployment and its host, for the registry, the relay or both.

Offline: reads the configs, the files they name and the audit log; runs
``systemd-analyze security --offline=yes`` on the unit files it finds. Every probe runs
(``thorough``), whatever the profile, and the findings are judged under the configured
profile or ``--profile``.

The configs are read without the daemons' trusted-file refusal, so that a config that is
group-writable or a symlink is reported (``POS-MODE-CONFIG``) instead of stopping the
check; the daemons still refuse it at startup.

Exit codes: 0 no finding at finding_error or worse stands (warnings may); 1 a
finding_error, readiness_fail or startup_fail stands; 2 usage or a config that does not
parse.
"""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assay.cli.output import emit_json
from assay.core.errors import ConfigError

# model.py is enums only (no pydantic): the rest of posture loads when doctor runs, so
# every other command starts without it (tests/unit/test_cli_startup.py).
from assay.core.posture.model import Profile, Severity

if TYPE_CHECKING:
    from assay.core.posture import Evaluation

DEFAULT_CONFIG = Path(".assay/config.yaml")
EXIT_CLEAN = 0
EXIT_FINDINGS = 1
DOCTOR_SCHEMA = "assay.doctor.v1"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "doctor",
        help="check a deployment's posture: exit 0 clean, 1 an error-level finding, 2 usage",
    )
    p.add_argument("--config", type=Path, help=f"registry config (default {DEFAULT_CONFIG} "
                   "when no --relay-config is given)")  # fmt: skip
    p.add_argument("--relay-config", type=Path, help="the relay config to check as well.")
    p.add_argument("--profile", choices=[x.value for x in Profile],
                   help="judge under this profile instead of the configured one")  # fmt: skip
    p.add_argument("--unit", type=Path, action="append", default=[],
                   help="a unit file to score (repeatable; default: systemd's dirs)")  # fmt: skip
    p.add_argument("--json", action="store_true",
                   help="print the findings as JSON (assay.doctor.v1) on stdout.")  # fmt: skip
    p.set_defaults(func=cmd_doctor)


def _read(path: Path) -> bytes:
    """The config's bytes, bounded; a FIFO or device is refused, never waited on."""
    from assay.core.strict_yaml import MAX_CONFIG_BYTES  # yaml only when doctor runs

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}", path=str(path)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file", path=str(path))
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes", path=str(path))
        return os.read(fd, MAX_CONFIG_BYTES + 1)[:MAX_CONFIG_BYTES]
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}", path=str(path)) from None
    finally:
        os.close(fd)


#: A unit file is a few kilobytes; anything larger is not one.
MAX_UNIT_BYTES = 1024 * 1024


def _check_units(units: tuple[Path, ...], names: set[str]) -> tuple[Path, ...]:
    """Each ``--unit`` must be a readable regular file named as a unit doctor scores: a
    typo would otherwise leave the unit unscored and the report clean
    (``cli.input_unreadable``, or ``cli.usage`` for a name no checked daemon runs as)."""
    from assay.cli.errors import UsageError
    from assay.cli.paths import read_input, show

    for unit in units:
        read_input(unit, max_bytes=MAX_UNIT_BYTES, what="--unit")
        if unit.name not in names:
            raise UsageError(
                f"--unit {show(unit)}: doctor scores the unit files named "
                f"{' and '.join(sorted(names))} here; a file named {unit.name!r} would be "
                "ignored (name the installed unit, or a copy with that name)"
            )
    return units


def evaluations(args: argparse.Namespace) -> list[tuple[Path, Evaluation]]:
    from assay.registry.config import parse_config as parse_registry
    from assay.registry.posture import UNIT, registry_posture
    from assay.relay.config import parse_config as parse_relay
    from assay.relay.posture import UNIT as RELAY_UNIT
    from assay.relay.posture import relay_posture

    registry_path: Path | None = args.config
    if registry_path is None and args.relay_config is None:
        registry_path = DEFAULT_CONFIG
    profile = Profile(args.profile) if args.profile else None
    names = {UNIT} if registry_path is not None else set()
    names |= {RELAY_UNIT} if args.relay_config is not None else set()
    units = _check_units(tuple(args.unit), names)
    out: list[tuple[Path, Evaluation]] = []
    if registry_path is not None:
        cfg = parse_registry(_read(registry_path), source=registry_path)
        out.append((registry_path, registry_posture(
            cfg, base=registry_path.resolve().parent, source=registry_path,
            profile=profile, unit_files=units)))  # fmt: skip
    if args.relay_config is not None:
        path: Path = args.relay_config
        rcfg = parse_relay(_read(path), source=str(path))
        out.append((path, relay_posture(
            rcfg, base=path.resolve().parent, source=path, profile=profile,
            unit_files=units)))  # fmt: skip
    return out


def exit_code(reports: list[dict[str, Any]]) -> int:
    """1 when any report has a standing finding at finding_error or worse, else 0."""
    worst = {r["worst"] for r in reports}
    bad = {Severity.ERROR.value, Severity.READINESS.value, Severity.STARTUP.value}
    return EXIT_FINDINGS if worst & bad else EXIT_CLEAN


def _status(f: dict[str, Any]) -> str:
    if f["severity"] == "not_applicable":
        return "not applicable"
    if f["evidence"] is not None:
        ev = f["evidence"]
        return f"satisfied: {ev['kind']} evidence ({ev['reference']})"
    if f["waived"]:
        w = f["waiver"]
        return f"waived until {w['expires']} by {w['approver']}: {w['reason']}"
    note = f" (waiver refused: {f['waiver']['refused']})" if f["waiver"] else ""
    return f"{f['effective']}{note}"


def print_text(path: Path, rep: dict[str, Any]) -> None:
    standing = [f for f in rep["findings"] if f["stands"]]
    print(f"{rep['daemon']} ({path}), profile {rep['profile']}: {len(standing)} standing"
          + (f", worst {rep['worst']}" if rep["worst"] else ""))  # fmt: skip
    order = {s.value: s.rank for s in Severity}
    ranked = sorted(rep["findings"], key=lambda f: -order.get(f["effective"] or "", 0))
    for f in ranked:
        print(f"  {f['id']:<26} [{_status(f)}] {f['title']}")
        for h in f["hits"][:5]:
            print(f"      {h['subject']}: {h['detail']}")
        if f["stands"]:
            print(f"      fix: {f['remediation']}")
    for ev in rep["evidence"]:
        until = f", until {ev['expires']}" if ev["expires"] else ""
        print(f"  evidence: {ev['kind']} {ev['reference']} by {ev['declared_by']} "
              f"on {ev['date']}{until}")  # fmt: skip


def cmd_doctor(args: argparse.Namespace) -> int:
    found = evaluations(args)
    from assay.core.posture import report

    reports = [report(ev) for _path, ev in found]
    code = exit_code(reports)
    if args.json:
        listed = [{"config": str(p), **r} for (p, _e), r in zip(found, reports, strict=True)]
        emit_json({"schema": DOCTOR_SCHEMA, "exit_code": code, "ok": code == EXIT_CLEAN,
                   "reports": listed})  # fmt: skip
    else:
        for (path, _ev), rep in zip(found, reports, strict=True):
            print_text(path, rep)
        verdict = "no finding at finding_error or worse" if code == EXIT_CLEAN else (
            "a finding at finding_error or worse stands")  # fmt: skip
        print(f"doctor: {verdict} (exit {code})")
    return code
