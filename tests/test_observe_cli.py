"""`python -m ferroloop --stats | --detect-blocking[=S] | --dump-on SIGNAL` on unmodified
programs.

FERROLOOP ONLY: the options observe ferroloop's loops; the programs themselves are plain
asyncio (`asyncio.run`), as in test_cli.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROGRAM = textwrap.dedent(
    """
    import asyncio, time

    async def echo(reader, writer):
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    async def sleeper():
        await asyncio.sleep(0)
        time.sleep(0.3)

    async def main():
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x" * 42)
        assert await reader.read(100) == b"x" * 42
        writer.close()
        for _ in range(3):
            loop.call_later(0, lambda: None)
        await asyncio.create_task(sleeper(), name="sleepy")
        server.close()
        print(type(loop).__module__ + "." + type(loop).__qualname__)

    asyncio.run(main())
    """
)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP", "PYTHONINSPECT")}
    return subprocess.run(
        [sys.executable, "-m", "ferroloop", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(PROGRAM)
    return tmp_path


def test_stats_summary_at_exit(app):
    """FERROLOOP ONLY: --stats prints the loop's summary at exit, after the program."""
    p = run("--stats", "app.py", cwd=app)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "ferroloop._loop.Loop"
    err = p.stderr
    assert "ferroloop stats (1 loop)" in err
    assert "timers: " in err and "fired" in err
    assert "callbacks" in err and "slowest: " in err
    slowest = [line for line in err.splitlines() if "slowest: " in line][0]
    # The 0.3 s step, named, or as the upper bound of an untimed stretch.
    assert "sleepy" in slowest or "at most 3" in slowest
    # 42 bytes each way on both ends of the connection.
    assert "tcp: read 84 B in " in err and "wrote 84 B in " in err


def test_detect_blocking_reports_the_sleeping_task(app):
    """FERROLOOP ONLY: --detect-blocking turns the detector on for the program's loop."""
    p = run("--detect-blocking=0.1", "app.py", cwd=app)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("Event loop blocked for") == 1
    assert "by task 'sleepy'" in p.stderr
    assert "time.sleep(0.3)" in p.stderr
    quiet = run("--detect-blocking=1", "app.py", cwd=app)
    assert quiet.returncode == 0 and "blocked" not in quiet.stderr


def test_detect_blocking_default_threshold_and_options_together(app):
    """FERROLOOP ONLY: options combine; --detect-blocking alone means 0.1 s."""
    p = run("--detect-blocking", "--stats", "app.py", "--stats", cwd=app)
    assert p.returncode == 0, p.stderr
    assert "Event loop blocked for" in p.stderr
    assert "ferroloop stats (1 loop)" in p.stderr


def test_dump_on_signal(tmp_path):
    """FERROLOOP ONLY: --dump-on SIGUSR1 prints the running program's tasks on a signal."""
    (tmp_path / "serve.py").write_text(
        textwrap.dedent(
            """
            import asyncio

            async def worker():
                await asyncio.sleep(30)

            async def main():
                tasks = [asyncio.create_task(worker(), name=f"w{i}") for i in range(2)]
                await asyncio.sleep(0)
                print("ready", flush=True)
                await asyncio.gather(*tasks)

            asyncio.run(main())
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferroloop", "--dump-on", "USR1", "serve.py"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGUSR1)
        assert proc.stderr is not None
        # Read until both workers' sleeps are listed (the dump's length varies by
        # version); if it never comes, the program ends after its sleep and readline()
        # returns "".
        lines: list[str] = []
        while "".join(lines).count("sleep ") < 2:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
    finally:
        proc.kill()
        proc.communicate()
    text = "".join(lines)
    assert lines[0].startswith("3 tasks on <Loop running=True")
    assert "└── (T) Task-1\n    └──  main " in text
    assert "(T) w0" in text and "(T) w1" in text
    assert text.count("worker ") == 2 and text.count("sleep ") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nope", "app.py"], "unknown option '--nope'"),
        (["--detect-blocking=soon", "app.py"], "not a number"),
        (["--detect-blocking=0", "app.py"], "must be positive"),
        (["--dump-on", "SIGNOPE", "app.py"], "unknown signal"),
        (["--dump-on", "SIGKILL", "app.py"], "cannot handle signal"),
        (["--dump-on"], "needs a signal"),
        (["--stats"], "no program given"),
    ],
)
def test_bad_options_are_usage_errors(app, args, message):
    """FERROLOOP ONLY: a bad option is a usage error (exit 2), before the program runs."""
    p = run(*args, cwd=app)
    assert p.returncode == 2
    assert message in p.stderr
    assert p.stdout == ""


def test_options_do_not_change_the_program(tmp_path):
    """FERROLOOP ONLY: with options, the program still sees its own argv, and on 3.14+
    asyncio.run()/new_event_loop() still make ferroloop loops (the loop factory)."""
    (tmp_path / "argv.py").write_text(
        "import asyncio, sys\n"
        "loop = asyncio.new_event_loop()\n"
        "print(type(loop).__qualname__, sys.argv)\n"
        "loop.close()\n"
    )
    p = run("--stats", "--detect-blocking=5", "argv.py", "--stats", "x", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "Loop ['argv.py', '--stats', 'x']"
    assert "ferroloop stats (1 loop)" in p.stderr
