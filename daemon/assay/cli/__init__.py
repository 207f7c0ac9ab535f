"""The ``assay`` command line, split by command group."""
