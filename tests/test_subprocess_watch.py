"""Child processes and their exit, on the stock loop (the oracle) and on ferroloop.

From 3.14 on ferroloop watches its children itself (a pidfd on the poller, else a thread
per child); before, it runs asyncio's own child watchers. The behaviour asserted here is
the same on every version.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(60)
OWN_WATCHING = True  # ferroloop watches its children itself on every version
PY = sys.executable


async def exit_code(code_or_signal: str) -> int:
    proc = await asyncio.create_subprocess_exec(PY, "-c", code_or_signal)
    return await proc.wait()


def test_return_codes(loop):
    async def main():
        return await asyncio.gather(
            exit_code("pass"),
            exit_code("raise SystemExit(3)"),
            exit_code("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
        )

    assert loop.run_until_complete(main()) == [0, 3, -signal.SIGKILL]


def test_kill_terminate_and_communicate(loop):
    async def main():
        sleeper = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)")
        sleeper.terminate()
        echo = await asyncio.create_subprocess_exec(
            "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        out, _ = await echo.communicate(b"x" * 100_000)
        return await sleeper.wait(), echo.returncode, len(out)

    assert loop.run_until_complete(main()) == (-signal.SIGTERM, 0, 100_000)


def test_many_children_fds_back_to_start(loop):
    fds_before = len(os.listdir("/proc/self/fd"))

    async def main():
        for _ in range(4):
            codes = await asyncio.gather(*(exit_code(f"raise SystemExit({i})") for i in range(25)))
            assert codes == list(range(25))

    loop.run_until_complete(main())
    assert len(os.listdir("/proc/self/fd")) <= fds_before


@pytest.mark.skipif(not OWN_WATCHING, reason="asyncio's own watchers before 3.14")
def test_ferroloop_only_thread_fallback_without_pidfd(monkeypatch):
    """FERROLOOP ONLY: where pidfd_open fails (old kernel, seccomp), a thread waits for the
    child without reaping it, and the loop thread reaps it: send_signal() between the exit
    and its publication still targets our zombie, never a recycled pid."""
    import ferroloop

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)

    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)")
        proc.kill()
        # The loop is blocked here: the watcher thread sees the exit, cannot publish it.
        time.sleep(0.5)
        assert proc.returncode is None
        # Still our zombie (WNOWAIT leaves it unreaped): signalling it is safe.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        proc.send_signal(signal.SIGKILL)
        codes = [await proc.wait()]
        codes += await asyncio.gather(exit_code("raise SystemExit(7)"), exit_code("pass"))
        return codes

    loop = ferroloop.new_event_loop()
    try:
        assert loop.run_until_complete(main()) == [-signal.SIGKILL, 7, 0]
    finally:
        loop.close()


@pytest.mark.skipif(not OWN_WATCHING, reason="asyncio's own watchers before 3.14")
def test_ferroloop_only_close_with_running_child_leaves_no_fd_or_zombie():
    """FERROLOOP ONLY: closing the loop while a child runs releases its pidfd, and the
    child is still reaped when it exits (asyncio's stock loop leaks both)."""
    import ferroloop

    fds_before = len(os.listdir("/proc/self/fd"))
    loop = ferroloop.new_event_loop()

    async def spawn():
        return await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(0.5)")

    proc = loop.run_until_complete(spawn())
    pid = proc.pid
    loop.close()
    del proc
    assert len(os.listdir("/proc/self/fd")) <= fds_before
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)  # succeeds while the child (or its zombie) exists
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"child {pid} was never reaped")
