"""`ferroloop.dump_tasks()`: every task with its await chain, as 3.14's `python -m asyncio
pstree` draws them.

dump_tasks() introspects any asyncio loop, so the in-process tests run on the stock loop
and on ferroloop (the same tree on both). On 3.14+ the tree is also compared, line for line,
with what `python -m asyncio pstree PID` prints for the same process.
"""

from __future__ import annotations

import asyncio
import io
import re
import signal
import subprocess
import sys
import textwrap

import ferroloop
import pytest

needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="TaskGroup is 3.11+")
needs_314 = pytest.mark.skipif(sys.version_info < (3, 14), reason="pstree is 3.14+")


def _shape(text: str) -> list[str]:
    """The tree without paths and line numbers (and without the header line)."""
    lines = text.rstrip("\n").split("\n")[1:]
    return [re.sub(r" \S+:\d+$", "", line) for line in lines]


async def play():
    await asyncio.sleep(60)


async def album(name):
    async with asyncio.TaskGroup() as tg:
        tg.create_task(play(), name=f"{name}-1")
        tg.create_task(play(), name=f"{name}-2")


NESTED = """\
└── (T) main
    └──  test_nested_task_groups.<locals>.main
        └──  TaskGroup.__aexit__
            └──  TaskGroup._aexit
                ├── (T) album-A
                │   └──  album
                │       └──  TaskGroup.__aexit__
                │           └──  TaskGroup._aexit
                │               ├── (T) A-1
                │               │   └──  play
                │               │       └──  sleep
                │               └── (T) A-2
                │                   └──  play
                │                       └──  sleep
                └── (T) album-B
                    └──  album
                        └──  TaskGroup.__aexit__
                            └──  TaskGroup._aexit
                                ├── (T) B-1
                                │   └──  play
                                │       └──  sleep
                                └── (T) B-2
                                    └──  play
                                        └──  sleep"""


def _aexit_frames(shape: list[str]) -> list[str]:
    """3.11-3.13's TaskGroup waits in __aexit__ itself, 3.14's in _aexit called by it: on
    3.13 and older the _aexit nodes go and their subtrees move up a level."""
    if sys.version_info >= (3, 14):
        return shape
    out: list[str] = []
    cuts: list[int] = []  # columns of the removed nodes above this line
    for line in shape:
        col = len(line) - len(line.lstrip(" │"))
        while cuts and col <= cuts[-1]:
            cuts.pop()
        if "TaskGroup._aexit" in line:
            cuts.append(col)
            continue
        for cut in reversed(cuts):
            line = line[:cut] + line[cut + 4 :]
        out.append(line)
    return out


@needs_311
def test_nested_task_groups(loop):
    """Nested TaskGroups, dumped from outside the loop while it is stopped."""

    async def main():
        async with asyncio.TaskGroup() as tg:
            tg.create_task(album("A"), name="album-A")
            tg.create_task(album("B"), name="album-B")

    task = loop.create_task(main(), name="main")
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    out = io.StringIO()
    try:
        ferroloop.dump_tasks(loop, file=out)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(task)
    text = out.getvalue()
    assert text.startswith("7 tasks on <")
    assert _shape(text) == _aexit_frames(NESTED.split("\n"))
    # Frames carry their file and line, as pstree's do.
    assert re.search(r"└──  play \S+test_taskdump.py:\d+$", text, re.M)


def test_await_chain_and_gather(loop):
    """A task awaiting a task awaiting a gather(), dumped from inside a running task
    (which shows its live stack)."""

    async def inner():
        await asyncio.gather(play(), play())

    async def outer(t):
        await t

    async def main():
        t = asyncio.create_task(inner(), name="inner")
        o = asyncio.create_task(outer(t), name="outer")
        await asyncio.sleep(0.01)
        out = io.StringIO()
        ferroloop.dump_tasks(file=out)
        o.cancel()
        t.cancel()
        await asyncio.gather(o, t, return_exceptions=True)
        return out.getvalue()

    text = loop.run_until_complete(loop.create_task(main(), name="main"))
    a, b = _child_ids(text)
    qual = "test_await_chain_and_gather.<locals>"
    assert text.startswith("5 tasks on <")
    assert "\n".join(_shape(text)) == textwrap.dedent(
        f"""\
        └── (T) main
            └──  {qual}.main
        └── (T) outer
            └──  {qual}.outer
                └── (T) inner
                    └──  {qual}.inner
                        ├── (T) Task-{a}
                        │   └──  play
                        │       └──  sleep
                        └── (T) Task-{b}
                            └──  play
                                └──  sleep"""
    )


def _child_ids(text: str) -> list[str]:
    return re.findall(r"\(T\) Task-(\d+)", text)


def test_no_tasks_and_bad_loop(loop):
    out = io.StringIO()
    ferroloop.dump_tasks(loop, file=out)
    assert out.getvalue().startswith("0 tasks on <")
    with pytest.raises(TypeError):
        ferroloop.dump_tasks(object(), file=out)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        ferroloop.dump_tasks()  # no running loop


PSTREE_PROGRAM = """
import asyncio

async def play():
    await asyncio.sleep(60)

async def album(name):
    async with asyncio.TaskGroup() as tg:
        tg.create_task(play(), name=name + "-1")
        tg.create_task(play(), name=name + "-2")

async def gathered():
    await asyncio.gather(play(), play())

async def main():
    async with asyncio.TaskGroup() as tg:
        tg.create_task(album("A"), name="album-A")
        tg.create_task(album("B"), name="album-B")
        tg.create_task(gathered(), name="gath")
        await asyncio.sleep(0.01)
        print("ready", flush=True)

asyncio.run(main())
"""


@needs_314
def test_same_tree_as_asyncio_pstree(tmp_path):
    """FERROLOOP ONLY: `--dump-on SIGUSR1` prints exactly the tree that `python -m
    asyncio pstree PID` reads from the same process."""
    script = tmp_path / "app.py"
    script.write_text(PSTREE_PROGRAM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferroloop", "--dump-on", "SIGUSR1", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        pstree = subprocess.run(
            [sys.executable, "-m", "asyncio", "pstree", str(proc.pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        proc.send_signal(signal.SIGUSR1)
        lines = []
        assert proc.stderr is not None
        header = proc.stderr.readline()
        for _ in range(len(pstree.stdout.splitlines())):
            lines.append(proc.stderr.readline())
    finally:
        proc.kill()
        proc.communicate()
    if pstree.returncode != 0 and "ermission" in pstree.stderr:
        pytest.skip(f"no permission to read another process here: {pstree.stderr.strip()}")
    assert pstree.returncode == 0, pstree.stderr
    assert header.startswith("10 tasks on <Loop running=True")
    assert "".join(lines) == pstree.stdout
