"""asyncio behaviour that differs between CPython versions, on the stock loop (the oracle)
and on ferroloop: task-factory keywords, eager tasks (3.12+), `eager_start=` (3.14+),
call-graph introspection (3.14+), threadsafe handles, and 3.15's transport contexts.

Each test states the interpreter's own behaviour and runs on both loops of the same
interpreter, so the stock loop proves the expectation right on every version.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import sys
import threading
import time

import pytest

V = sys.version_info[:3]
PY312 = V >= (3, 12)
PY314 = V >= (3, 14)
PY315 = V >= (3, 15)
needs_312 = pytest.mark.skipif(not PY312, reason="eager tasks are new in 3.12")
needs_314 = pytest.mark.skipif(not PY314, reason="new in 3.14")

# 3.13.3 and 3.14+ hand every create_task keyword to the task factory (gh-128307);
# other versions give it only `context=` (3.13.4+: and keywords other than name).
FACTORY_GETS_ALL = PY314 or V == (3, 13, 3)

pytestmark = pytest.mark.timeout(60)


def recording_factory(calls: list[dict]):
    def factory(loop, coro, **kwargs):
        calls.append(kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    return factory


# --------------------------------------------------------------------------- task factories


def test_task_factory_keywords(loop):
    calls: list[dict] = []
    loop.set_task_factory(recording_factory(calls))
    # context= is new in 3.11.
    ctx_kw = {"context": contextvars.copy_context()} if V >= (3, 11) else {}

    async def main():
        t1 = asyncio.create_task(asyncio.sleep(0))
        t2 = asyncio.create_task(asyncio.sleep(0), name="n2")
        t3 = loop.create_task(asyncio.sleep(0), name="n3", **ctx_kw)
        await asyncio.gather(t1, t2, t3)
        return t2.get_name(), t3.get_name()

    assert loop.run_until_complete(main()) == ("n2", "n3")
    if FACTORY_GETS_ALL:
        assert calls[1:] == [{}, {"name": "n2"}, {"name": "n3", **ctx_kw}]
    else:
        # The name is set on the task afterwards; the factory sees only a context.
        assert calls[1:] == [{}, {}, ctx_kw]


@pytest.mark.skipif(FACTORY_GETS_ALL or V >= (3, 13, 4), reason="takes any keyword here")
def test_create_task_rejects_unknown_keywords(loop):
    coro = asyncio.sleep(0)
    with pytest.raises(TypeError):
        loop.create_task(coro, eager_start=True)
    coro.close()


# --------------------------------------------------------------------------- eager tasks


@needs_312
def test_eager_task_factory_runs_synchronously(loop):
    events = []

    async def child(tag):
        events.append(f"{tag} start")
        if tag == "blocks":
            await asyncio.sleep(0)
        events.append(f"{tag} end")
        return tag

    async def main():
        loop.set_task_factory(asyncio.eager_task_factory)
        done = asyncio.create_task(child("sync"))
        # An eager task that never blocks is done before create_task returns.
        assert done.done() and done.result() == "sync"
        pending = asyncio.create_task(child("blocks"))
        assert not pending.done()
        events.append("main")
        assert await pending == "blocks"
        assert asyncio.current_task() in asyncio.all_tasks()

    loop.run_until_complete(main())
    assert events == ["sync start", "sync end", "blocks start", "main", "blocks end"]


@needs_312
def test_create_eager_task_factory_and_current_task(loop):
    seen = []

    class MyTask(asyncio.Task):
        pass

    async def child():
        seen.append(type(asyncio.current_task()).__name__)
        await asyncio.sleep(0)
        seen.append(asyncio.current_task().get_name())

    async def main():
        loop.set_task_factory(asyncio.create_eager_task_factory(MyTask))
        task = asyncio.create_task(child(), name="eager-child")
        assert isinstance(task, MyTask)
        await task

    loop.run_until_complete(main())
    assert seen == ["MyTask", "eager-child"]


@needs_314
def test_create_task_eager_start(loop):
    order = []

    async def child():
        order.append("child")

    async def main():
        t = loop.create_task(child(), eager_start=True)
        order.append("after create_task")
        await t
        t2 = asyncio.create_task(child(), eager_start=False)
        order.append("after lazy create_task")
        await t2

    loop.run_until_complete(main())
    assert order == ["child", "after create_task", "after lazy create_task", "child"]


# --------------------------------------------------------------------------- call graphs


@needs_314
def test_capture_and_print_call_graph(loop):
    async def leaf(ready, release):
        ready.set()
        await release.wait()

    async def middle(ready, release):
        await leaf(ready, release)

    async def main():
        ready, release = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(middle(ready, release), name="worker")
            await ready.wait()
            graph = asyncio.capture_call_graph(task)
            out = io.StringIO()
            asyncio.print_call_graph(task, file=out)
            release.set()
        return graph, out.getvalue()

    graph, text = loop.run_until_complete(main())
    assert graph is not None and graph.future.get_name() == "worker"
    names = [entry.frame.f_code.co_name for entry in graph.call_stack]
    assert names[:3] == ["wait", "leaf", "middle"]  # Event.wait, then our coroutines
    awaiter = graph.awaited_by[0].future
    assert isinstance(awaiter, asyncio.Task)
    assert "worker" in text and "middle" in text and "leaf" in text


@needs_314
def test_capture_call_graph_of_current_task(loop):
    async def main():
        return asyncio.capture_call_graph()

    graph = loop.run_until_complete(main())
    assert graph is not None
    assert graph.call_stack[0].frame.f_code.co_name == "main"


# --------------------------------------------------------------------------- threadsafe handles


def test_threadsafe_handle_cancel_waits_for_running_callback(loop):
    """A cancel() from another thread while the callback runs waits until it is done
    and does not stop it (asyncio's _ThreadSafeHandle, 3.12.8/3.13.1+; ferroloop on every
    version, as the stock loop of older versions has the race)."""
    if not hasattr(asyncio.events, "_ThreadSafeHandle") and loop_is_stock(loop):
        pytest.skip("this interpreter's stock loop lets cancel() race with the callback")
    started, finished = threading.Event(), threading.Event()
    results = []

    def callback():
        started.set()
        time.sleep(0.3)  # releases the GIL: the other thread's cancel() may run now
        results.append("ran")
        finished.set()

    def other_thread():
        handle = loop.call_soon_threadsafe(callback)
        started.wait(10)
        before = handle.cancelled()
        finished_when_checked = finished.is_set()
        handle.cancel()
        results.append(("checked", before, finished_when_checked, finished.is_set()))
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=other_thread)
    t.start()
    loop.run_forever()
    t.join(10)
    assert results == ["ran", ("checked", False, True, True)]


def test_threadsafe_handle_cancelled_before_running(loop):
    ran = []
    gate = threading.Event()

    def other_thread():
        handle = loop.call_soon_threadsafe(ran.append, "no")
        handle.cancel()
        assert handle.cancelled()
        gate.set()
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(gate.wait, 10)  # the loop is busy until the handle is cancelled
    t = threading.Thread(target=other_thread)
    t.start()
    loop.run_forever()
    t.join(10)
    assert ran == []


def test_threadsafe_handle_cancels_itself(loop):
    """A callback that cancels its own handle is not blocked (same thread) and runs on."""
    box = []
    done = []

    def callback():
        box[0].cancel()
        done.append(box[0].cancelled())
        loop.stop()

    box.append(loop.call_soon_threadsafe(callback))
    loop.run_forever()
    assert done == [True]


def loop_is_stock(loop) -> bool:
    return type(loop).__module__.startswith("asyncio")


# --------------------------------------------------------------------------- 3.15 contexts


CV: contextvars.ContextVar[str] = contextvars.ContextVar("CV", default="unset")


class ContextProtocol(asyncio.Protocol):
    """Sets CV in connection_made and records what later callbacks see."""

    def __init__(self, seen: list, lost: asyncio.Future, tag: str) -> None:
        self.seen, self.lost, self.tag = seen, lost, tag

    def connection_made(self, transport):
        self.transport = transport
        self.seen.append((self.tag, "made", CV.get()))
        CV.set(f"{self.tag}-made")

    def data_received(self, data):
        self.seen.append((self.tag, "data", CV.get()))
        if self.tag == "server":
            self.transport.write(data)
            self.transport.close()

    def connection_lost(self, exc):
        self.seen.append((self.tag, "lost", CV.get()))
        if not self.lost.done():
            self.lost.set_result(None)


def test_protocol_callbacks_context(loop):
    """3.15+ runs a transport's protocol callbacks in one context, copied when the
    connection was made (gh-? in 3.15's selector_events: a value set in
    connection_made is seen by data_received); earlier versions run each callback in a
    copy of the context current when it was scheduled."""

    async def main():
        seen: list = []
        server_lost = loop.create_future()
        client_lost = loop.create_future()
        CV.set("server-creator")
        server = await loop.create_server(
            lambda: ContextProtocol(seen, server_lost, "server"), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        CV.set("client-creator")
        transport, _ = await loop.create_connection(
            lambda: ContextProtocol(seen, client_lost, "client"), "127.0.0.1", port
        )
        CV.set("writer")
        transport.write(b"ping")
        await asyncio.wait_for(asyncio.gather(server_lost, client_lost), 10)
        server.close()
        await server.wait_closed()
        return seen

    seen = loop.run_until_complete(asyncio.wait_for(main(), 30))
    by = {(tag, what): value for tag, what, value in seen}
    if PY315:
        assert by[("client", "made")] == "client-creator"
        assert by[("client", "data")] == "client-made"
        assert by[("client", "lost")] == "client-made"
        assert by[("server", "made")] == "server-creator"
        assert by[("server", "data")] == "server-made"
    else:
        assert by[("client", "made")] == "client-creator"
        assert by[("client", "data")] == "client-creator"
        assert by[("server", "data")] != "server-made"


PS_PROGRAM = """
import asyncio, sys

async def worker():
    await asyncio.sleep(60)

async def main():
    async with asyncio.TaskGroup() as tg:
        tg.create_task(worker(), name="w1")
        tg.create_task(worker(), name="w2")
        await asyncio.sleep(0)
        print("ready", flush=True)

if sys.argv[1] == "ferroloop":
    import ferroloop
    ferroloop.run(main())
else:
    asyncio.run(main())
"""


@needs_314
@pytest.mark.parametrize("command", ["ps", "pstree"])
def test_asyncio_ps_and_pstree_on_a_running_program(tmp_path, loop_name, command):
    """`python -m asyncio ps|pstree PID` reads the tasks of a running program (3.14's
    remote introspection of the C Task): the same tree on both loops."""
    import re
    import subprocess

    script = tmp_path / "app.py"
    script.write_text(PS_PROGRAM)
    proc = subprocess.Popen(
        [sys.executable, str(script), loop_name], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        out = subprocess.run(
            [sys.executable, "-m", "asyncio", command, str(proc.pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        proc.kill()
        proc.wait()
    if out.returncode != 0 and "ermission" in out.stderr:
        pytest.skip(f"no permission to read another process here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    text = re.sub(r"0x[0-9a-f]+", "ADDR", out.stdout)
    assert "w1" in text and "w2" in text and "worker" in text and "main" in text
    if command == "pstree":
        assert text.count("sleep") == 2
        assert "TaskGroup" in text


@pytest.fixture(params=["asyncio", "ferroloop"])
def loop_name(request):
    return request.param
