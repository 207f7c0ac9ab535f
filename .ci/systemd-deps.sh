#!/bin/sh
# Debian packages for the systemd test group (tests/systemd) and for building the .deb
# (packaging/build-deb.sh compiles systemd-python into /opt/assay; dpkg-dev gives it
# dpkg-shlibdeps and dpkg-parsechangelog), and the PostgreSQL server the relay's Postgres
# source tests start (tests/relay/pg: they fail, not skip, without it). Idempotent: installs
# only what is missing, and does nothing when all is there. Needs root; reaches only the
# Debian package registry.
set -eu
PKGS="systemd dbus util-linux iproute2 dpkg dpkg-dev python3 python3-venv python3-dev gcc pkg-config libsystemd-dev postgresql"
missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing="$missing $p"
    fi
done
if [ -z "$missing" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "systemd-deps: not root; cannot install:$missing (the systemd tests will skip, the postgres tests fail)" >&2
    exit 0
fi
echo "systemd-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # word splitting of the package list is intended
apt-get install -y -qq --no-install-recommends $missing >/dev/null
