#!/usr/bin/env python3
"""The baseline for ``bench_get.py``: a bare quart-trio JSON route on hypercorn.

    .venv/bin/python benchmarks/bare_app.py --config DEPLOYMENT/config.yaml --port PORT

One route, ``GET /v1/artifacts/<digest>``, answering a small JSON object with no auth, no
audit and no store. It is served with the daemon's own ``hypercorn_config`` (built from
the same deployment config, only the bind differs), so both sides of the ratio run on an
identically configured hypercorn in one process each: the ratio measures what assay adds
per request, not a difference in server settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "daemon"))

import trio  # noqa: E402
from hypercorn.trio import serve  # noqa: E402
from quart_trio import QuartTrio  # noqa: E402

from assay.registry.config import load_config  # noqa: E402
from assay.registry.daemon import hypercorn_config  # noqa: E402


def create_app() -> QuartTrio:
    app = QuartTrio("bare")

    @app.get("/v1/artifacts/<digest>")
    async def show(digest: str) -> dict[str, Any]:
        return {"artifact": {"digest": digest, "state": "quarantined"}, "history": []}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="an assay deployment config")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    hc = hypercorn_config(load_config(args.config))
    hc.bind = [f"127.0.0.1:{args.port}"]
    trio.run(serve, create_app(), hc)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
