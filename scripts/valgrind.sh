#!/usr/bin/env bash
# Usage: scripts/valgrind.sh [python-version]   (make valgrind)
# Runs tests/valgrind_workload.py under valgrind's memcheck over a debug build of the
# extension, with PYTHONMALLOC=malloc (so CPython's own allocator does not hide or fake
# errors), and fails on any invalid read, write or free whose stack is in ferroloop's code.
set -euo pipefail
ver="${1:-3.11}"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venvs/$ver"
if ! command -v valgrind >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
    else
        echo "valgrind is not installed" >&2; exit 1
    fi
fi
cd "$root"
tdir="${FERROLOOP_TARGET_DIR:-$root/target}/valgrind"
PYO3_PYTHON="$venv/bin/python" cargo build -q --lib --target-dir "$tdir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/ferroloop"
cp python/ferroloop/*.py python/ferroloop/py.typed "$work/ferroloop/"
suffix="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
cp "$tdir/debug/lib_core.so" "$work/ferroloop/_core$suffix"
echo "== valgrind over a debug build: tests/valgrind_workload.py (a few minutes)"
PYTHONMALLOC=malloc PYTHONPATH="$work" valgrind --tool=memcheck --num-callers=40 \
    --xml=yes --xml-file="$work/memcheck.xml" --error-limit=no \
    "$venv/bin/python" tests/valgrind_workload.py
"$venv/bin/python" scripts/valgrind_verdict.py "$work/memcheck.xml" "$work/ferroloop/_core$suffix"
