"""`python -m ferroloop [options] script.py [args]` / `python -m ferroloop [options] -m
module [args]`.

Runs an unmodified asyncio program on ferroloop, with what `python` itself gives the
program: `sys.argv`, `__main__`, `sys.path[0]`, `__file__`, exit codes and messages. The
options, before the program, turn on observation of every ferroloop loop it makes: the
statistics summary at exit, the blocking detector, a task dump on a signal.
"""

from __future__ import annotations

import atexit
import builtins
import importlib.machinery
import io
import os
import runpy
import signal
import sys
import types
import weakref
from typing import Any, NoReturn

from ._policy import POLICY_DEPRECATED, install
from ._run import new_event_loop

USAGE = """usage: python -m ferroloop [options] (script.py | -m module) [args ...]
options (before the program):
  --stats                  print the statistics of the program's loops at exit
  --detect-blocking[=SEC]  report each callback or task step that blocks a loop for
                           longer than SEC seconds (default 0.1) through asyncio's logger
  --dump-on SIGNAL         print every task with its await chain when the process gets
                           SIGNAL (e.g. SIGUSR1: kill -USR1 PID)"""


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


def _usage_error(message: str) -> NoReturn:
    print(f"{USAGE}\npython -m ferroloop: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _signal_number(name: str) -> int:
    if name.isdigit():
        return int(name)
    upper = name.upper()
    try:
        return int(signal.Signals[upper if upper.startswith("SIG") else "SIG" + upper])
    except KeyError:
        _usage_error(f"--dump-on: unknown signal {name!r}")


def _options(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The observation options before the program, and the rest of argv."""
    opts: dict[str, Any] = {"stats": False, "detect": None, "dump_on": None}
    while argv and argv[0].startswith("--") and argv[0] not in ("--help",):
        opt, eq, value = argv.pop(0).partition("=")
        if opt == "--":
            break
        if opt == "--stats" and not eq:
            opts["stats"] = True
        elif opt == "--detect-blocking":
            try:
                opts["detect"] = float(value) if eq else 0.1
            except ValueError:
                _usage_error(f"--detect-blocking: not a number of seconds: {value!r}")
            if not 0 < opts["detect"] < float("inf"):
                _usage_error(f"--detect-blocking: must be positive: {value!r}")
        elif opt == "--dump-on":
            if not eq:
                if not argv:
                    _usage_error("--dump-on needs a signal")
                value = argv.pop(0)
            opts["dump_on"] = _signal_number(value)
        else:
            _usage_error(f"unknown option {opt + eq + value!r}")
    return opts, argv


def observe(stats: bool, detect: float | None, dump_on: int | None) -> None:
    """Turn on the observation options for every ferroloop loop the program makes."""
    from . import _observe, _stats, _taskdump

    snapshots: list[Any] = []  # stats of closed loops
    live: weakref.WeakSet[Any] = weakref.WeakSet()

    def made(loop: Any) -> None:
        live.add(loop)
        if detect is not None:
            _observe.detect_blocking(loop, detect)

    def closed(loop: Any) -> None:
        if stats:
            snapshots.append(loop.stats())
        live.discard(loop)

    _observe.new_loop_hooks.append(made)
    _observe.closed_loop_hooks.append(closed)
    if stats:

        @atexit.register
        def summary() -> None:
            all_stats = snapshots + [lp.stats() for lp in list(live)]
            if all_stats:
                print(_stats.format_summary(_stats.merge(all_stats)), file=sys.stderr)

    if dump_on is not None:

        def dump(signum: int, frame: types.FrameType | None) -> None:
            for loop in list(live):
                if not loop.is_closed():
                    _taskdump._dump(loop, sys.stderr, frame)

        try:
            signal.signal(dump_on, dump)
        except (OSError, ValueError) as exc:
            _usage_error(f"--dump-on: cannot handle signal {dump_on}: {exc}")


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        raise SystemExit(2 if not argv else 0)
    opts, argv = _options(list(argv))
    if not argv:
        _usage_error("no program given")
    if opts["stats"] or opts["detect"] is not None or opts["dump_on"] is not None:
        observe(opts["stats"], opts["detect"], opts["dump_on"])
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
