"""``assay.consumer``: what a local runtime imports to load only trusted bytes, with no
trio, Quart or hypercorn behind it (a test imports it with them blocked).

``open_trusted`` hands over a verified read-only fd on a trusted artifact (the consumer
socket); ``is_trusted`` answers from the published TUF metadata with no request.

The two halves are loaded when first named (PEP 562): the fd half is the standard
library only, while the TUF half brings python-tuf and cryptography, so ``assay open``
and ``assay exec`` do not pay for the TUF client at start-up (``benchmarks/bench_cli.py``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from assay.consumer.fd import TrustedFile, open_trusted
    from assay.consumer.tuf import TrustCheck, is_trusted

__all__ = ["TrustCheck", "TrustedFile", "is_trusted", "open_trusted"]

_HOME = {
    "TrustedFile": "assay.consumer.fd",
    "open_trusted": "assay.consumer.fd",
    "TrustCheck": "assay.consumer.tuf",
    "is_trusted": "assay.consumer.tuf",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value
