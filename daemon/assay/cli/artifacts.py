"""Artifact commands over HTTP: add, list, show, promote, revoke, delete, verify, fetch.

Names and digests: an artifact is its bytes, so a digest carries exactly one name, the
one it was first added under. ``add`` of bytes already stored under another name does
not rename or alias them: it says so (``artifact.name_conflict``, exit 5) and changes
nothing. Digests may be given as unique prefixes (``assay.cli.digests``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assay.cli.digests import resolve
from assay.cli.errors import InputUnreadable, NameConflict
from assay.cli.options import STATES, daemon_options, digest_argument, text_arg
from assay.cli.output import emit_json, progress_bar

if TYPE_CHECKING:
    from assay.cli.client import Client

#: Kept for command modules that share these options (``daemon_options``).
_common = daemon_options


def register(sub: Any) -> None:
    p = sub.add_parser(
        "add",
        help="upload an artifact; it enters quarantined",
        description="Stream FILE to the daemon, which judges it by content and stores it "
        "quarantined. Bytes already stored keep the name they were first added under.",
    )
    p.add_argument("file", metavar="FILE", help="the safetensors or GGUF file to upload")
    p.add_argument(
        "--name",
        required=True,
        metavar="NAME",
        type=text_arg,
        help="the artifact's name: /-separated segments of [A-Za-z0-9._+-]",
    )
    p.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=text_arg,
        help="a metadata entry (repeat the flag for several)",
    )
    p.add_argument(
        "--digest",
        metavar="DIGEST",
        type=text_arg,
        help="the sha256:<hex> FILE must have (default: computed from FILE)",
    )
    p.add_argument(
        "--no-digest",
        action="store_true",
        help="declare no digest: the daemon hashes what arrives, unchecked",
    )
    daemon_options(p)
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("list", help="list artifacts, every page, as they arrive")
    p.add_argument(
        "--state",
        choices=STATES,
        metavar="STATE",
        help="only artifacts in this state: quarantined, trusted, revoked or deleted",
    )
    p.add_argument("--name", metavar="NAME", type=text_arg,
                   help="only artifacts with exactly this name")  # fmt: skip
    daemon_options(p)
    p.set_defaults(func=cmd_list)

    for name, helptext, what, func in (
        ("show", "show an artifact's metadata, state and history", "show", cmd_show),
        ("verify", "re-hash an artifact's stored bytes now", "re-hash", cmd_verify),
    ):
        p = sub.add_parser(name, help=helptext)
        digest_argument(p, what)
        daemon_options(p)
        p.set_defaults(func=func)

    p = sub.add_parser("promote", help="approve; promotes quarantined -> trusted once the "
                       "policy passes")  # fmt: skip
    digest_argument(p, "approve")
    p.add_argument(
        "--signature",
        action="append",
        default=[],
        metavar="KEY_ID:BASE64SIG",
        type=text_arg,
        help="a publisher signature (`assay publisher sign`); repeat for several",
    )
    daemon_options(p)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("revoke", help="revoke an artifact (terminal: never served again)")
    digest_argument(p, "revoke")
    p.add_argument(
        "--reason",
        required=True,
        metavar="TEXT",
        type=text_arg,
        help="why, for the history and the audit log (one line)",
    )
    daemon_options(p)
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("delete", help="soft-delete: bytes removed, metadata and history kept")
    digest_argument(p, "delete")
    p.add_argument(
        "--reason",
        default="",
        metavar="TEXT",
        type=text_arg,
        help="why, for the history and the audit log (one line; optional)",
    )
    daemon_options(p)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("sweep", help="re-hash every stored artifact now")
    daemon_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("fetch", help="download a trusted artifact, verifying its digest")
    digest_argument(p, "download")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="where to write it (its directory must exist): written whole and "
                   "verified beside it, then renamed into place; an existing FILE must be a "
                   "regular file; - writes to stdout")  # fmt: skip
    daemon_options(p)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("status", help="daemon health, readiness, version, uptime, counts")
    daemon_options(p)
    p.set_defaults(func=cmd_status)


def _client(args: argparse.Namespace) -> Client:
    from assay.cli.client import Client

    return Client.from_args(args.url, args.token_file)


def _print_artifact(art: dict[str, Any]) -> None:
    for key in (
        "digest",
        "name",
        "state",
        "format",
        "size",
        "integrity",
        "created_at",
        "state_changed_at",
        "uploaded_by",
    ):
        print(f"{key:>16}: {art.get(key)}")
    for k, v in sorted(art.get("metadata", {}).items()):
        print(f"{'meta ' + k:>16}: {v}")
    if art.get("approvals"):
        print(f"{'approvals':>16}: {', '.join(art['approvals'])}")


def _open_input(path: Path) -> int:
    """An fd on the regular file ``path``; ``cli.input_unreadable`` for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block
    except OSError as exc:
        raise InputUnreadable(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputUnreadable(f"cannot read {path}: not a regular file")
    return fd


def sha256_fd(fd: int) -> str:
    import hashlib

    h = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, 1024 * 1024, offset):
        h.update(chunk)
        offset += len(chunk)
    return "sha256:" + h.hexdigest()


def cmd_add(args: argparse.Namespace) -> int:
    path = Path(args.file)
    fd = _open_input(path)
    try:
        query: dict[str, Any] = {"name": args.name, "meta": args.meta}
        if not args.no_digest:
            query["digest"] = args.digest or sha256_fd(fd)
    finally:
        os.close(fd)
    out = _client(args).upload(path, query, progress=progress_bar(f"uploading {path.name}"))
    art = out["artifact"]
    if not out["created"] and art["name"] != args.name:
        raise NameConflict(
            f"{art['digest']} is already stored as {art['name']!r}; a digest carries one "
            f"name, so it was not added as {args.name!r} (nothing changed)",
            artifact=art,
            requested_name=args.name,
        )
    if args.json:
        emit_json(out)
    else:
        verb = "added" if out["created"] else "already present"
        print(f"{verb}: {art['digest']} ({art['name']}, {art['format']}, {art['state']})")
    return 0


def _pages(client: Client, query: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Every listed artifact, one page in memory at a time, following ``next_cursor``."""
    from assay.core.errors import BadRequest

    cursor: str | None = None
    for _page in range(MAX_LIST_PAGES):
        page_query = {**query, "limit": str(LIST_PAGE)} | ({"cursor": cursor} if cursor else {})
        out, _ = client.request("GET", "/v1/artifacts", query=page_query)
        yield from out["artifacts"]
        cursor = out.get("next_cursor")
        if not cursor:
            return
    raise BadRequest(f"listing did not end after {MAX_LIST_PAGES} pages", code="cli.list_unbounded")


#: Rows per request while listing, and a bound on pages (10 million artifacts).
LIST_PAGE = 1000
MAX_LIST_PAGES = 10_000
#: Hex digits of a digest that ``list`` shows; every digest argument accepts them.
SHORT_HEX = 12


def cmd_list(args: argparse.Namespace) -> int:
    """Streamed: a page is printed before the next is fetched, with ``--json`` too (one
    JSON document, written as it arrives; if a later page fails it stays unterminated and
    the exit code says why). Nothing is printed until the first page has arrived, so an
    error before it is the only output."""
    query = {k: v for k, v in (("state", args.state), ("name", args.name)) if v}
    pages = _pages(_client(args), query)
    first = list(itertools.islice(pages, 1))
    rows = itertools.chain(first, pages)
    out = sys.stdout
    if args.json:
        out.write('{\n  "artifacts": [')
        count = 0
        for art in rows:
            out.write(("," if count else "") + "\n    " + json.dumps(art, sort_keys=True))
            count += 1
        out.write(f'\n  ],\n  "count": {count}\n}}\n')
        return 0
    # Fixed widths with the name last, so rows print as they arrive.
    width = len("sha256:") + SHORT_HEX
    print(
        f"{'DIGEST':<{width}}  {'STATE':<11}  {'FORMAT':<11}  {'SIZE':>12}  {'INTEGRITY':<9}  NAME"
    )
    for a in rows:
        print(f"{a['digest'][:width]:<{width}}  {a['state']:<11}  {a['format']:<11}  "
              f"{a['size']:>12}  {a['integrity']:<9}  {a['name']}")  # fmt: skip
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    client = _client(args)
    out, _ = client.request("GET", f"/v1/artifacts/{resolve(client, args.digest)}")
    if args.json:
        emit_json(out)
        return 0
    _print_artifact(out["artifact"])
    print("history:")
    for h in out["history"]:
        print(
            f"  {h['ts']}  {h['action']:<18} {h['from_state'] or '-':>11} -> "
            f"{h['to_state'] or '-':<11} by {h['principal']}  seq={h['audit_seq']}"
        )
    return 0


def _mutation(args: argparse.Namespace, method: str, action: str, body: dict[str, Any]) -> int:
    client = _client(args)
    path = f"/v1/artifacts/{resolve(client, args.digest)}{action}"
    out, headers = client.request(method, path, body=body)
    if args.json:
        emit_json(
            out | ({"receipt": headers["assay-receipt"]} if "assay-receipt" in headers else {})
        )
        return 0
    art = out["artifact"]
    print(f"{art['digest']}: {art['state']}")
    for rule in out.get("decision", {}).get("failed", []):
        print(f"  pending: {rule}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from assay.cli.errors import UsageError

    sigs = []
    for item in args.signature:
        key_id, sep, sig = item.partition(":")
        if not sep or not key_id or not sig:
            raise UsageError("--signature takes KEY_ID:BASE64SIG")
        sigs.append({"key_id": key_id, "signature": sig})
    return _mutation(args, "POST", "/promote", {"signatures": sigs})


def cmd_revoke(args: argparse.Namespace) -> int:
    return _mutation(args, "POST", "/revoke", {"reason": args.reason})


def cmd_delete(args: argparse.Namespace) -> int:
    return _mutation(args, "DELETE", "", {"reason": args.reason})


def cmd_verify(args: argparse.Namespace) -> int:
    client = _client(args)
    out, _ = client.request("POST", f"/v1/artifacts/{resolve(client, args.digest)}/verify")
    if args.json:
        emit_json(out)
    else:
        print(f"{out['digest']}: {'ok' if out['ok'] else 'MISMATCH ' + str(out.get('actual'))}")
    return 0 if out["ok"] else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    out, _ = _client(args).request("POST", "/v1/sweep")
    if args.json:
        emit_json(out)
    else:
        print(f"checked {out['checked']}, failed {len(out['failed'])}")
        for d in out["failed"]:
            print(f"  MISMATCH {d}")
    return 0 if not out["failed"] else 1


def cmd_fetch(args: argparse.Namespace) -> int:
    from assay.cli import fetch_cmd

    return fetch_cmd.cmd_fetch(args)


def cmd_status(args: argparse.Namespace) -> int:
    from assay.core.errors import AssayError

    client = _client(args)
    health, _ = client.request("GET", "/healthz")
    try:
        ready, _ = client.request("GET", "/readyz")
    except AssayError as exc:  # a 503 still says what fails: {"ready", "failing"}
        ready = {"error": exc.detail, **exc.extra, "ready": False}
    status, _ = client.request("GET", "/v1/status")
    out = {"healthz": health, "readyz": ready, "status": status}
    if args.json:
        emit_json(out)
        return 0
    print(
        f"assay {status['version']}  up {status['uptime_seconds']:.0f}s  policy {status['policy']}"
    )
    print(f"health: {health['status']}  ready: {ready.get('ready')}")
    # The checks in full come with a token holding artifacts:read (also in /v1/status,
    # which answers while /readyz says 503); without it only the names of failing ones.
    checks = (
        ready.get("checks")
        or status.get("ready")
        or {name: {"ok": False} for name in ready.get("failing", [])}
    )
    for name, check in checks.items():
        print(f"  {name:<9} {'ok' if check.get('ok') else 'FAIL'}")
    print("counts: " + ", ".join(f"{k}={v}" for k, v in status["counts"].items()))
    sweep = status.get("last_sweep")
    if sweep:
        print(f"last sweep: {sweep.get('finished')}, checked {sweep.get('checked')}, "
              f"failed {len(sweep.get('failed', []))}")  # fmt: skip
    replay = status.get("replay")
    if replay:
        print(
            f"last start replayed {replay['scanned']} audit records "
            f"({replay['mutations']} mutations, {replay['applied']} applied); "
            f"replay mark {status['replay_mark']}"
        )
    return 0 if ready.get("ready") else 1
