"""The ferroloop package: run(), new_event_loop(), Loop, install(), EventLoopPolicy.

Behaviour tests run on both loops through conftest's `loop`/`loop_factory` fixtures; for
`ferroloop.run()` the oracle is `asyncio.run()` (which makes the stock loop). A few tests
are about ferroloop's own API and have no stock counterpart: they say so.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ferroloop
import pytest

PY311 = sys.version_info >= (3, 11)
PY312 = sys.version_info >= (3, 12)
POLICY_DEPRECATED = sys.version_info >= (3, 14)
FAR = 10.0


def drop_and_collect(holder: list[Any]) -> None:
    """Drops the only references (held in `holder`) and runs the cycle collector."""
    holder.clear()
    gc.collect()


def is_ferroloop(loop_factory: Callable[[], Any]) -> bool:
    return loop_factory is ferroloop.new_event_loop


@pytest.fixture
def run(loop_factory: Callable[[], Any]) -> Callable[..., Any]:
    """`ferroloop.run` for the ferroloop param, its oracle `asyncio.run` for the other."""
    return ferroloop.run if is_ferroloop(loop_factory) else asyncio.run


@pytest.fixture
def restore_policy():
    """Puts back the event-loop policy (and the current loop) a test changes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(policy)


# --------------------------------------------------------------------------- run()


def test_run_returns_value(run, loop_factory):
    async def main(x):
        await asyncio.sleep(0)
        return x, asyncio.get_running_loop()

    value, loop = run(main(42))
    assert value == 42
    assert isinstance(loop, ferroloop.Loop) is is_ferroloop(loop_factory)
    assert loop.is_closed()


@pytest.mark.parametrize("debug", [True, False])
def test_run_debug(run, debug):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert run(main(), debug=debug) is debug


def test_run_propagates_exception(run):
    async def main():
        await asyncio.sleep(0)
        raise ValueError("from main")

    with pytest.raises(ValueError, match="from main"):
        run(main())


def test_run_rejects_non_coroutine(run):
    # 3.14's Runner.run takes any awaitable, and rejects the rest with TypeError.
    with pytest.raises(TypeError if sys.version_info >= (3, 14) else ValueError):
        run(42)


def test_run_inside_running_loop(run):
    async def inner():
        pass

    async def main():
        coro = inner()
        try:
            run(coro)
        finally:
            coro.close()

    with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
        asyncio.run(main())


def test_run_cleans_up(run):
    # Pending tasks are cancelled, async generators finalized, the default executor shut
    # down, and no current event loop is left behind.
    events = []

    async def forever():
        try:
            await asyncio.sleep(FAR)
        finally:
            events.append("task cancelled")

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append("asyncgen finalized")

    async def main():
        loop = asyncio.get_running_loop()
        asyncio.ensure_future(forever())
        gen = agen()
        await gen.__anext__()
        await loop.run_in_executor(None, time.sleep, 0)
        await asyncio.sleep(0)
        return loop, gen

    loop, _gen = run(main())
    assert sorted(events) == ["asyncgen finalized", "task cancelled"]
    assert loop.is_closed()
    with pytest.raises(RuntimeError):
        loop.run_in_executor(None, time.sleep, 0)


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need main thread"
)
def test_run_ctrl_c_cancels_main(run):
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")
    events = []

    async def main():
        try:
            threading.Timer(
                0.05, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)
            ).start()
            await asyncio.sleep(FAR)
        finally:
            events.append("main's finally ran")

    with pytest.raises(KeyboardInterrupt):
        run(main())
    assert events == ["main's finally ran"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.skipif(not PY311, reason="asyncio.Runner is new in 3.11")
def test_asyncio_runner_with_loop_factory(loop_factory):
    import contextvars

    var = contextvars.ContextVar("var", default="unset")

    async def first():
        var.set("kept between runs")
        return asyncio.get_running_loop()

    async def second():
        return asyncio.get_running_loop(), var.get()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        loop1 = runner.run(first())
        loop2, value = runner.run(second())
        assert runner.get_loop() is loop1 is loop2
    assert isinstance(loop1, ferroloop.Loop) is is_ferroloop(loop_factory)
    assert value == "kept between runs"
    assert loop1.is_closed()


@pytest.mark.skipif(not PY312, reason="asyncio.run(loop_factory=) is new in 3.12")
def test_asyncio_run_with_loop_factory(loop_factory):
    async def main():
        return asyncio.get_running_loop()

    loop = asyncio.run(main(), loop_factory=loop_factory)
    assert isinstance(loop, ferroloop.Loop) is is_ferroloop(loop_factory)
    assert loop.is_closed()


# --------------------------------------------------------------------------- the loop object


def test_loop_is_abstract_event_loop(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)


def test_loop_accepts_attributes(loop):
    loop.my_attribute = "mine"
    assert loop.my_attribute == "mine"
    del loop.my_attribute
    assert not hasattr(loop, "my_attribute")


def test_loop_repr(loop):
    r = repr(loop)
    assert "running=False" in r and "closed=False" in r
    loop.close()
    assert "closed=True" in repr(loop)


def test_unclosed_loop_resource_warning(loop_factory):
    holder = [loop_factory()]
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        drop_and_collect(holder)


def test_closed_loop_no_resource_warning(loop_factory):
    lp = loop_factory()
    lp.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        del lp
        gc.collect()


def test_subclass_overrides_are_used(loop_factory):
    # Libraries subclass the loop class; tasks must go through the overridden methods.
    base = ferroloop.Loop if is_ferroloop(loop_factory) else asyncio.SelectorEventLoop

    class Counting(base):  # type: ignore[misc,valid-type]
        def __init__(self):
            super().__init__()
            self.scheduled = 0

        def call_soon(self, callback, *args, context=None):
            self.scheduled += 1
            return super().call_soon(callback, *args, context=context)

    lp = Counting()
    try:

        async def main():
            await asyncio.sleep(0)
            return "done"

        assert lp.run_until_complete(main()) == "done"
        assert lp.scheduled >= 2  # the task's first step and its wake-up after sleep(0)
    finally:
        lp.close()


# --------------------------------------------------------------------------- ferroloop's own API


def test_ferroloop_only_all_names_exist():
    """FERROLOOP ONLY: the package's public names (the policy's only before 3.14, where
    asyncio drops its own policy names from `asyncio.__all__`)."""
    names = {"Loop", "install", "new_event_loop", "run"}
    names |= {"BlockingDetector", "BlockingReport", "detect_blocking", "dump_tasks"}
    if not POLICY_DEPRECATED:
        names.add("EventLoopPolicy")
    assert set(ferroloop.__all__) == names
    for name in ferroloop.__all__:
        assert getattr(ferroloop, name) is not None
    assert isinstance(ferroloop.__version__, str)
    assert ("DefaultEventLoopPolicy" in asyncio.__all__) == (not POLICY_DEPRECATED)


def test_ferroloop_only_new_event_loop_and_loop_class():
    """FERROLOOP ONLY: new_event_loop() and Loop() both make a fresh ferroloop loop."""
    a, b = ferroloop.new_event_loop(), ferroloop.Loop()
    try:
        assert type(a) is ferroloop.Loop and type(b) is ferroloop.Loop
        assert a is not b
        assert a.run_until_complete(asyncio.sleep(0, "a")) == "a"
        assert b.run_until_complete(asyncio.sleep(0, "b")) == "b"
    finally:
        a.close()
        b.close()


def test_ferroloop_only_install(restore_policy):
    """FERROLOOP ONLY: install() swaps the policy, so asyncio's own entry points make
    ferroloop loops (the fixture restores the previous policy)."""
    ferroloop.install()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
    assert isinstance(policy, ferroloop.EventLoopPolicy)
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    lp = asyncio.new_event_loop()
    try:
        assert isinstance(lp, ferroloop.Loop)
    finally:
        lp.close()

    async def main():
        return asyncio.get_running_loop()

    assert isinstance(asyncio.run(main()), ferroloop.Loop)


def test_ferroloop_only_policy_new_event_loop():
    """FERROLOOP ONLY: EventLoopPolicy makes ferroloop loops without being installed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = ferroloop.EventLoopPolicy()
    lp = policy.new_event_loop()
    try:
        assert isinstance(lp, ferroloop.Loop)
    finally:
        lp.close()


@pytest.mark.skipif(POLICY_DEPRECATED, reason="3.14 deprecates the policy system")
def test_ferroloop_only_no_deprecation_warning_before_314(restore_policy):
    """FERROLOOP ONLY: install()/EventLoopPolicy warn only where asyncio deprecates policies."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        ferroloop.install()
        ferroloop.EventLoopPolicy()


@pytest.mark.skipif(not POLICY_DEPRECATED, reason="asyncio deprecates policies from 3.14 on")
def test_ferroloop_only_policy_api_warns_where_asyncio_does(restore_policy):
    """FERROLOOP ONLY: on 3.14+, naming the policy class and install() warn, as naming
    asyncio.DefaultEventLoopPolicy and calling set_event_loop_policy() do (the oracle);
    making an instance of a class already named does not warn, in both."""
    with pytest.warns(DeprecationWarning, match="asyncio.DefaultEventLoopPolicy"):
        stock = asyncio.DefaultEventLoopPolicy
    with pytest.warns(DeprecationWarning, match="ferroloop.EventLoopPolicy"):
        ours = ferroloop.EventLoopPolicy
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        stock()
        ours()
    with pytest.warns(DeprecationWarning, match="set_event_loop_policy"):
        asyncio.set_event_loop_policy(stock())
    with pytest.warns(DeprecationWarning, match="ferroloop.install") as record:
        ferroloop.install()
    assert len(record) == 1
    assert record[0].filename == __file__  # attributed to the caller


NO_WARNING_SCRIPT = """
import asyncio, warnings
warnings.simplefilter("error")
import ferroloop

async def main():
    await asyncio.sleep(0)
    return asyncio.get_running_loop()

assert isinstance(ferroloop.run(main()), ferroloop.Loop)
loop = ferroloop.new_event_loop()
assert loop.run_until_complete(main()) is loop
loop.close()
if hasattr(asyncio, "Runner"):
    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        assert isinstance(runner.run(main()), ferroloop.Loop)
print("clean")
"""


def test_ferroloop_only_no_warning_without_deprecated_api(tmp_path):
    """FERROLOOP ONLY: importing ferroloop, run(), new_event_loop() and a Runner with its
    factory warn about nothing, on every version (warnings are errors here)."""
    script = tmp_path / "clean.py"
    script.write_text(NO_WARNING_SCRIPT)
    out = subprocess.run(
        [sys.executable, "-W", "error", str(script)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "clean\n"
    assert out.stderr == ""


def test_ferroloop_only_typing_files():
    """FERROLOOP ONLY: the package is typed (PEP 561) and its native core has a stub."""
    pkg = Path(ferroloop.__file__).parent
    assert (pkg / "py.typed").is_file()
    assert (pkg / "_core.pyi").is_file()


def test_ferroloop_only_native_core_is_this_interpreters():
    """FERROLOOP ONLY: the extension module was built for the running interpreter."""
    core = sys.modules["ferroloop._core"]
    tag = f"cpython-{sys.version_info[0]}{sys.version_info[1]}"
    assert tag in os.path.basename(core.__file__)
