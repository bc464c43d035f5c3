"""fork(): a child process makes and runs a loop of its own, with no loop in the parent
and with the parent's loop running (the fork made from inside one of its callbacks), on
the stock loop and on ferroloop. The child exits 0 only if its loop did everything."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


async def _child_work(loop: asyncio.AbstractEventLoop) -> str:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    with a, b:
        await loop.sock_sendall(a, b"ping")
        got = await asyncio.wait_for(loop.sock_recv(b, 10), 5)
    fired = loop.create_future()
    loop.call_later(0.01, fired.set_result, "timer")
    threading.Thread(target=loop.call_soon_threadsafe, args=(lambda: None,)).start()
    in_thread = await loop.run_in_executor(None, lambda: "executor")
    await asyncio.sleep(0.01)
    return f"{got.decode()} {await fired} {in_thread}"


def _in_child(loop_factory) -> None:
    """Runs in the child: never returns."""
    code = 1
    try:
        # The parent's running loop, if any, is not this process's (asyncio forgets it
        # at fork from 3.12 on; before, a program has to).
        asyncio.events._set_running_loop(None)
        loop = loop_factory()
        try:
            result = loop.run_until_complete(_child_work(loop))
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
        code = 0 if result == "ping timer executor" else 2
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _wait(pid: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the child's loop hung")


def _fork() -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    return os.fork()


def test_child_runs_its_own_loop_without_a_loop_in_the_parent(loop_factory):
    pid = _fork()
    if pid == 0:
        _in_child(loop_factory)
    assert _wait(pid) == 0


def test_child_runs_its_own_loop_while_the_parents_runs(loop):
    factory = type(loop)  # the child makes a loop of the parent's kind

    async def parent() -> int:
        await asyncio.sleep(0)
        pid = _fork()
        if pid == 0:
            _in_child(factory)
        # The parent's loop goes on meanwhile.
        for _ in range(3):
            await asyncio.sleep(0.01)
        return await loop.run_in_executor(None, _wait, pid)

    assert loop.run_until_complete(parent()) == 0


def test_parent_loop_keeps_working_after_a_fork(loop):
    async def main() -> str:
        pid = _fork()
        if pid == 0:
            os._exit(0)
        await loop.run_in_executor(None, _wait, pid)
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        with a, b:
            await loop.sock_sendall(a, b"after")
            return (await loop.sock_recv(b, 10)).decode()

    assert loop.run_until_complete(asyncio.wait_for(main(), 10)) == "after"
