"""``assay.consumer``: what a local runtime imports to load only trusted bytes, with no
trio, Quart or hypercorn behind it (a test imports it with them blocked).

``open_trusted`` hands over a verified read-only fd on a trusted artifact (the consumer
socket); ``is_trusted`` answers from the published TUF metadata with no request.
"""

from assay.consumer.fd import TrustedFile, open_trusted
from assay.consumer.tuf import TrustCheck, is_trusted

__all__ = ["TrustCheck", "TrustedFile", "is_trusted", "open_trusted"]
