"""The shared core: config, credentials, scopes, errors and audit.

Nothing here knows about artifacts or datasets, so the registry and the relay can both
stand on it. The pure modules (no trio, Quart, file system or network) are listed in
``assay.purity.PURE_MODULES`` and a test enforces it.
"""
