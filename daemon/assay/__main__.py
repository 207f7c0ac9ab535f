"""``python -m assay`` is the ``assay`` command."""

import sys

from assay.cli.main import main

sys.exit(main())
