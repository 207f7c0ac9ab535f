"""Manual pages and shell completion, generated from the CLI's own parser.

One parser decides: what ``assay --help`` accepts is what the man page documents and what
completion offers, because all three come from :func:`assay.cli.main.build_parser`.

    python -m assay.cli.docs --man DIR --completion DIR

The interface the Debian build (packaging/build-deb.sh) relies on:

* :func:`manpages` writes roff pages named ``<name>.<section>`` (``assay.1``) into
  ``out_dir`` and returns their paths;
* :func:`completions` writes ``assay`` (bash, for /usr/share/bash-completion/completions)
  and ``_assay`` (zsh, for a directory on ``$fpath``) and returns their paths.

argparse-manpage and shtab are build-time tools (the ``docs`` extra): they are imported
here, when documentation is made, never by the daemon or the CLI at run time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from assay import __version__
from assay.cli.main import build_parser

PROG = "assay"
SUMMARY = "local trust registry for AI model artifacts, and its scoped read relay"
#: Completion script file name per shell, as each shell's loader looks it up.
COMPLETION_FILES = {"bash": PROG, "zsh": f"_{PROG}"}


def manpages(out_dir: Path) -> list[Path]:
    """Write ``assay.1`` from the parser; return the pages written."""
    from argparse_manpage.manpage import Manpage

    parser = build_parser()
    page = Manpage(parser)
    # argparse-manpage's documented way to set the header: override the attributes.
    page.description = SUMMARY
    page.source = f"{PROG} {__version__}"
    page.manual = "assay manual"
    page.section = 1
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{PROG}.1"
    path.write_text(str(page))
    return [path]


def completions(out_dir: Path) -> list[Path]:
    """Write bash and zsh completion for ``assay``; return the files written."""
    import shtab

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for shell, name in COMPLETION_FILES.items():
        path = out_dir / name
        path.write_text(shtab.complete(build_parser(), shell=shell))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m assay.cli.docs", description=__doc__)
    parser.add_argument("--man", type=Path, metavar="DIR", help="write manual pages here")
    parser.add_argument(
        "--completion", type=Path, metavar="DIR", help="write shell completion here"
    )
    args = parser.parse_args(argv)
    if args.man is None and args.completion is None:
        parser.error("nothing to do: give --man DIR, --completion DIR or both")
    written: list[Path] = []
    if args.man is not None:
        written += manpages(args.man)
    if args.completion is not None:
        written += completions(args.completion)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
