#!/usr/bin/env bash
# Usage: benchmarks/variant.sh REV [PY] [nostats|uring]   (PY defaults to 3.11)
# Builds ferroloop as of git revision REV (the current tree's history) for .venvs/PY and
# prints the directory to give `benchmarks/run.py --variant NAME=DIR`, e.g. to compare the
# working tree with the commit before a change, interleaved in one run:
#   .venvs/3.11/bin/python benchmarks/run.py --variant base=$(benchmarks/variant.sh HEAD~3)
# `nostats` builds it without loop statistics (cargo's --no-default-features), the build
# their cost is measured against:
#   run.py --variant on=$(benchmarks/variant.sh HEAD 3.13) --variant off=$(benchmarks/variant.sh HEAD 3.13 nostats)
# `uring` builds it with the io_uring send batching (cargo's --features uring, issue 13):
#   net.py --variant epoll=$(benchmarks/variant.sh HEAD 3.13) --variant uring=$(benchmarks/variant.sh HEAD 3.13 uring)
# The build lives in target/variants/REV[-FLAVOUR] (source, python/ package and extension).
set -euo pipefail
rev="$1"; ver="${2:-3.11}"; flavour="${3:-}"
case "$flavour" in
    "") features=() ;;
    nostats) features=(--no-default-features) ;;
    uring) features=(--features uring) ;;
    *) echo "unknown flavour $flavour (nostats, uring)" >&2; exit 1 ;;
esac
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/.venvs/$ver/bin/python"
[ -x "$py" ] || { echo "no venv for $ver: run make PY=$ver dev" >&2; exit 1; }
sha="$(git -C "$root" rev-parse --short "$rev")"
dir="$root/target/variants/$sha${flavour:+-$flavour}"
if [ ! -d "$dir/python/ferroloop" ] || [ -z "$(ls "$dir"/python/ferroloop/_core.*.so 2>/dev/null)" ]; then
    rm -rf "$dir"; mkdir -p "$dir"
    git -C "$root" archive "$sha" | tar -x -C "$dir"
    suffix="$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
    (cd "$dir" && PYO3_PYTHON="$py" CARGO_TARGET_DIR="$root/target/variants/cargo-$ver${flavour:+-$flavour}" \
        cargo build --release -q ${features[@]+"${features[@]}"})
    cp "$root/target/variants/cargo-$ver${flavour:+-$flavour}/release/lib_core.so" "$dir/python/ferroloop/_core$suffix"
fi
echo "$dir/python"
