"""Write the tiny sample models that tests, docs and demos use: sample.safetensors, sample.gguf.

Why a script: the samples are committed so anyone can try assay without a model download,
and regenerating them must give the same bytes, so reviewers can check that the committed
files are exactly what this code writes (``--check``). Standard library only; deterministic.

    python artifacts/generate.py           # (re)write both samples next to this script
    python artifacts/generate.py --check   # exit 1 if the committed samples differ
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
GGUF_ALIGNMENT = 32


def safetensors_sample() -> bytes:
    """F32 [2, 3] and I64 [4] tensors with string metadata, laid out like the reference."""
    weight = struct.pack("<6f", 0.0, 0.5, 1.0, 1.5, 2.0, 2.5)
    ids = struct.pack("<4q", 1, 2, 3, 4)
    # The reference writer orders by descending dtype size, then name: I64 before F32.
    header = {
        "__metadata__": {"format": "pt", "producer": "assay artifacts/generate.py"},
        "ids": {"dtype": "I64", "shape": [4], "data_offsets": [0, len(ids)]},
        "weight": {
            "dtype": "F32",
            "shape": [2, 3],
            "data_offsets": [len(ids), len(ids) + len(weight)],
        },
    }
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # pad to 8 bytes with spaces, as the reference does
    return struct.pack("<Q", len(text)) + text + ids + weight


def _gguf_string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def gguf_sample() -> bytes:
    """GGUF v3: four key/values (incl. general.alignment) and two F32 tensors, aligned."""
    kvs = [
        ("general.architecture", 8, _gguf_string("sample")),
        ("general.name", 8, _gguf_string("assay sample")),
        ("general.alignment", 4, struct.pack("<I", GGUF_ALIGNMENT)),
        ("general.file_type", 4, struct.pack("<I", 0)),
    ]
    # name, dims (ggml order: fastest first), values
    tensors = [
        ("token_embd.weight", [4, 2], [float(i) for i in range(8)]),
        ("output_norm.weight", [4], [1.0, 1.0, 1.0, 1.0]),
    ]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)))
    for key, vtype, value in kvs:
        out += _gguf_string(key) + struct.pack("<I", vtype) + value
    data = bytearray()
    for name, dims, values in tensors:
        data += b"\0" * (-len(data) % GGUF_ALIGNMENT)
        out += _gguf_string(name) + struct.pack("<I", len(dims))
        out += struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", 0, len(data))
        data += struct.pack(f"<{len(values)}f", *values)
    out += b"\0" * (-len(out) % GGUF_ALIGNMENT)
    data += b"\0" * (-len(data) % GGUF_ALIGNMENT)
    return bytes(out + data)


SAMPLES = {"sample.safetensors": safetensors_sample, "sample.gguf": gguf_sample}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--dir", default=HERE, help="where the samples live")
    args = parser.parse_args(argv)
    stale = []
    for name, build in SAMPLES.items():
        path = os.path.join(args.dir, name)
        data = build()
        if args.check:
            try:
                with open(path, "rb") as f:
                    current = f.read()
            except FileNotFoundError:
                current = None
            if current != data:
                stale.append(name)
        else:
            with open(path, "wb") as f:
                f.write(data)
    if stale:
        print(f"stale samples (run artifacts/generate.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
