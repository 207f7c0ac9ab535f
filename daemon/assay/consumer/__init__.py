"""``assay.consumer``: what a local runtime imports to load only trusted bytes.

No trio, Quart or hypercorn here (a test imports it with them blocked): a runtime's own
process needs only the standard library and this package.
"""

from assay.consumer.fd import TrustedFile, open_trusted

# is_trusted / TrustCheck (assay.consumer.tuf) are re-exported here too.

__all__ = ["TrustedFile", "open_trusted"]
