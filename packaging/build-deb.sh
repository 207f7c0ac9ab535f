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
# Environment: SOURCE_DATE_EPOCH (default: the last commit's time) fixes every mtime and
# the man page's date; DEB_COMPRESS (default "xz -1", see packaging/README.md) is passed to
# dpkg-deb as -Z/-z, e.g. DEB_COMPRESS="zstd -19" or "gzip -9".
#
# Needs: root (or unprivileged user namespaces), dpkg-deb, dpkg-shlibdeps (dpkg-dev),
# /usr/bin/python3 with venv, and for systemd-python: gcc, python3-dev, libsystemd-dev,
# pkg-config (.ci/systemd-deps.sh installs them). Network: PyPI only.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/dist"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
PY=/usr/bin/python3
# The venv points at the versioned interpreter the package depends on (python3.X).
[ -x "$PY" ] && PY=$(readlink -f "$PY")
PREFIX=/opt/assay
[ -x "$PY" ] || { echo "build-deb.sh: /usr/bin/python3 is missing (apt-get install python3 python3-venv)" >&2; exit 1; }
for tool in dpkg-deb dpkg-shlibdeps dpkg-parsechangelog; do
    command -v "$tool" >/dev/null || { echo "build-deb.sh: $tool is missing (dpkg-dev)" >&2; exit 1; }
done
set -- ${DEB_COMPRESS:-xz -1}
COMPRESS_TYPE=$1
COMPRESS_LEVEL=${2:-}
COMPRESS_LEVEL=${COMPRESS_LEVEL#-}

umask 022
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ARCH=$(dpkg --print-architecture)
# Version, maintainer and homepage: pyproject.toml is the one place they are written.
meta() {
    "$PY" - "$ROOT/pyproject.toml" "$1" <<'EOF'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
m = p["maintainers"][0]
fields = {"version": p["version"], "homepage": p["urls"]["Homepage"],
          "maintainer": m["name"] + " <" + m["email"] + ">"}
print(fields[sys.argv[2]])
EOF
}
VERSION=$(meta version)
MAINTAINER=$(meta maintainer)
HOMEPAGE=$(meta homepage)
CHANGELOG_VERSION=$(dpkg-parsechangelog -l "$ROOT/packaging/debian/changelog" -S Version)
[ "$CHANGELOG_VERSION" = "$VERSION" ] || {
    echo "build-deb.sh: packaging/debian/changelog is at $CHANGELOG_VERSION, pyproject.toml at $VERSION" >&2
    exit 1
}
[ "$(dpkg-parsechangelog -l "$ROOT/packaging/debian/changelog" -S Maintainer)" = "$MAINTAINER" ] || {
    echo "build-deb.sh: packaging/debian/changelog's maintainer is not pyproject.toml's ($MAINTAINER)" >&2
    exit 1
}
NAME="assay_${VERSION}_${ARCH}"
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/assay-deb.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
STAGE="$WORK/root"
mkdir -p "$STAGE/DEBIAN" "$STAGE/opt" "$WORK/src" "$WORK/wheels" "$WORK/wheelhouse" \
    "$WORK/docs/man" "$WORK/docs/completion"

step() { echo "==> $*  [$(date +%T)]"; }

step "tools venv (wheel builder, cyclonedx-bom)"
"$PY" -m venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip install --quiet --disable-pip-version-check \
    "setuptools>=77" wheel "cyclonedx-bom>=4"

step "assay wheel from a copy of the source tree"
# A copy, so the build writes no build/ or egg-info into the checkout.
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml README.md LICENSE daemon \
    | tar -C "$WORK/src" -xf -
"$WORK/tools/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation -w "$WORK/wheels" "$WORK/src"
WHEEL=$(ls "$WORK"/wheels/assay-*.whl)

step "venv at $PREFIX (private mount namespace, overlay /opt)"
if [ "$(id -u)" = 0 ]; then UNSHARE="unshare --mount --propagation private"
else UNSHARE="unshare --mount --propagation private --map-root-user"; fi
mkdir -p "$WORK/ovl/upper" "$WORK/ovl/work"
# shellcheck disable=SC2016 # expanded by the inner shell
$UNSHARE sh -eu -c '
    PY=$1; PREFIX=$2; WHEEL=$3; WORK=$4; STAGE=$5; ROOT=$6
    mount -t overlay overlay -o "lowerdir=/opt,upperdir=$WORK/ovl/upper,workdir=$WORK/ovl/work" /opt
    rm -rf "$PREFIX"
    "$PY" -m venv "$PREFIX"
    # 1. Every distribution as a wheel file first (systemd-python is built from its sdist
    #    here), so the SBOM can name the exact file each component was installed from;
    # 2. then install from that wheelhouse only.
    "$PREFIX/bin/python" -m pip wheel --quiet --disable-pip-version-check --use-pep517 \
        -w "$WORK/wheelhouse" "$WHEEL[journald]"
    "$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
        --find-links "$WORK/wheelhouse" "$WHEEL[journald]"
    # Nothing at run time needs an installer inside the appliance.
    "$PREFIX/bin/python" -m pip uninstall --quiet --yes pip setuptools
    rm -f "$PREFIX"/bin/activate* "$PREFIX"/bin/Activate.ps1
    # Test suites, headers and the console scripts of dependencies: packaging/venv_finish.py.
    "$PREFIX/bin/python" -I "$ROOT/packaging/venv_finish.py" prune "$PREFIX" "$WORK/pruned.json"
    # Shared objects are not executables (Debian policy 8.1; what dh_fixperms does).
    find "$PREFIX" -type f \( -name "*.so" -o -name "*.so.*" \) -exec chmod 0644 {} +
    "$PREFIX/bin/python" -c "import assay, systemd.journal, pyarrow.parquet, cryptography; print(\"    imports ok\")"
    # Man pages (assay.1 and one per command) and bash/zsh completion from the CLI parser,
    # by assay.cli.docs itself (standard library only: no build-time tools); assay-system.8
    # from its parser by the same code. No bytecode of the run lands in the venv.
    PYTHONDONTWRITEBYTECODE=1 "$PREFIX/bin/python" -m assay.cli.docs \
        --man "$WORK/docs/man" --completion "$WORK/docs/completion" >/dev/null
    PYTHONDONTWRITEBYTECODE=1 "$PREFIX/bin/python" \
        "$ROOT/packaging/system_manpage.py" "$ROOT/packaging/assay-system" "$WORK/docs/man"
    "$WORK/tools/bin/cyclonedx-py" environment --pyproject "$ROOT/pyproject.toml" --output-reproducible \
        --output-format JSON -o "$WORK/sbom.cdx.json" "$PREFIX/bin/python"
    "$PREFIX/bin/python" -I "$ROOT/packaging/venv_finish.py" sbom "$PREFIX" "$WORK/wheelhouse" \
        "$WORK/pruned.json" "$WORK/sbom.cdx.json"
    "$PREFIX/bin/python" -I "$ROOT/packaging/venv_finish.py" copyright "$PREFIX" \
        "$ROOT/packaging/debian/copyright.in" "$WORK/copyright"
    cp -a "$PREFIX" "$STAGE/opt/"
' build-venv "$PY" "$PREFIX" "$WHEEL" "$WORK" "$STAGE" "$ROOT"

step "staging files"
D="$STAGE"
DOC="$D/usr/share/doc/assay"
install -d -m 0755 "$D/lib/systemd/system" "$D/etc/assay/policies" "$D/usr/share/assay/policies" \
    "$DOC" "$D/usr/sbin" "$D/usr/bin" \
    "$D/usr/share/man/man1" "$D/usr/share/man/man8" \
    "$D/usr/share/bash-completion/completions" "$D/usr/share/zsh/vendor-completions" \
    "$D/usr/share/lintian/overrides" "$D/usr/lib/sysusers.d" "$D/usr/share/assay/systemd"

# -- units: every file under units/ is a unit, but the consumer drop-in ---------------------
# (postinst/prerm/postrm name the ones they enable, start and stop.)
for u in "$ROOT"/units/*; do
    case "$(basename "$u")" in
        *.service|*.socket|*.timer|*.path|*.target)
            install -m 0644 "$u" "$D/lib/systemd/system/$(basename "$u")" ;;
        consumer.conf) ;;  # not a unit: installed in its own step, below
        *) echo "build-deb.sh: units/$(basename "$u") is not a unit; install it in its own step" >&2
           exit 1 ;;
    esac
done
# The static group assay-consumer.socket is owned by (postinst runs systemd-sysusers before
# any unit starts), and the drop-in a consumer service copies into its own YOUR.service.d/.
install -m 0644 "$ROOT/packaging/sysusers.d/assay.conf" "$D/usr/lib/sysusers.d/assay.conf"
install -m 0644 "$ROOT/units/consumer.conf" "$D/usr/share/assay/systemd/consumer.conf"

# -- configuration (conffiles) and pristine copies -----------------------------------------
install -m 0644 "$ROOT/packaging/config.yaml" "$D/etc/assay/config.yaml"
for p in "$ROOT"/policies/*.yaml; do
    install -m 0644 "$p" "$D/etc/assay/policies/"
    install -m 0644 "$p" "$D/usr/share/assay/policies/"
done

# -- the relay's example: config template and data generator --------------------------------
# `assay-system relay-init` makes /etc/assay/relay.yaml (with fresh API-key commitments) and
# the dataset under /srv/assay/datasets from them; the package itself ships nothing in /srv.
install -d -m 0755 "$D/usr/share/assay/relay-example"
install -m 0644 "$ROOT/packaging/relay.yaml" "$D/usr/share/assay/relay-example/relay.yaml"
# Run as `python3 FILE` by assay-system: no shebang in a non-executable file.
sed '1{/^#!/d}' "$ROOT/relay/example/generate_dataset.py" \
    > "$D/usr/share/assay/relay-example/generate_dataset.py"
chmod 0644 "$D/usr/share/assay/relay-example/generate_dataset.py"

# -- commands ------------------------------------------------------------------------------
# assay-system is Python run by the venv's interpreter; /usr/sbin has the sh entry point.
install -m 0644 "$ROOT/packaging/assay-system" "$D/usr/share/assay/assay-system.py"
install -m 0755 "$ROOT/packaging/assay-system.sh" "$D/usr/sbin/assay-system"
ln -s assay-system "$D/usr/sbin/assay-init-system"
ln -s "$PREFIX/bin/assay" "$D/usr/bin/assay"

# -- man pages and completion --------------------------------------------------------------
for page in "$WORK"/docs/man/*.1; do gzip -9n < "$page" > "$D/usr/share/man/man1/$(basename "$page").gz"; done
for page in "$WORK"/docs/man/*.8; do gzip -9n < "$page" > "$D/usr/share/man/man8/$(basename "$page").gz"; done
ln -s assay-system.8.gz "$D/usr/share/man/man8/assay-init-system.8.gz"
install -m 0644 "$WORK/docs/completion/assay" "$D/usr/share/bash-completion/completions/assay"
install -m 0644 "$WORK/docs/completion/_assay" "$D/usr/share/zsh/vendor-completions/_assay"

# -- documentation, copyright, changelog, lintian overrides --------------------------------
install -m 0644 "$ROOT/packaging/README.md" "$DOC/README.packaging.md"
[ -f "$ROOT/docs/systemd.md" ] && install -m 0644 "$ROOT/docs/systemd.md" "$DOC/systemd.md"
install -m 0644 "$ROOT/README.md" "$DOC/README.md"
install -m 0644 "$WORK/sbom.cdx.json" "$DOC/sbom.cdx.json"
sed -e "s|@MAINTAINER@|$MAINTAINER|" -e "s|@HOMEPAGE@|$HOMEPAGE|" "$WORK/copyright" > "$DOC/copyright"
gzip -9n < "$ROOT/packaging/debian/changelog" > "$DOC/changelog.gz"
install -m 0644 "$ROOT/packaging/debian/lintian-overrides" "$D/usr/share/lintian/overrides/assay"
# Every installed venv file, checkable after install with:
#   cd / && sha256sum -c --quiet /usr/share/doc/assay/SHA256SUMS
(cd "$D" && find "opt/assay" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) \
    | sed 's#  opt/#  /opt/#' > "$DOC/SHA256SUMS"
chmod 0644 "$DOC"/*

step "DEBIAN/"
for s in postinst prerm postrm; do
    install -m 0755 "$ROOT/packaging/debian/$s" "$D/DEBIAN/$s"
done
{
    echo /etc/assay/config.yaml
    for p in "$D"/etc/assay/policies/*.yaml; do echo "/etc/assay/policies/$(basename "$p")"; done
} > "$D/DEBIAN/conffiles"
# Shared-library dependencies (libc6, libstdc++6, libsystemd0, ...) with the minimum
# versions the venv's ELF objects need, as dh_shlibdeps computes them. The libraries the
# wheels bundle are found in the stage through their $ORIGIN RPATHs.
mkdir -p "$WORK/shlibs/debian"
printf 'Source: assay\n\nPackage: assay\nArchitecture: any\n' > "$WORK/shlibs/debian/control"
find "$D/opt" -type f \( -name "*.so" -o -name "*.so.*" \) | LC_ALL=C sort | sed 's/^/-e/' > "$WORK/shlibs/objects"
# shellcheck disable=SC2046 # one -e argument per object
SHLIBS=$(cd "$WORK/shlibs" && dpkg-shlibdeps -O --ignore-missing-info $(cat objects) 2>"$WORK/shlibs/log") || {
    cat "$WORK/shlibs/log" >&2; exit 1; }
SHLIBS=${SHLIBS#shlibs:Depends=}
case "$SHLIBS" in *libc6*) ;; *) echo "build-deb.sh: dpkg-shlibdeps found no libc6: $SHLIBS" >&2; exit 1 ;; esac
SIZE=$(du -sk --exclude=DEBIAN "$D" | cut -f1)
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" -e "s/@PYVER@/$PYVER/g" \
    -e "s|@MAINTAINER@|$MAINTAINER|" -e "s|@HOMEPAGE@|$HOMEPAGE|" -e "s|@SHLIBS@|$SHLIBS|" \
    "$ROOT/packaging/debian/control.in" > "$D/DEBIAN/control"
(cd "$D" && find . -path ./DEBIAN -prune -o -type f -print0 | LC_ALL=C sort -z \
    | xargs -0 md5sum | sed 's#  \./#  #') > "$D/DEBIAN/md5sums"
find "$D" -type d -exec chmod 0755 {} +
# A fixed mtime for every file, so the archive depends on the inputs, not on the clock.
find "$D" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

step "dpkg-deb -Z$COMPRESS_TYPE ${COMPRESS_LEVEL:+-z$COMPRESS_LEVEL}"
dpkg-deb --root-owner-group -Z"$COMPRESS_TYPE" ${COMPRESS_LEVEL:+-z"$COMPRESS_LEVEL"} \
    --build "$D" "$OUT/$NAME.deb" >/dev/null
install -m 0644 "$WORK/sbom.cdx.json" "$OUT/$NAME.cdx.json"
(cd "$OUT" && sha256sum "$NAME.deb" "$NAME.cdx.json" > SHA256SUMS)
step "built $OUT/$NAME.deb"
cat "$OUT/SHA256SUMS"
