#!/bin/sh
# Build the assay Debian package with dpkg-deb.
#
#   packaging/build-deb.sh [--out DIR]        (default DIR: ./dist)
#
# Output, in DIR:
#   assay_<version>_<arch>.deb       the package
#   assay_<version>_<arch>.cdx.json  CycloneDX SBOM of the installed venv (also in the .deb)
#   SHA256SUMS                       checksums of both
#
# The application venv must be built at its final path, /opt/assay (venvs are not
# relocatable: scripts carry absolute shebangs, pyvenv.cfg names its home). So the venv is
# built *at /opt/assay* inside a private mount namespace whose /opt is an overlay with a
# throwaway upper layer: the host's /opt is never written, and the tree that is packaged
# is exactly what ran pip at /opt/assay. The interpreter is Debian's /usr/bin/python3
# (never a pyenv under /root, which ProtectHome= hides from the service).
#
# Needs: root (or unprivileged user namespaces), dpkg-deb, /usr/bin/python3 with venv,
# and for systemd-python: gcc, python3-dev, libsystemd-dev, pkg-config
# (.ci/systemd-deps.sh installs them). Network: PyPI only.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/dist"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
PY=/usr/bin/python3
# The venv points at the versioned interpreter the package depends on (python3.X).
[ -x "$PY" ] && PY=$(readlink -f "$PY")
PREFIX=/opt/assay
[ -x "$PY" ] || { echo "build-deb.sh: /usr/bin/python3 is missing (apt-get install python3 python3-venv)" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "build-deb.sh: dpkg-deb is missing" >&2; exit 1; }

umask 022
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ARCH=$(dpkg --print-architecture)
VERSION=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")
NAME="assay_${VERSION}_${ARCH}"
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/assay-deb.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
STAGE="$WORK/root"
mkdir -p "$STAGE/DEBIAN" "$STAGE/opt" "$WORK/src" "$WORK/wheels"

echo "==> tools venv (wheel builder, cyclonedx-bom)"
"$PY" -m venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip install --quiet --disable-pip-version-check \
    "setuptools>=68" wheel "cyclonedx-bom>=4"

echo "==> assay wheel from a copy of the source tree"
# A copy, so the build writes no build/ or egg-info into the checkout.
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml README.md daemon \
    | tar -C "$WORK/src" -xf -
"$WORK/tools/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation -w "$WORK/wheels" "$WORK/src"
WHEEL=$(ls "$WORK"/wheels/assay-*.whl)

echo "==> venv at $PREFIX (private mount namespace, overlay /opt)"
if [ "$(id -u)" = 0 ]; then UNSHARE="unshare --mount --propagation private"
else UNSHARE="unshare --mount --propagation private --map-root-user"; fi
mkdir -p "$WORK/ovl/upper" "$WORK/ovl/work"
# shellcheck disable=SC2016 # expanded by the inner shell
$UNSHARE sh -eu -c '
    PY=$1; PREFIX=$2; WHEEL=$3; WORK=$4; STAGE=$5; PYPROJECT=$6
    mount -t overlay overlay -o "lowerdir=/opt,upperdir=$WORK/ovl/upper,workdir=$WORK/ovl/work" /opt
    rm -rf "$PREFIX"
    "$PY" -m venv "$PREFIX"
    "$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check --use-pep517 "$WHEEL[journald]"
    # Nothing at run time needs an installer inside the appliance.
    "$PREFIX/bin/python" -m pip uninstall --quiet --yes pip setuptools
    rm -f "$PREFIX"/bin/activate* "$PREFIX"/bin/Activate.ps1
    "$PREFIX/bin/python" -c "import assay, systemd.journal, pyarrow, cryptography; print(\"    imports ok\")"
    "$WORK/tools/bin/cyclonedx-py" environment --pyproject "$PYPROJECT" --output-reproducible \
        --output-format JSON -o "$WORK/sbom.cdx.json" "$PREFIX/bin/python"
    cp -a "$PREFIX" "$STAGE/opt/"
' build-venv "$PY" "$PREFIX" "$WHEEL" "$WORK" "$STAGE" "$ROOT/pyproject.toml"

echo "==> staging files"
D="$STAGE"
install -d -m 0755 "$D/lib/systemd/system" "$D/etc/assay/policies" "$D/usr/share/assay/policies" \
    "$D/usr/share/doc/assay" "$D/usr/sbin" "$D/usr/bin" "$D/srv/assay/datasets" \
    "$D/usr/lib/sysusers.d" "$D/usr/share/assay/systemd"
for u in assay.socket assay.service assay-consumer.socket assay-relay.socket assay-relay.service; do
    install -m 0644 "$ROOT/units/$u" "$D/lib/systemd/system/$u"
done
# The static group assay-consumer.socket is owned by (postinst runs systemd-sysusers), and
# the drop-in a consumer service copies into its own YOUR.service.d/.
install -m 0644 "$ROOT/packaging/sysusers.d/assay.conf" "$D/usr/lib/sysusers.d/assay.conf"
install -m 0644 "$ROOT/units/consumer.conf" "$D/usr/share/assay/systemd/consumer.conf"
install -m 0644 "$ROOT/packaging/config.yaml" "$D/etc/assay/config.yaml"
for p in "$ROOT"/policies/*.yaml; do
    install -m 0644 "$p" "$D/etc/assay/policies/"
    install -m 0644 "$p" "$D/usr/share/assay/policies/"
done
# The relay's config template and example-data generator; `assay-system relay-init` makes
# /etc/assay/relay.yaml (with fresh API-key commitments) and the dataset from them.
install -d -m 0755 "$D/usr/share/assay/relay-example"
install -m 0644 "$ROOT/packaging/relay.yaml" "$D/usr/share/assay/relay-example/relay.yaml"
install -m 0644 "$ROOT/relay/example/generate_dataset.py" \
    "$D/usr/share/assay/relay-example/generate_dataset.py"
install -m 0755 "$ROOT/packaging/assay-system" "$D/usr/sbin/assay-system"
ln -s assay-system "$D/usr/sbin/assay-init-system"
ln -s "$PREFIX/bin/assay" "$D/usr/bin/assay"
install -m 0644 "$ROOT/packaging/README.md" "$D/usr/share/doc/assay/README.packaging.md"
[ -f "$ROOT/docs/systemd.md" ] && install -m 0644 "$ROOT/docs/systemd.md" "$D/usr/share/doc/assay/systemd.md"
install -m 0644 "$ROOT/README.md" "$D/usr/share/doc/assay/README.md"
install -m 0644 "$WORK/sbom.cdx.json" "$D/usr/share/doc/assay/sbom.cdx.json"
printf 'assay %s\nLicense: Apache-2.0\nThird-party components: see sbom.cdx.json\n' "$VERSION" \
    > "$D/usr/share/doc/assay/copyright"
# Every installed venv file, checkable after install with:
#   cd / && sha256sum -c --quiet /usr/share/doc/assay/SHA256SUMS
(cd "$D" && find "opt/assay" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) \
    | sed 's#  opt/#  /opt/#' > "$D/usr/share/doc/assay/SHA256SUMS"

echo "==> DEBIAN/"
for s in postinst prerm postrm; do
    install -m 0755 "$ROOT/packaging/debian/$s" "$D/DEBIAN/$s"
done
{
    echo /etc/assay/config.yaml
    for p in "$D"/etc/assay/policies/*.yaml; do echo "/etc/assay/policies/$(basename "$p")"; done
} > "$D/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$D" | cut -f1)
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" -e "s/@PYVER@/$PYVER/g" \
    "$ROOT/packaging/debian/control.in" > "$D/DEBIAN/control"
(cd "$D" && find . -path ./DEBIAN -prune -o -type f -print0 | LC_ALL=C sort -z \
    | xargs -0 md5sum | sed 's#  \./#  #') > "$D/DEBIAN/md5sums"
find "$D" -type d -exec chmod 0755 {} +
# A fixed mtime for every file, so the archive depends on the inputs, not on the clock.
find "$D" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

echo "==> dpkg-deb"
dpkg-deb --root-owner-group -Zxz -z6 --build "$D" "$OUT/$NAME.deb" >/dev/null
install -m 0644 "$WORK/sbom.cdx.json" "$OUT/$NAME.cdx.json"
(cd "$OUT" && sha256sum "$NAME.deb" "$NAME.cdx.json" > SHA256SUMS)
echo "built $OUT/$NAME.deb"
cat "$OUT/SHA256SUMS"
