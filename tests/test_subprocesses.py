"""Child processes (issue 11), on the stock loop (the oracle) and on ferroloop's native
subprocess transport: return codes, signals, pipes under load, Popen's keywords, and no
fd or zombie left behind.

tests/test_subprocess_watch.py has the exit-watching cases (pidfd, the thread fallback,
closing the loop under a running child).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys

import pytest
from test_network import DEADLINE, Collector, open_fds, run

pytestmark = pytest.mark.timeout(120)
PY = sys.executable
PY311 = sys.version_info >= (3, 11)
MiB = 1024 * 1024


def reaped(pid: int) -> bool:
    """Whether child `pid` is gone, zombie included (not our child any more)."""
    try:
        os.waitpid(pid, os.WNOHANG)  # running: (0, 0); a zombie: reaped here
    except ChildProcessError:
        return True
    return False


async def python(code: str, **kw):
    return await asyncio.create_subprocess_exec(PY, "-c", code, **kw)


def test_return_codes_and_signals(loop):
    async def main():
        codes = {}
        for name, code in [
            ("ok", "pass"),
            ("exit 3", "raise SystemExit(3)"),
            ("exit 255", "import os; os._exit(255)"),
            ("SIGKILL itself", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
            ("SIGABRT itself", "import os; os.abort()"),
        ]:
            proc = await python(code)
            codes[name] = await proc.wait()
            assert proc.returncode == codes[name]
        sleeper = await python("import time; time.sleep(60)")
        sleeper.terminate()
        codes["terminate"] = await sleeper.wait()
        sleeper = await python("import time; time.sleep(60)")
        sleeper.send_signal(signal.SIGUSR1)
        codes["SIGUSR1"] = await sleeper.wait()
        return codes

    assert run(loop, main()) == {
        "ok": 0,
        "exit 3": 3,
        "exit 255": 255,
        "SIGKILL itself": -signal.SIGKILL,
        "SIGABRT itself": -signal.SIGABRT,
        "terminate": -signal.SIGTERM,
        "SIGUSR1": -signal.SIGUSR1,
    }


def test_protocol_callbacks_in_order(loop):
    events: list[object] = []

    class P(asyncio.SubprocessProtocol):
        def __init__(self) -> None:
            self.done = asyncio.get_running_loop().create_future()

        def connection_made(self, transport):
            events.append("made")

        def pipe_data_received(self, fd, data):
            events.append((fd, bytes(data)))

        def pipe_connection_lost(self, fd, exc):
            events.append(("lost", fd, exc))

        def process_exited(self):
            events.append("exited")

        def connection_lost(self, exc):
            events.append(("connection_lost", exc))
            self.done.set_result(None)

    async def main():
        tr, proto = await loop.subprocess_exec(
            P, PY, "-c", "import sys; sys.stdout.write('out'); sys.stderr.write('err')",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert isinstance(tr, asyncio.SubprocessTransport)
        assert tr.get_pid() > 0
        assert isinstance(tr.get_extra_info("subprocess"), subprocess.Popen)
        for fd in (0, 1, 2):
            assert tr.get_pipe_transport(fd) is not None
        tr.get_pipe_transport(0).close()
        await proto.done
        assert tr.get_returncode() == 0
        tr.close()
        assert tr.is_closing()

    run(loop, main())
    assert events[0] == "made"
    assert events[-1] == ("connection_lost", None)
    assert (1, b"out") in events and (2, b"err") in events
    assert {e for e in events if isinstance(e, tuple) and e[0] == "lost"} == {
        ("lost", 0, None), ("lost", 1, None), ("lost", 2, None)
    }  # fmt: skip
    assert "exited" in events


def test_heavy_50_mb_through_cat_checksum(loop):
    """50 MB through `cat`, written in chunks with drain() while stdout is read: every byte
    back, in order (SHA-256 of both sides)."""
    chunk = os.urandom(256 * 1024)
    total = 50 * 1000 * 1000
    want = hashlib.sha256()

    async def main():
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

        async def feed():
            sent = 0
            while sent < total:
                piece = chunk[: min(len(chunk), total - sent)]
                want.update(piece)
                proc.stdin.write(piece)
                await proc.stdin.drain()
                sent += len(piece)
            proc.stdin.close()

        async def drain_stdout():
            got, n = hashlib.sha256(), 0
            while data := await proc.stdout.read(1 << 20):
                got.update(data)
                n += len(data)
            return got.hexdigest(), n

        _, (digest, n) = await asyncio.gather(feed(), drain_stdout())
        assert await proc.wait() == 0
        return digest, n

    digest, n = run(loop, main(), deadline=110)
    assert n == total
    assert digest == want.hexdigest()


def test_communicate_stdout_and_stderr(loop):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "cat; echo err >&2; exit 7",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate(b"x" * 300_000)
        return len(out), err, proc.returncode

    assert run(loop, main()) == (300_000, b"err\n", 7)


def test_devnull_and_stdout_to_stderr(loop):
    async def main():
        proc = await python(
            "import sys; print('o'); print('e', file=sys.stderr); print(repr(sys.stdin.read()))",
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert proc.stdin is None and proc.stderr is None
        out, err = await proc.communicate()
        return sorted(out.decode().split()), err

    assert run(loop, main()) == (sorted(["o", "e", "''"]), None)


def test_popen_keywords(loop, tmp_path):
    """Every keyword goes to subprocess.Popen: cwd, env, start_new_session, pass_fds,
    preexec_fn, umask, user/group, process_group (3.11+)."""
    r, w = os.pipe()

    async def main():
        kw: dict[str, object] = {
            "cwd": str(tmp_path),
            "env": {"FERRO": "loop", "PATH": os.environ.get("PATH", "")},
            "start_new_session": True,
            "pass_fds": (w,),
            "preexec_fn": lambda: os.write(w, b"preexec_fn, "),
            "umask": 0o077,
            "user": os.getuid(),
            "group": os.getgid(),
        }
        code = (
            "import os, sys; "
            f"os.write({w}, b'through pass_fds'); "
            "m = os.umask(0); "
            "print(os.getcwd(), os.environ.get('FERRO'), "
            "oct(m), os.getsid(0) == os.getpid(), os.getuid(), os.getgid())"
        )
        proc = await python(code, stdout=subprocess.PIPE, **kw)
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        fields = out.decode().split()
        if PY311:
            proc = await python(
                "import os; print(os.getpgid(0) == os.getpid())",
                stdout=subprocess.PIPE, process_group=0,
            )  # fmt: skip
            out, _ = await proc.communicate()
            fields.append(out.decode().strip())
        return fields

    try:
        fields = run(loop, main())
        want = b"preexec_fn, through pass_fds"
        got = b""
        while len(got) < len(want):
            got += os.read(r, 100)
        assert got == want
    finally:
        os.close(r)
        os.close(w)
    want = [
        str(tmp_path), "loop", "0o77", "True", str(os.getuid()), str(os.getgid())
    ]  # fmt: skip
    if PY311:
        want.append("True")
    assert fields == want


def test_popen_errors_leave_nothing_behind(loop):
    async def main():
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/program")
        with pytest.raises(ValueError):  # asyncio refuses text mode
            await asyncio.create_subprocess_exec(PY, "-c", "pass", text=True)
        with pytest.raises(TypeError):  # not a Popen keyword
            await asyncio.create_subprocess_exec(PY, "-c", "pass", no_such_keyword=1)
        with pytest.raises(subprocess.SubprocessError):
            await asyncio.create_subprocess_exec(
                PY, "-c", "pass", preexec_fn=lambda: 1 / 0
            )

    before = open_fds()
    run(loop, main())
    assert open_fds() <= before


def test_wait_from_several_tasks_and_after_exit(loop):
    async def main():
        proc = await python("import time; time.sleep(0.2); raise SystemExit(5)")
        codes = await asyncio.gather(*(proc.wait() for _ in range(10)))
        codes.append(await proc.wait())
        return codes

    assert run(loop, main()) == [5] * 11


def test_wait_cancelled_then_again(loop):
    async def main():
        proc = await python("import time; time.sleep(0.3)")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.05)
        return await proc.wait()

    assert run(loop, main()) == 0


def test_many_cancelled_waits_then_one_that_returns(loop):
    """Each wait() has its own future; those of cancelled waits are dropped (ferroloop:
    at the next wait()), and the last wait still gets the return code."""

    async def main():
        proc = await python("import time; time.sleep(0.5); raise SystemExit(3)")
        for _ in range(20):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.005)
        return await proc.wait(), await proc.wait()

    assert run(loop, main()) == (3, 3)


@pytest.mark.parametrize(
    "loop_factory",
    [
        pytest.param(
            "asyncio",
            marks=pytest.mark.xfail(
                (3, 11) <= sys.version_info < (3, 14),
                strict=True,
                reason="asyncio bug (gh-119710, fixed in 3.14): wait() also waits for "
                "the pipes to close",
            ),
        ),
        "ferroloop",
    ],
    indirect=True,
)
def test_wait_returns_when_the_process_exits_with_pipes_held_open(loop):
    """wait() returns once the process exits, even while a grandchild holds its stdout
    open (gh-119710)."""

    async def main():
        proc = await python(
            "import subprocess, sys; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3)'])",
            stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            return await asyncio.wait_for(proc.wait(), 2)
        finally:
            await proc.stdout.read()  # the grandchild's exit closes the pipe
            await proc.wait()

    assert run(loop, main()) == 0


def test_close_kills_a_running_child(loop):
    async def main():
        tr, _ = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, PY, "-c", "import time; time.sleep(60)"
        )
        tr.close()
        return await asyncio.wait_for(tr._wait(), 10)

    assert run(loop, main()) == -signal.SIGKILL


def test_heavy_5000_children_in_batches_fds_and_zombies(loop):
    """5,000 children, 100 at a time: every return code right, the fd count back to where
    it started, and every child reaped."""
    pids: list[int] = []

    async def one(i: int) -> int:
        proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", f"exit {i % 7}")
        pids.append(proc.pid)
        return await proc.wait()

    async def main():
        for batch in range(50):
            codes = await asyncio.gather(*(one(batch * 100 + i) for i in range(100)))
            assert codes == [(batch * 100 + i) % 7 for i in range(100)]

    before = open_fds()
    run(loop, main(), deadline=115)
    assert open_fds() <= before
    assert len(pids) == 5000
    assert all(reaped(pid) for pid in pids)


def test_many_children_with_pipes_fds_back_to_start(loop):
    async def main():
        for _ in range(5):
            procs = [
                await python("import sys; print(sys.stdin.read())",
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                for _ in range(20)
            ]  # fmt: skip
            outs = await asyncio.gather(*(p.communicate(b"hi") for p in procs))
            assert [o for o, _ in outs] == [b"hi\n"] * 20

    before = open_fds()
    run(loop, main())
    assert open_fds() <= before


def test_exception_in_protocol_callback_goes_to_handler(loop):
    errors = Collector()
    loop.set_exception_handler(errors)

    class P(asyncio.SubprocessProtocol):
        def __init__(self) -> None:
            self.lost = asyncio.get_running_loop().create_future()

        def process_exited(self):
            raise ZeroDivisionError

        def connection_lost(self, exc):
            self.lost.set_result(None)

    async def main():
        tr, proto = await loop.subprocess_exec(P, PY, "-c", "pass")
        await asyncio.wait_for(proto.lost, DEADLINE)
        tr.close()

    run(loop, main())
    assert [type(c.get("exception")) for c in errors.contexts] == [ZeroDivisionError]
