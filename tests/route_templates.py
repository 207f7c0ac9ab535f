"""The route templates the real apps declare, read from their own URL maps.

For the cardinality tests: a metric's ``route`` label may only ever be one of these
(``assay.core.metrics.RouteNamer``), whatever path a caller sends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quart_trio import QuartTrio

from assay.core.authn import Authenticator
from assay.registry.app import create_app
from assay.registry.db import RegistryDB
from assay.registry.policy import Policy
from assay.registry.service import Registry
from assay.registry.store import ObjectStore


class NullAudit:
    async def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        return dict(fields)


def registry_app(tmp: Path) -> QuartTrio:
    """The registry's real app over an empty store in ``tmp`` (routes only; not served)."""
    registry = Registry(
        store=ObjectStore(tmp / "store"),
        db=RegistryDB(tmp / "registry.db"),
        policy=Policy(name="test"),
        audit_append=NullAudit().append,
        max_artifact_bytes=1024,
        block_bytes=64 * 1024,
    )
    return create_app(registry, authenticator=Authenticator(tmp / "none.json"),
                      audit=NullAudit(), max_json_body_bytes=65536, readiness=dict)  # fmt: skip
