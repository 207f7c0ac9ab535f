"""``assay.consumer``: what a local program calls to use trusted artifacts, with no trio,
Quart or hypercorn behind it (a test imports it with them blocked)."""

from assay.consumer.tuf import TrustCheck, is_trusted

__all__ = ["TrustCheck", "is_trusted"]
