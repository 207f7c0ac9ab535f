"""Write assay-system.8 from assay-system's own argparse parser (build time, run by
packaging/build-deb.sh with argparse-manpage on the path).

    system_manpage.py PATH/TO/assay-system OUT_DIR

Section 8: it lives in /usr/sbin and is run by root. assay-init-system.8 is a link to it,
made by the build, because assay-init-system is ``assay-system init``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

from argparse_manpage.manpage import Manpage

SEE_ALSO = (
    ".BR assay (1),\n.BR systemctl (1),\n.BR systemd.exec (5)\n"
    ".PP\n/usr/share/doc/assay/README.packaging.md and /usr/share/doc/assay/systemd.md"
)


def main(argv: list[str]) -> int:
    script, out_dir = Path(argv[0]), Path(argv[1])
    loader = importlib.machinery.SourceFileLoader("assay_system", str(script))
    spec = importlib.util.spec_from_loader("assay_system", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    parser = module.build_parser()
    page = Manpage(parser)
    page.description = "set up and administer the packaged assay services (as root)"
    page.source = "assay"
    page.manual = "assay manual"
    page.section = 8
    text = str(page).rstrip("\n")
    text += "\n.SH FILES\n"
    text += "/etc/assay/credentials/ (root, 0700), /etc/assay/config.yaml, /etc/assay/relay.yaml,\n"
    text += "/var/lib/assay/, /srv/assay/datasets/ (made by relay\\-init)\n"
    text += ".SH ALIASES\n.B assay-init-system\nis\n.BR \"assay-system init\" .\n"
    text += ".SH SEE ALSO\n" + SEE_ALSO + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "assay-system.8").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
