#!/usr/bin/env bash
# Usage: scripts/py.sh VERSION [ARG...]   run .venvs/VERSION/bin/python ARG...
#        scripts/py.sh --sid CMD [ARG...] run CMD inside the sid chroot, in this directory
# The venvs of 3.14 and 3.15 (Debian sid's interpreters, see scripts/venv.sh) run only
# inside the sid chroot; this runs them there, with the checkout bound at its own path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ "$1" = --sid ]; then
    shift
    exec env SID_BIND="$root ${SID_BIND:-}" "$root/scripts/sid-python.sh" run "$@"
fi
ver="$1"; shift
py="$root/.venvs/$ver/bin/python"
if [ -e "$root/.venvs/$ver/sid" ]; then
    exec "$0" --sid "$py" "$@"
fi
exec "$py" "$@"
