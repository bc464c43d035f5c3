#!/usr/bin/env bash
# sid-python.sh: CPython 3.14 and 3.15 (Debian sid's binary packages) on a Debian 12 host,
# inside a sid chroot made with mmdebstrap. Nothing from sid is installed on the host itself.
#
#   sid-python.sh                  provision or repair the chroot (idempotent), print usage
#   sid-python.sh --ensure         provision only if the chroot lacks an interpreter or its
#                                    test package (quiet and instant when it is there)
#   sid-python.sh --check          the same, then a smoke test: venvs, pip (maturin, pytest),
#                                    a tiny PyO3 extension built with maturin and imported on
#                                    3.14 and 3.15, `-m unittest test.test_asyncio.test_locks`
#   sid-python.sh --debian-rust    also install Debian's rustc/cargo in the chroot (done
#                                    anyway when the host has no rustup stable toolchain)
#   sid-python.sh --upgrade        apt-get dist-upgrade inside the chroot first
#   sid-python.sh run CMD [ARG...] run CMD inside the chroot (same as $SID_CHROOT-run)
#
# Environment: SID_CHROOT (default /opt/sid-chroot), SID_MIRROR (default: the Debian
# archive that this host's own apt sources name), SID_RUST=host|debian (which cargo `run` puts first on PATH;
# default host when /root/.rustup has the stable toolchain), SID_BIND="DIR ..." (extra host
# folders bound at the same path inside, e.g. SID_BIND="$PWD").
#
# How `run` works: a private mount+pid namespace (unshare), so the bind mounts (/proc, /sys,
# /dev, /tmp, a read-only /root/.rustup, SID_BIND) exist only while the command runs and the
# host never sees them; `rm -rf /opt/sid-chroot` is always safe. /tmp is the host's /tmp.
# The command starts in the caller's working directory when it exists inside, else /root.
#
# Measured on the 2-core bookworm host (Dec 2026): mmdebstrap 52 s, chroot 0.7 GB
# (1.5 GB with Debian's rustc/cargo 1.97.1), venv 3 s, pip install maturin pytest 2-3 s.
set -euo pipefail

R="${SID_CHROOT:-/opt/sid-chroot}"
host_mirror() {
    # The first Debian archive URI of the host's apt sources (deb822 or one-line format).
    local uri
    uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | grep -v security | head -1)
    [ -n "$uri" ] || uri=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    echo "$uri"
}
MIRROR="${SID_MIRROR:-$(host_mirror)}"
RUNNER="${R}-run"
TOOLCHAIN=/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu
PKGS=(python3.14 python3.14-dev python3.14-venv libpython3.14-testsuite
      python3.15 python3.15-dev python3.15-venv libpython3.15-testsuite
      gcc libc6-dev pkg-config ca-certificates)

die() { echo "py314-recipe: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

write_runner() {
    # A standalone runner next to the chroot, usable without this script.
    local tmp="$RUNNER.tmp.$$"
    cat > "$tmp" <<'RUNNER_EOF'
#!/usr/bin/env bash
# Run a command inside the sid chroot (written by sid-python.sh). Usage: THIS CMD [ARG...]
set -euo pipefail
R="${SID_CHROOT:-@ROOT@}"
TOOLCHAIN=/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu
[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }
[ -x "$R/usr/bin/python3.14" ] || { echo "no chroot at $R (run sid-python.sh)" >&2; exit 1; }
[ $# -gt 0 ] || set -- /bin/bash
rust="${SID_RUST:-}"
if [ -z "$rust" ]; then
    if [ -x "$TOOLCHAIN/bin/cargo" ]; then rust=host; else rust=debian; fi
fi
exec unshare --mount --pid --fork --kill-child -- /bin/bash -c '
set -euo pipefail
R=$1 rust=$2 toolchain=$3 cwd=$4; shift 4
mount --make-rprivate /
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount --bind /tmp "$R/tmp"
path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/root/.cargo/bin
if [ "$rust" = host ] && [ -x "$toolchain/bin/cargo" ]; then
    mkdir -p "$R/root/.rustup"
    mount --bind /root/.rustup "$R/root/.rustup"
    mount -o remount,bind,ro "$R/root/.rustup"
    path="$toolchain/bin:$path"
fi
for d in ${SID_BIND:-}; do
    [ -d "$d" ] || continue
    mkdir -p "$R$d"
    mount --rbind "$d" "$R$d"
done
rc=0
chroot "$R" /usr/bin/env -i HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 \
    TERM="${TERM:-dumb}" PATH="$path" CARGO_HOME=/root/.cargo \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
    /bin/sh -c '\''cd "$1" 2>/dev/null || cd /root; shift; exec "$@"'\'' sh "$cwd" "$@" || rc=$?
exit $rc
' sid-run "$R" "$rust" "$TOOLCHAIN" "$PWD" "$@"
RUNNER_EOF
    sed -i "s|@ROOT@|$R|" "$tmp"
    chmod 755 "$tmp"
    mv -f "$tmp" "$RUNNER"
}

run_in() { SID_CHROOT="$R" "$RUNNER" "$@"; }

provision() {
    [ "$(id -u)" = 0 ] || die "must run as root"
    local want_debian_rust=$1 upgrade=$2
    [ -x "$TOOLCHAIN/bin/cargo" ] || want_debian_rust=1

    # 1. mmdebstrap from the host's own release (never sid: the host pins sid at 50).
    if ! command -v mmdebstrap >/dev/null; then
        local codename
        codename="$(. /etc/os-release && echo "$VERSION_CODENAME")"
        log "installing mmdebstrap from $codename"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -t "$codename" mmdebstrap
    fi

    # 2. The chroot. Built into $R.new and renamed, so an interrupted run leaves no
    #    half-made $R. An existing chroot (one with sid's apt and python3.14) is adopted.
    if [ ! -x "$R/usr/bin/apt-get" ]; then
        if [ -e "$R" ] && [ -n "$(ls -A "$R" 2>/dev/null)" ]; then
            die "$R exists, is not empty and is not a chroot; remove it first"
        fi
        rm -rf "$R.new"
        log "mmdebstrap sid -> $R (about 1 minute)"
        local t0=$SECONDS
        # sid's Release file carries a Valid-Until that this workplace's mirror lets lapse:
        # without the option apt says "Release file for .../sid/InRelease is expired".
        nice -n 19 mmdebstrap --variant=apt \
            --aptopt='Acquire::Check-Valid-Until "false"' \
            --include="$(IFS=,; echo "${PKGS[*]}")" \
            sid "$R.new" "$MIRROR"
        rmdir "$R" 2>/dev/null || true
        mv "$R.new" "$R"
        log "mmdebstrap took $((SECONDS - t0)) s"
    fi
    printf 'Acquire::Check-Valid-Until "false";\n' > "$R/etc/apt/apt.conf.d/99no-valid-until"
    write_runner

    # 3. The host's extra CA certificates (this workplace's TLS egress proxy signs with its
    #    own CA; without it pip fails with CERTIFICATE_VERIFY_FAILED, self-signed certificate
    #    in certificate chain).
    local changed=0 crt
    mkdir -p "$R/usr/local/share/ca-certificates"
    for crt in /usr/local/share/ca-certificates/*.crt; do
        [ -f "$crt" ] || continue
        if ! cmp -s "$crt" "$R/usr/local/share/ca-certificates/${crt##*/}"; then
            cp "$crt" "$R/usr/local/share/ca-certificates/"
            changed=1
        fi
    done

    # 4. Packages (also repairs a chroot made with fewer of them).
    local pkgs=("${PKGS[@]}") missing=()
    [ "$want_debian_rust" = 1 ] && pkgs+=(rustc cargo)
    local p installed
    installed="$(run_in dpkg-query -W -f='${Package} ${Status}\n' "${pkgs[@]}" 2>/dev/null || true)"
    for p in "${pkgs[@]}"; do
        grep -qx "$p install ok installed" <<<"$installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ] || [ "$upgrade" = 1 ]; then
        log "apt-get inside the chroot: ${missing[*]:-(upgrade)}"
        run_in apt-get update -qq
        [ "$upgrade" = 1 ] && run_in env DEBIAN_FRONTEND=noninteractive nice -n 19 \
            apt-get -y -q dist-upgrade
        [ ${#missing[@]} -gt 0 ] && run_in env DEBIAN_FRONTEND=noninteractive nice -n 19 \
            apt-get install -y -q --no-install-recommends "${missing[@]}"
        changed=1
    fi
    [ "$changed" = 1 ] && run_in update-ca-certificates >/dev/null
    return 0
}

smoke_test() {
    local d=/tmp/sid-py314-check
    rm -rf "$d"; mkdir -p "$d/hello/src"
    cat > "$d/hello/Cargo.toml" <<'EOF'
[package]
name = "hello_pyo3"
version = "0.1.0"
edition = "2021"

[lib]
name = "hello_pyo3"
crate-type = ["cdylib"]

[dependencies]
pyo3 = { version = "0.30", features = ["extension-module"] }
EOF
    cat > "$d/hello/src/lib.rs" <<'EOF'
use pyo3::prelude::*;

#[pyfunction]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[pymodule]
fn hello_pyo3(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(add, m)?)?;
    Ok(())
}
EOF
    printf '[build-system]\nrequires = ["maturin>=1.7,<2"]\nbuild-backend = "maturin"\n\n[project]\nname = "hello_pyo3"\nversion = "0.1.0"\n' \
        > "$d/hello/pyproject.toml"
    run_in /bin/bash -euo pipefail -c '
        d=$1
        rustc -V; cargo -V
        for v in 3.14 3.15; do
            t=$SECONDS
            python$v -c "import sys; print(sys.version)"
            python$v -m venv "$d/v$v"
            "$d/v$v/bin/pip" install -q maturin pytest
            (cd "$d/hello" && "$d/v$v/bin/maturin" build -q --release -i "$d/v$v/bin/python" -o "$d/wheels-$v")
            "$d/v$v/bin/pip" install -q "$d"/wheels-$v/*.whl
            (cd / && "$d/v$v/bin/python" -c "import sys, hello_pyo3; assert hello_pyo3.add(40, 2) == 42; print(sys.version.split()[0], \"pyo3 extension OK\")")
            "$d/v$v/bin/python" -m pytest --version
            python$v -m unittest -q test.test_asyncio.test_locks 2>&1 | tail -n 1
            echo "CPython $v checked in $((SECONDS - t)) s"
        done' check "$d"
}

main() {
    local debian_rust=0 upgrade=0 check=0
    if [ "${1:-}" = --ensure ]; then
        local v ok=1
        for v in 3.14 3.15; do
            [ -x "$R/usr/bin/python$v" ] && [ -f "$R/usr/lib/python$v/test/test_asyncio/__init__.py" ] \
                && [ -f "$R/usr/include/python$v/Python.h" ] || ok=0
        done
        [ -x "$RUNNER" ] || write_runner
        [ "$ok" = 1 ] && exit 0
        provision 0 0 >&2
        exit 0
    fi
    if [ "${1:-}" = run ]; then
        shift
        [ -x "$RUNNER" ] || write_runner
        exec env SID_CHROOT="$R" "$RUNNER" "$@"
    fi
    for a in "$@"; do
        case "$a" in
            --check) check=1 ;;
            --debian-rust) debian_rust=1 ;;
            --upgrade) upgrade=1 ;;
            -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
            *) die "unknown argument: $a (see --help)" ;;
        esac
    done
    provision "$debian_rust" "$upgrade"
    run_in dpkg-query -W -f '${Package} ${Version}\n' python3.14 python3.15 libc6 gcc \
        rustc cargo 2>/dev/null || true
    echo "chroot size: $(du -sh --one-file-system "$R" | cut -f1)"
    [ "$check" = 1 ] && smoke_test
    cat <<EOF

The sid chroot is ready at $R. Run a command in it with:
    $RUNNER CMD [ARG...]          (or: $0 run CMD [ARG...]; no CMD: a shell)
e.g.
    $RUNNER python3.14 -m venv /tmp/v314 && $RUNNER /tmp/v314/bin/pip install maturin pytest
    $RUNNER python3.15 -m test test_asyncio -j2
    SID_BIND="$PWD" $RUNNER sh -c "cd $PWD && /tmp/v314/bin/maturin develop --release"
Rust: SID_RUST=host (default with a rustup stable toolchain: read-only /root/.rustup) or
SID_RUST=debian (Debian's rustc/cargo; provision with --debian-rust). CARGO_HOME is the
chroot's own /root/.cargo. /tmp is shared with the host; venvs made in the chroot run only
there (the sid interpreter needs glibc >= 2.38).
EOF
}

main "$@"
