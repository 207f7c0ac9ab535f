"""The relay: scoped, minimized, read-only answers over registry source files.

Layout (pure modules marked *): ``config``* (strict models and cross-references),
``decode``* (bytes to a typed Arrow table), ``planner``* (request values to a bounded
plan), ``cursor``* (HMAC-bound page tokens), ``query``* (plans over tables),
``disclosure``* (aggregates with small-cell suppression), ``apikeys``* (keys and
commitments), ``jws``* (signed answers), ``redact``* (keyed hashes for the audit),
``errors``* (the relay's extra statuses), ``settings`` (reading the config and its
secrets), ``snapshot`` (read-only loads and atomic swaps), ``app`` (HTTP routes) and
``daemon`` (``assay relay serve``).
"""
