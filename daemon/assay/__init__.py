"""assay: a local trust registry for AI model artifacts, a scoped read relay, and the
tamper-evident audit core they share."""

__version__ = "0.1.0"
