"""Write assay-system.8 from assay-system's own argparse parser (build time, run by
packaging/build-deb.sh with the package's venv interpreter).

    system_manpage.py PATH/TO/assay-system OUT_DIR

The page is made by ``assay.cli.docs.program_page``, the same code that writes the
``assay`` pages, so there is one man page generator and it needs nothing beyond the
standard library. Section 8: it lives in /usr/sbin and is run by root.
assay-init-system.8 is a link to it, made by the build, because assay-init-system is
``assay-system init``.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

from assay.cli.docs import build_date, program_page

SUMMARY = "set up and administer the packaged assay services (as root)"
FILES = (
    "/etc/assay/credentials/ (root, 0700), /etc/assay/config.yaml, /etc/assay/relay.yaml,\n"
    "/var/lib/assay/, /srv/assay/datasets/ (made by relay\\-init),\n"
    "/usr/lib/sysusers.d/assay.conf (the assay\\-consumers group),\n"
    "/usr/share/assay/systemd/consumer.conf (the drop\\-in a consumer service copies)"
)
ALIASES = '.B assay\\-init\\-system\nis\n.BR "assay\\-system init" .'
SEE_ALSO = (
    ".BR assay (1),\n.BR systemctl (1),\n.BR systemd.exec (5)\n"
    ".PP\n/usr/share/doc/assay/README.packaging.md and /usr/share/doc/assay/systemd.md"
)


def load_parser(script: Path) -> argparse.ArgumentParser:
    """assay-system's ``build_parser()``: the file has no .py suffix, so it is loaded by
    an explicit source loader, never executed as a program."""
    loader = importlib.machinery.SourceFileLoader("assay_system", str(script))
    spec = importlib.util.spec_from_loader("assay_system", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    parser: argparse.ArgumentParser = module.build_parser()
    return parser


def render(script: Path) -> str:
    parser = load_parser(script)
    return program_page(
        parser,
        section=8,
        summary=SUMMARY,
        date=build_date(),
        tail=(("FILES", FILES), ("ALIASES", ALIASES), ("SEE ALSO", SEE_ALSO)),
    )


def main(argv: list[str]) -> int:
    script, out_dir = Path(argv[0]), Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "assay-system.8").write_text(render(script))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
