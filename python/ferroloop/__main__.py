"""`python -m ferroloop script.py [args]` / `python -m ferroloop -m module [args]`.

Runs an unmodified asyncio program on ferroloop, with what `python` itself gives the
program: `sys.argv`, `__main__`, `sys.path[0]`, `__file__`, exit codes and messages.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import io
import os
import runpy
import sys
import types

from ._policy import POLICY_DEPRECATED, install
from ._run import new_event_loop

USAGE = "usage: python -m ferroloop (script.py | -m module) [args ...]"


def _run_script(argv: list[str]) -> None:
    path = argv[0]
    if os.path.isdir(path) or not path.endswith((".py", ".pyw")) and _is_zip(path):
        # A directory or zip application with a __main__.py, as `python dir/` runs it.
        sys.argv = argv[:]
        sys.path[0] = path
        runpy.run_path(path, run_name="__main__")
        return
    try:
        with io.open_code(path) as f:
            source = f.read()
    except OSError as exc:
        print(
            f"{sys.executable}: can't open file {os.path.abspath(path)!r}: "
            f"[Errno {exc.errno}] {exc.strerror}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    filename = os.path.abspath(path)  # 3.9+: the main script's __file__ is absolute
    sys.argv = argv[:]
    # python puts the directory of the resolved (symlink-free) script first.
    sys.path[0] = os.path.dirname(os.path.realpath(path))
    main = types.ModuleType("__main__")
    main.__file__ = filename
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", filename)
    main.__spec__ = None
    sys.modules["__main__"] = main
    code = compile(source, filename, "exec", dont_inherit=True)
    exec(code, main.__dict__)


def _is_zip(path: str) -> bool:
    import zipfile

    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _run_module(argv: list[str]) -> None:
    sys.argv = argv[:]
    # `python -m mod` puts the current directory first on sys.path.
    sys.path[0] = os.getcwd()
    # runpy's own entry point for `python -m`: same argv[0], messages and exit codes.
    runpy._run_module_as_main(argv[0], alter_argv=True)  # type: ignore[attr-defined]


def use_ferroloop() -> None:
    """Make ferroloop the loop that the program's asyncio creates by default."""
    if not POLICY_DEPRECATED:
        # Before 3.14 the policy is asyncio's own hook (get_event_loop() makes loops
        # through it too).
        install()
        return
    # 3.14+ deprecates the policy system: the program gets ferroloop as the default
    # loop factory instead. asyncio.run(), asyncio.Runner() and asyncio.new_event_loop()
    # all make their loop through events.new_event_loop(); get_event_loop() no longer
    # makes one.
    import asyncio
    from asyncio import events

    events.new_event_loop = asyncio.new_event_loop = new_event_loop


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        raise SystemExit(2 if not argv else 0)
    use_ferroloop()
    if argv[0] == "-m":
        if len(argv) < 2:
            print("Argument expected for the -m option", file=sys.stderr)
            raise SystemExit(2)
        _run_module(argv[1:])
    else:
        _run_script(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
