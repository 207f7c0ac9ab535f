"""The list of pure modules: decisions on bytes and values, no I/O.

Why a list in code: ``tests/unit/test_purity.py`` walks each module's imports (and the
assay modules they import, transitively) and fails if any reaches trio, Quart, hypercorn,
the file system, processes or the network. I/O belongs to the thin adapters around them.
"""

from __future__ import annotations

PURE_MODULES: tuple[str, ...] = (
    "assay.core.errors",
    "assay.core.tokens",
    "assay.core.problem",
    "assay.core.schema",
    "assay.core.strict_yaml",
    "assay.registry.errors",
    "assay.registry.states",
    "assay.registry.policy",
    "assay.registry.digests",
    "assay.registry.validate",
    "assay.registry.bodies",
    "assay.registry.amr_shape",
    "assay.formats.errors",
    "assay.formats.sniff",
    "assay.formats.zipend",
    "assay.formats.pickles",
    "assay.formats.safetensors",
    "assay.formats.gguf",
    "assay.formats.inspect",
    "assay.core.audit.schema",
    "assay.core.audit.chain",
    "assay.core.audit.verify",
    "assay.core.audit.merkle",
    "assay.core.audit.checkpoint",
    "assay.core.audit.receipt",
    "assay.relay.config",
    "assay.relay.decode",
    "assay.relay.planner",
    "assay.relay.cursor",
    "assay.relay.query",
    "assay.relay.disclosure",
    "assay.relay.apikeys",
    "assay.relay.jws",
    "assay.relay.errors",
    "assay.relay.access",
    "assay.relay.budget",
    "assay.relay.order",
    "assay.relay.views",
)

#: Top-level modules a pure module may never import, directly or through assay modules.
FORBIDDEN: frozenset[str] = frozenset(
    {
        "trio",
        "quart",
        "quart_trio",
        "hypercorn",
        "werkzeug",
        "sdnotify",
        "systemd",
        "os",
        "pathlib",
        "shutil",
        "tempfile",
        "io",
        "socket",
        "ssl",
        "http",
        "urllib",
        "subprocess",
        "sqlite3",
        "fcntl",
        "mmap",
        "signal",
        "threading",
        "asyncio",
        "multiprocessing",
        "select",
        "selectors",
        "glob",
        "httpx",
        "requests",
    }
)
