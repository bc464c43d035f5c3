"""`python -m ferroloop script.py [args]` / `python -m ferroloop -m module [args]`."""

from __future__ import annotations

import os
import runpy
import sys

from ._policy import install

USAGE = "usage: python -m ferroloop (script.py | -m module) [args ...]"


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        raise SystemExit(2 if not argv else 0)
    install()
    if argv[0] == "-m":
        if len(argv) < 2:
            print("Argument expected for the -m option", file=sys.stderr)
            raise SystemExit(2)
        sys.argv = argv[1:]
        # `python -m mod` puts the current directory first on sys.path.
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv[:]
        # `python script.py` puts the script's directory first on sys.path.
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
