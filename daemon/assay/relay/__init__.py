"""The relay: scoped, minimized, read-only answers over registry source files.

Layout (pure modules marked *): ``config``* (strict models and cross-references),
``decode``* (bytes to a typed Arrow table), ``planner``* (request values to a bounded
plan), ``cursor``* (HMAC-bound page tokens), ``query``* (plans over tables),
``disclosure``* (aggregates with small-cell suppression), ``apikeys``* (keys and
commitments), ``jws``* (signed answers), ``errors``* (the relay's extra statuses),
``settings`` (reading the config and its secrets), ``snapshot`` (read-only loads and
atomic swaps), ``service`` (operations over one snapshot), ``app`` (HTTP routes) and
``daemon`` (``assay relay serve``).
"""
