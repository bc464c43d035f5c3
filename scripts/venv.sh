#!/usr/bin/env bash
# Usage: scripts/venv.sh 3.11 [requirements-file...]
# Creates .venvs/<version> from pyenv's (or PATH's) CPython, installs the given
# requirements and builds ferroloop into it (release build). CPython 3.14 and 3.15, which
# pyenv does not have here, come from Debian sid's packages in a chroot
# (scripts/sid-python.sh, provisioned on first use); their venvs run only inside it, so
# run them with scripts/py.sh. Prints nothing else on success but the maturin summary.
set -euo pipefail
ver="$1"; shift
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venvs/$ver"
find_python() {
    local cand
    for cand in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$ver".*/bin/python"$ver"; do
        [ -x "$cand" ] && { echo "$cand"; return; }
    done
    command -v "python$ver" || true
}
host_python="$(find_python)"
if [ -n "$host_python" ]; then
    in_env() { "$@"; }
else
    case "$ver" in
        3.14|3.15) ;;
        *) echo "no CPython $ver found (pyenv or PATH)" >&2; exit 1 ;;
    esac
    "$root/scripts/sid-python.sh" --ensure
    in_env() { "$root/scripts/py.sh" --sid "$@"; }
    host_python="python$ver"
fi
if [ ! -x "$venv/bin/python" ]; then
    in_env "$host_python" -m venv "$venv"
    [ "$host_python" = "python$ver" ] && touch "$venv/sid"  # scripts/py.sh runs it in the chroot
    in_env "$venv/bin/python" -m pip install -q --upgrade pip
fi
in_env "$venv/bin/python" -m pip install -q -r "$root/requirements/build.txt" "${@/#/-r}"
cd "$root"
# One target directory per interpreter: switching interpreters does not rebuild pyo3.
# FERROLOOP_TARGET_DIR puts them outside the checkout (.ci/run: a cache that outlives
# CI's clean clones, so a build there is incremental); it is bound into the chroot.
tdir="${FERROLOOP_TARGET_DIR:-$root/target}"
mkdir -p "$tdir"
export SID_BIND="$tdir ${SID_BIND:-}"
# PATH is extended where the build runs (the chroot has its own).
in_env sh -c 'PATH="$1/bin:$PATH" VIRTUAL_ENV="$1" CARGO_TARGET_DIR="$2" exec "$1/bin/maturin" develop --release -q' \
    sh "$venv" "$tdir/py$ver" 2>&1 | grep -v '^$' | tail -n 3
