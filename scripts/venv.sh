#!/usr/bin/env bash
# Usage: scripts/venv.sh 3.11 [requirements-file...]
# Creates .venvs/<version> from pyenv's (or PATH's) CPython, installs the given
# requirements and builds ferroloop into it (release build). Prints nothing else
# on success but the maturin summary.
set -euo pipefail
ver="$1"; shift
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venvs/$ver"
find_python() {
    local cand
    for cand in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$ver".*/bin/python"$ver"; do
        [ -x "$cand" ] && { echo "$cand"; return; }
    done
    command -v "python$ver" || { echo "no CPython $ver found (pyenv or PATH)" >&2; exit 1; }
}
if [ ! -x "$venv/bin/python" ]; then
    "$(find_python)" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
fi
"$venv/bin/python" -m pip install -q -r "$root/requirements/build.txt" "${@/#/-r}"
cd "$root"
VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" "$venv/bin/maturin" develop --release -q 2>&1 | grep -v '^$' | tail -n 3
