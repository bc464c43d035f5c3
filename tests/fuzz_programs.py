"""Random loop programs for the differential fuzz (tests/test_fuzz_differential.py): a
program is a list of operations (call_soon/call_later/call_at/cancel, tasks, gather,
wait_for, Event, Queue, call_soon_threadsafe from a thread) that `run()` interprets on a
loop, returning the trace of what ran, in order, with its results.

Time is virtual, so a program's trace does not depend on the machine's speed: the loop's
`time()` is replaced on the instance (as test tools do) by a clock that a ticking
callback advances by one quantum per iteration; the tick also keeps the poll timeout at
zero, so nothing waits for real. Every delay carries a distinct sub-quantum offset (its
creation number), so no two deadlines are equal: ties are broken by creation order, as
asyncio, whose heap gives equal deadlines no order, needs for a comparison.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

Q = 0.001  # one iteration of virtual time
EPS = 1e-7  # the offset per creation number (programs stay far below Q / EPS)


@dataclass(frozen=True)
class Op:
    kind: str
    a: int = 0
    b: int = 0


@dataclass
class _State:
    loop: asyncio.AbstractEventLoop
    trace: list[tuple[Any, ...]] = field(default_factory=list)
    ticks: int = 0
    seq: int = 0
    handles: list[Any] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    events: list[asyncio.Event] = field(default_factory=list)
    queues: list[asyncio.Queue[int]] = field(default_factory=list)
    done: bool = False

    def now(self) -> float:
        return self.ticks * Q

    def delay(self, quanta: int) -> float:
        self.seq += 1
        return quanta * Q + self.seq * EPS

    def rec(self, *what: Any) -> None:
        self.trace.append((self.ticks, *what))


def _tick(st: _State) -> None:
    st.ticks += 1
    if not st.done:
        st.loop.call_soon(_tick, st)


async def _worker(st: _State, i: int, steps: int) -> int:
    for s in range(steps):
        st.rec("task", i, s)
        await asyncio.sleep(0)
    return i * 10 + steps


async def _sleeper(st: _State, i: int, delay: float) -> int:
    await asyncio.sleep(delay)
    st.rec("slept", i)
    return i


async def _failer(st: _State, i: int) -> int:
    await asyncio.sleep(0)
    st.rec("fail", i)
    raise ValueError(i)


async def _waiter(st: _State, i: int, ev: asyncio.Event) -> int:
    await ev.wait()
    st.rec("woke", i)
    return i


async def _consumer(st: _State, i: int, q: asyncio.Queue[int], n: int) -> list[int]:
    got = []
    for _ in range(n):
        got.append(await q.get())
        st.rec("got", i, got[-1])
    return got


def _result(r: Any) -> Any:
    return r if isinstance(r, (int, list)) else type(r).__name__


def _from_thread(st: _State, i: int) -> None:
    # The thread queues its callback and is joined before the program goes on, so the
    # callback's place among the others does not depend on the thread's speed.
    t = threading.Thread(target=st.loop.call_soon_threadsafe, args=(st.rec, "threadsafe", i))
    t.start()
    t.join()


async def _main(st: _State, program: list[Op]) -> None:
    loop = st.loop
    for n, op in enumerate(program):
        k, a, b = op.kind, op.a, op.b
        if k == "soon":
            st.handles.append(loop.call_soon(st.rec, "soon", n))
        elif k == "later":
            st.handles.append(loop.call_later(st.delay(a), st.rec, "later", n))
        elif k == "at":
            st.handles.append(loop.call_at(st.now() + st.delay(a), st.rec, "at", n))
        elif k == "cancel" and st.handles:
            st.handles[a % len(st.handles)].cancel()
        elif k == "task":
            st.tasks.append(loop.create_task(_worker(st, n, a % 5)))
        elif k == "sleeper":
            st.tasks.append(loop.create_task(_sleeper(st, n, st.delay(a))))
        elif k == "failer":
            st.tasks.append(loop.create_task(_failer(st, n)))
        elif k == "cancel_task" and st.tasks:
            st.tasks[a % len(st.tasks)].cancel()
        elif k == "gather" and st.tasks:
            picked = st.tasks[-(1 + a % len(st.tasks)) :]
            try:
                res = await asyncio.wait_for(
                    asyncio.shield(asyncio.gather(*picked, return_exceptions=True)),
                    st.delay(30),
                )
                st.rec("gathered", n, [_result(r) for r in res])
            except asyncio.TimeoutError:
                st.rec("gathered", n, "timeout")
        elif k == "wait_for":
            try:
                r = await asyncio.wait_for(_sleeper(st, n, st.delay(a)), st.delay(b))
                st.rec("wait_for", n, r)
            except asyncio.TimeoutError:
                st.rec("wait_for", n, "timeout")
        elif k == "event":
            ev = asyncio.Event()
            st.events.append(ev)
            st.tasks.append(loop.create_task(_waiter(st, n, ev)))
        elif k == "set" and st.events:
            st.events[a % len(st.events)].set()
        elif k == "queue":
            q: asyncio.Queue[int] = asyncio.Queue(maxsize=1 + b % 3)
            st.queues.append(q)
            st.tasks.append(loop.create_task(_consumer(st, n, q, 1 + a % 3)))
        elif k == "put" and st.queues:
            try:
                await asyncio.wait_for(st.queues[a % len(st.queues)].put(n), st.delay(b % 5))
                st.rec("put", n)
            except asyncio.TimeoutError:
                st.rec("put", n, "timeout")
        elif k == "threadsafe":
            _from_thread(st, n)
        elif k == "yield":
            for _ in range(1 + a % 3):
                await asyncio.sleep(0)
        elif k == "sleep":
            await asyncio.sleep(st.delay(a))
            st.rec("main-slept", n)
    # Let whatever can still finish finish: every event set, every queue fed.
    for ev in st.events:
        ev.set()
    for _ in range(3):
        for q in st.queues:
            if not q.full():
                q.put_nowait(-1)
        await asyncio.sleep(0)
    try:
        res = await asyncio.wait_for(
            asyncio.gather(*st.tasks, return_exceptions=True), st.delay(50)
        )
        st.rec("end", [_result(r) for r in res])
    except asyncio.TimeoutError:
        st.rec("end", "timeout")
    await asyncio.sleep(st.delay(25))


def run(loop: asyncio.AbstractEventLoop, program: list[Op]) -> list[tuple[Any, ...]]:
    """Interprets `program` on `loop` (which is left open); returns the trace."""
    st = _State(loop)
    loop.time = st.now  # type: ignore[method-assign]
    loop.call_soon(_tick, st)
    try:
        loop.run_until_complete(asyncio.wait_for(_main(st, program), 10_000 * Q))
    finally:
        st.done = True
        del loop.time  # type: ignore[method-assign]
        loop.run_until_complete(asyncio.sleep(0))
    return st.trace


KINDS = (
    "soon",
    "later",
    "at",
    "cancel",
    "task",
    "sleeper",
    "failer",
    "cancel_task",
    "gather",
    "wait_for",
    "event",
    "set",
    "queue",
    "put",
    "threadsafe",
    "yield",
    "sleep",
)
