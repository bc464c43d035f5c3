"""`python -m ferroloop script.py [args]` and `python -m ferroloop -m module [args]`.

The oracle is `python` itself: each test runs the same program as `python script.py` /
`python -m module` and under ferroloop, and compares what the program saw (sys.argv,
__name__, __file__, sys.path[0]) and how the process ended (exit code, stderr). The one
expected difference is the event loop: the stock loop under `python`, a `ferroloop.Loop`
under `python -m ferroloop`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

STOCK_LOOP = "asyncio.unix_events._UnixSelectorEventLoop"
FERRO_LOOP = "ferroloop._loop.Loop"

REPORT = textwrap.dedent(
    """
    import asyncio, json, os, sys

    async def main():
        loop = asyncio.get_running_loop()
        return type(loop).__module__ + "." + type(loop).__qualname__

    loop_type = asyncio.run(main())
    new_loop = asyncio.new_event_loop()
    new_loop_type = type(new_loop).__module__ + "." + type(new_loop).__qualname__
    new_loop.close()
    spec = globals().get("__spec__")
    print(json.dumps({
        "loop": loop_type,
        "new_event_loop": new_loop_type,
        "argv": sys.argv,
        "name": __name__,
        "file": __file__,
        "path0": sys.path[0],
        "spec": spec.name if spec is not None else None,
        "package": __package__,
        "main_module_is_me": sys.modules["__main__"].__dict__ is globals(),
    }))
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("PYTHONSTARTUP", "PYTHONINSPECT"):
        env.pop(var, None)
    return env


def python(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        check=False,
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def ferroloop(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return python("-m", "ferroloop", *args, cwd=cwd)


def report(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- scripts


def test_script_runs_on_ferroloop(tmp_path):
    write(tmp_path / "app" / "script.py", REPORT)
    args = ("app/script.py", "a", "b")
    plain = report(python(*args, cwd=tmp_path))
    ferro = report(ferroloop(*args, cwd=tmp_path))
    assert plain["loop"] == plain["new_event_loop"] == STOCK_LOOP
    assert ferro["loop"] == ferro["new_event_loop"] == FERRO_LOOP
    assert ferro["argv"] == plain["argv"] == ["app/script.py", "a", "b"]
    assert ferro["name"] == plain["name"] == "__main__"
    assert ferro["path0"] == plain["path0"] == str(tmp_path / "app")
    assert ferro["spec"] == plain["spec"]
    assert ferro["main_module_is_me"] and plain["main_module_is_me"]


def test_script_argv_passes_options_through(tmp_path):
    # Arguments after the script belong to the script, even ones that look like options.
    write(tmp_path / "script.py", REPORT)
    args = ("script.py", "-m", "--help", "-h", "--", "x y")
    plain = report(python(*args, cwd=tmp_path))
    ferro = report(ferroloop(*args, cwd=tmp_path))
    assert ferro["argv"] == plain["argv"] == list(args)


def test_script_file_is_absolute(tmp_path):
    # Since 3.9, python makes the main script's __file__ absolute, so that it survives
    # os.chdir(); scripts locate their data with it.
    write(tmp_path / "app" / "script.py", REPORT)
    plain = report(python("app/script.py", cwd=tmp_path))
    ferro = report(ferroloop("app/script.py", cwd=tmp_path))
    assert plain["file"] == str(tmp_path / "app" / "script.py")
    assert ferro["file"] == plain["file"]


def test_script_imports_its_sibling_modules(tmp_path):
    write(tmp_path / "app" / "helper.py", "VALUE = 'from helper'\n")
    write(
        tmp_path / "app" / "script.py",
        "import asyncio, helper\n"
        "async def main():\n    return helper.VALUE\n"
        "print(asyncio.run(main()))\n",
    )
    plain = python("app/script.py", cwd=tmp_path)
    ferro = ferroloop("app/script.py", cwd=tmp_path)
    assert plain.returncode == ferro.returncode == 0, ferro.stderr
    assert ferro.stdout == plain.stdout == "from helper\n"


def test_symlinked_script_finds_its_siblings(tmp_path):
    # python resolves a symlinked script before putting its directory on sys.path.
    write(tmp_path / "real" / "helper.py", "VALUE = 'found'\n")
    write(
        tmp_path / "real" / "script.py",
        "import sys, helper\nprint(helper.VALUE, sys.path[0])\n",
    )
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool.py").symlink_to(tmp_path / "real" / "script.py")
    plain = python("bin/tool.py", cwd=tmp_path)
    ferro = ferroloop("bin/tool.py", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == f"found {tmp_path / 'real'}\n"
    assert ferro.returncode == 0, ferro.stderr
    assert ferro.stdout == plain.stdout


def test_script_classes_pickle_and_spawn(tmp_path):
    # Objects of classes defined in the script pickle by reference to __main__, and a
    # spawned worker process re-imports the script: both need the real __main__.
    write(
        tmp_path / "mp.py",
        textwrap.dedent(
            """
            import asyncio, concurrent.futures, multiprocessing, pickle

            class Point:
                def __init__(self, x):
                    self.x = x

            def square(n):
                return n * n

            async def main():
                loop = asyncio.get_running_loop()
                ctx = multiprocessing.get_context("spawn")
                with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    r = await loop.run_in_executor(pool, square, 7)
                return r, pickle.loads(pickle.dumps(Point(3))).x

            if __name__ == "__main__":
                print(asyncio.run(main()))
            """
        ),
    )
    plain = python("mp.py", cwd=tmp_path)
    ferro = ferroloop("mp.py", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert ferro.returncode == 0, ferro.stderr
    assert ferro.stdout == plain.stdout == "(49, 3)\n"


# --------------------------------------------------------------------------- exit codes

EXITS = textwrap.dedent(
    """
    import asyncio, sys

    async def main(mode):
        await asyncio.sleep(0)
        if mode == "exit3":
            sys.exit(3)
        if mode == "exit-message":
            sys.exit("bye now")
        if mode == "exit-none":
            raise SystemExit(None)
        if mode == "raise":
            raise ValueError("boom")
        if mode == "keyboard-interrupt":
            raise KeyboardInterrupt
        print("normal end")

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.parametrize(
    "mode, code",
    [
        ("normal", 0),
        ("exit3", 3),
        ("exit-message", 1),
        ("exit-none", 0),
        ("raise", 1),
        ("keyboard-interrupt", -signal.SIGINT),
    ],
)
def test_exit_codes(tmp_path, mode, code):
    write(tmp_path / "exits.py", EXITS)
    plain = python("exits.py", mode, cwd=tmp_path)
    ferro = ferroloop("exits.py", mode, cwd=tmp_path)
    assert plain.returncode == code
    assert ferro.returncode == plain.returncode, ferro.stderr
    assert ferro.stdout == plain.stdout
    last = lambda p: (p.stderr.strip().splitlines() or [""])[-1]
    assert last(ferro) == last(plain)
    if mode == "raise":
        assert "Traceback (most recent call last)" in ferro.stderr
        assert last(ferro) == "ValueError: boom"
    if mode == "exit-message":
        assert ferro.stderr == plain.stderr == "bye now\n"


def test_ctrl_c_while_running(tmp_path):
    write(
        tmp_path / "sleeper.py",
        textwrap.dedent(
            """
            import asyncio, sys

            async def main():
                try:
                    print("ready", flush=True)
                    await asyncio.sleep(30)
                finally:
                    print("cleanup", flush=True)

            asyncio.run(main())
            """
        ),
    )

    def interrupt(*prefix: str) -> tuple[int, str, str]:
        proc = subprocess.Popen(
            [sys.executable, *prefix, "sleeper.py"],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            # A shell's background job inherits SIGINT ignored, and Python then leaves it
            # ignored: give the child the default disposition, as a terminal would.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            assert proc.stdout.readline() == "ready\n"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return proc.returncode, out, err.strip().splitlines()[-1]

    plain = interrupt()
    ferro = interrupt("-m", "ferroloop")
    assert plain == (-signal.SIGINT, "cleanup\n", "KeyboardInterrupt")
    assert ferro == plain


def test_missing_script(tmp_path):
    plain = python("missing.py", cwd=tmp_path)
    ferro = ferroloop("missing.py", cwd=tmp_path)
    assert plain.returncode == 2
    assert "can't open file" in plain.stderr
    assert ferro.returncode == plain.returncode, ferro.stderr


# --------------------------------------------------------------------------- -m module


def test_module_form(tmp_path):
    write(tmp_path / "mymod.py", REPORT)
    args = ("-m", "mymod", "x", "y")
    plain = report(python(*args, cwd=tmp_path))
    ferro = report(ferroloop(*args, cwd=tmp_path))
    assert plain["loop"] == STOCK_LOOP
    assert ferro["loop"] == ferro["new_event_loop"] == FERRO_LOOP
    for key in ("argv", "name", "file", "path0", "spec", "package", "main_module_is_me"):
        assert ferro[key] == plain[key], key
    assert ferro["argv"] == [str(tmp_path / "mymod.py"), "x", "y"]
    assert ferro["name"] == "__main__"


def test_module_form_package_main(tmp_path):
    write(tmp_path / "pkg" / "__init__.py", "")
    write(tmp_path / "pkg" / "__main__.py", REPORT)
    args = ("-m", "pkg", "z")
    plain = report(python(*args, cwd=tmp_path))
    ferro = report(ferroloop(*args, cwd=tmp_path))
    assert ferro["loop"] == FERRO_LOOP
    for key in ("argv", "name", "file", "path0", "spec", "package"):
        assert ferro[key] == plain[key], key
    assert ferro["spec"] == "pkg.__main__"


def test_module_form_exit_code(tmp_path):
    write(tmp_path / "exits.py", EXITS)
    plain = python("-m", "exits", "exit3", cwd=tmp_path)
    ferro = ferroloop("-m", "exits", "exit3", cwd=tmp_path)
    assert plain.returncode == ferro.returncode == 3


def test_missing_module_exit_code(tmp_path):
    plain = python("-m", "no_such_module_here", cwd=tmp_path)
    ferro = ferroloop("-m", "no_such_module_here", cwd=tmp_path)
    assert plain.returncode == 1
    assert ferro.returncode == plain.returncode
    assert "No module named no_such_module_here" in ferro.stderr


def test_missing_module_message_like_python(tmp_path):
    # python prints one line, no traceback of its own start-up machinery.
    plain = python("-m", "no_such_module_here", cwd=tmp_path)
    ferro = ferroloop("-m", "no_such_module_here", cwd=tmp_path)
    assert "Traceback" not in plain.stderr
    assert "Traceback" not in ferro.stderr


# --------------------------------------------------------------------------- usage errors


def test_no_arguments_is_a_usage_error(tmp_path):
    ferro = ferroloop(cwd=tmp_path)
    assert ferro.returncode == 2
    assert "usage" in ferro.stderr.lower()
    assert ferro.stdout == ""


def test_dash_m_without_module(tmp_path):
    plain = python("-m", cwd=tmp_path)
    ferro = ferroloop("-m", cwd=tmp_path)
    assert plain.returncode == ferro.returncode == 2
    first = plain.stderr.splitlines()[0]
    assert first == "Argument expected for the -m option"
    assert ferro.stderr.splitlines()[0] == first


def test_help(tmp_path):
    ferro = ferroloop("--help", cwd=tmp_path)
    assert ferro.returncode == 0
    assert "usage" in ferro.stdout.lower()
