"""add_signal_handler/remove_signal_handler, on the stock loop and on ferroloop."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest


def test_signal_handler_runs_on_the_loop(loop):
    got = []

    async def main():
        done = asyncio.Event()

        def on_usr1(tag):
            got.append((tag, threading.get_ident()))
            done.set()

        loop.add_signal_handler(signal.SIGUSR1, on_usr1, "usr1")
        try:
            loop.call_later(0.01, os.kill, os.getpid(), signal.SIGUSR1)
            await asyncio.wait_for(done.wait(), 5)
        finally:
            assert loop.remove_signal_handler(signal.SIGUSR1) is True
        assert loop.remove_signal_handler(signal.SIGUSR1) is False

    loop.run_until_complete(main())
    assert got == [("usr1", threading.get_ident())]
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_handler_context(loop):
    import contextvars

    var = contextvars.ContextVar("var", default="unset")
    seen = []

    async def main():
        done = asyncio.Event()
        var.set("at-add")
        loop.add_signal_handler(signal.SIGUSR2, lambda: (seen.append(var.get()), done.set()))
        var.set("later")
        os.kill(os.getpid(), signal.SIGUSR2)
        await asyncio.wait_for(done.wait(), 5)
        loop.remove_signal_handler(signal.SIGUSR2)

    loop.run_until_complete(main())
    assert seen == ["at-add"]


@pytest.mark.parametrize(
    ("sig", "exc"),
    [
        ("1", TypeError),
        (0, ValueError),
        (signal.NSIG + 10, ValueError),
        (signal.SIGKILL, RuntimeError),
    ],
)
def test_bad_signals(loop, sig, exc):
    with pytest.raises(exc):
        loop.add_signal_handler(sig, lambda: None)
    if exc is not RuntimeError:
        with pytest.raises(exc):
            loop.remove_signal_handler(sig)


def test_coroutine_callback_rejected(loop):
    async def coro():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with add_signal_handler"):
        loop.add_signal_handler(signal.SIGUSR1, coro)


def test_not_main_thread(loop):
    errors = []

    def worker():
        try:
            loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert len(errors) == 1


def test_close_removes_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)


def _libc_kill():
    """libc's kill(), called once (signal 0) before the test's fd count: ctypes' first
    foreign call may open a file for libffi's trampolines, which stays open."""
    import ctypes

    kill = ctypes.CDLL(None, use_errno=True).kill
    kill(os.getpid(), 0)
    return kill



@pytest.fixture
def libc_kill():
    return _libc_kill()


def test_python_signal_handler_runs_before_the_loop_blocks(libc_kill, loop):
    """A handler set with signal.signal() (as asyncio.Runner does for SIGINT) runs as soon
    as its signal arrives, not when the poll next wakes: the signal here arrives inside a
    callback, and the next wait would block for 30 s. (libc's kill() through ctypes: unlike
    os.kill, it does not run the Python handler itself on the way out.)"""
    events = []

    def handler(signum, frame):
        events.append("handler")
        loop.call_soon_threadsafe(loop.stop)

    old = signal.signal(signal.SIGUSR2, handler)
    try:
        loop.call_soon(libc_kill, os.getpid(), signal.SIGUSR2)
        timer = loop.call_later(30, lambda: (events.append("timer"), loop.stop()))
        loop.run_forever()
        timer.cancel()
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert events == ["handler"]
