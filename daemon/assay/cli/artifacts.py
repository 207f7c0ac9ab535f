"""Artifact commands over HTTP: add, list, show, promote, revoke, delete, verify, fetch."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from assay.cli.client import Client
from assay.cli.output import emit_json, progress_bar
from assay.core.errors import BadRequest
from assay.registry.errors import DigestMismatch


def _common(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    p.add_argument("--url", help="daemon URL (default $ASSAY_URL or http://127.0.0.1:8470)")
    p.add_argument(
        "--token-file",
        help="file holding the bearer token (default $ASSAY_TOKEN_FILE or $ASSAY_TOKEN)",
    )
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")


def register(sub: Any) -> None:
    p = sub.add_parser("add", help="upload an artifact; it enters quarantined")
    p.add_argument("file")
    p.add_argument("--name", required=True)
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--digest", help="expected sha256:<hex>; computed locally if omitted")
    p.add_argument("--no-digest", action="store_true", help="do not declare a digest")
    _common(p)
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("list", help="list artifacts")
    p.add_argument("--state")
    p.add_argument("--name")
    _common(p)
    p.set_defaults(func=cmd_list)

    for name, helptext, func in (
        ("show", "show an artifact and its history", cmd_show),
        ("verify", "re-hash an artifact's stored bytes", cmd_verify),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("digest")
        _common(p)
        p.set_defaults(func=func)

    p = sub.add_parser("promote", help="approve/promote quarantined -> trusted")
    p.add_argument("digest")
    p.add_argument("--signature", action="append", default=[], metavar="KEY_ID:BASE64SIG")
    _common(p)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("revoke", help="revoke an artifact (terminal)")
    p.add_argument("digest")
    p.add_argument("--reason", required=True)
    _common(p)
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("delete", help="soft-delete: bytes removed, metadata kept")
    p.add_argument("digest")
    p.add_argument("--reason", default="")
    _common(p)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("sweep", help="re-hash every stored artifact now")
    _common(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("fetch", help="download a trusted artifact, verifying its digest")
    p.add_argument("digest")
    p.add_argument("-o", "--output", required=True)
    _common(p)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("status", help="daemon health, readiness, version, uptime, counts")
    _common(p)
    p.set_defaults(func=cmd_status)


def _client(args: argparse.Namespace) -> Client:
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


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def cmd_add(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise BadRequest(f"{path} is not a file")
    query: dict[str, Any] = {"name": args.name, "meta": args.meta}
    if not args.no_digest:
        query["digest"] = args.digest or _sha256_file(path)
    out = _client(args).upload(path, query, progress=progress_bar(f"uploading {path.name}"))
    if args.json:
        emit_json(out)
    else:
        art = out["artifact"]
        verb = "added" if out["created"] else "already present"
        print(f"{verb}: {art['digest']} ({art['name']}, {art['format']}, {art['state']})")
    return 0


def _pages(client: Client, query: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Every listed artifact, one page in memory at a time, following ``next_cursor``."""
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


def cmd_list(args: argparse.Namespace) -> int:
    """Streamed: a page is printed before the next is fetched, with ``--json`` too (one
    JSON document, written as it arrives; if a later page fails it stays unterminated and
    the exit code says why)."""
    query = {k: v for k, v in (("state", args.state), ("name", args.name)) if v}
    rows = _pages(_client(args), query)
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
    print(f"{'DIGEST':<19}  {'STATE':<11}  {'FORMAT':<11}  {'SIZE':>12}  {'INTEGRITY':<9}  NAME")
    for a in rows:
        print(f"{a['digest'][:19]:<19}  {a['state']:<11}  {a['format']:<11}  "
              f"{a['size']:>12}  {a['integrity']:<9}  {a['name']}")  # fmt: skip
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    out, _ = _client(args).request("GET", f"/v1/artifacts/{args.digest}")
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


def _mutation(args: argparse.Namespace, method: str, path: str, body: dict[str, Any]) -> int:
    out, headers = _client(args).request(method, path, body=body)
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
    sigs = []
    for item in args.signature:
        key_id, sep, sig = item.partition(":")
        if not sep:
            raise BadRequest("--signature takes KEY_ID:BASE64SIG")
        sigs.append({"key_id": key_id, "signature": sig})
    return _mutation(args, "POST", f"/v1/artifacts/{args.digest}/promote", {"signatures": sigs})


def cmd_revoke(args: argparse.Namespace) -> int:
    return _mutation(args, "POST", f"/v1/artifacts/{args.digest}/revoke", {"reason": args.reason})


def cmd_delete(args: argparse.Namespace) -> int:
    return _mutation(args, "DELETE", f"/v1/artifacts/{args.digest}", {"reason": args.reason})


def cmd_verify(args: argparse.Namespace) -> int:
    out, _ = _client(args).request("POST", f"/v1/artifacts/{args.digest}/verify")
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
    """Download to a temp file, check the digest, then rename: never a partial file."""
    out_path = Path(args.output)
    tmp = out_path.with_name(f".{out_path.name}.part")
    client = _client(args)
    expected = args.digest if args.digest.startswith("sha256:") else "sha256:" + args.digest
    try:
        with tmp.open("wb") as f:
            for _ in client.download(expected, f):
                pass
            f.flush()
            os.fsync(f.fileno())
        actual = _sha256_file(tmp)
        if actual != expected:
            raise DigestMismatch(f"downloaded bytes hash to {actual}, expected {expected}")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    if args.json:
        emit_json({"digest": expected, "path": str(out_path), "verified": True})
    else:
        print(f"fetched {expected} -> {out_path} (verified)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    health, _ = client.request("GET", "/healthz")
    try:
        ready, _ = client.request("GET", "/readyz")
    except Exception as exc:
        ready = {"ready": False, "error": str(exc)}
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
        print(f"  {name:<7} {'ok' if check.get('ok') else 'FAIL'}")
    print("counts: " + ", ".join(f"{k}={v}" for k, v in status["counts"].items()))
    replay = status.get("replay")
    if replay:
        print(
            f"last start replayed {replay['scanned']} audit records "
            f"({replay['mutations']} mutations, {replay['applied']} applied); "
            f"replay mark {status['replay_mark']}"
        )
    return 0 if ready.get("ready") else 1
