#!/usr/bin/env python3
"""Generate the relay's synthetic example registry: people and households, never real data.

    python relay/example/generate_dataset.py [OUT_DIR] [--people N] [--seed S]

Writes people.csv, people.parquet, households.csv and households.parquet into OUT_DIR
(default relay/example/data/, which git ignores). The generator is
``assay.relay.synthetic`` (so ``assay relay init`` has it wherever assay is installed);
run this with the Python that has assay and pyarrow, e.g. ``.venv/bin/python``.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from assay.relay.synthetic import generate, main, write
except ImportError:  # a checkout that is not installed: use its own package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "daemon"))
    from assay.relay.synthetic import generate, main, write

__all__ = ["generate", "main", "write"]

if __name__ == "__main__":
    main(default_out=Path(__file__).parent / "data")
