#!/bin/sh
# /usr/sbin/assay-system (and assay-init-system, a link to it): root-side administration of
# the packaged assay deployment. The program is /usr/share/assay/assay-system.py; it runs on
# the application venv's interpreter, the one the daemon runs on, because it imports assay.
# -I: no PYTHON* variables, no user site-packages, no script directory on sys.path.
set -e
case "$(basename "$0")" in
    assay-init-system) set -- init "$@" ;;
esac
exec /opt/assay/bin/python3 -I /usr/share/assay/assay-system.py "$@"
