"""One measurement: `python benchmarks/worker.py LOOP BENCH N`.

Runs benchmark BENCH with size N on a fresh loop of kind LOOP and prints one JSON line
{"time": seconds, "info": {...}} on stdout. `run.py` starts one of these per measurement,
so no measurement inherits another's heap, executor threads or loop state.

Every benchmark creates its loop first (outside the timed region), times only the
measured region with time.perf_counter, and checks that the work was really done
(counts, order) before reporting, so a loop that drops callbacks cannot look fast.
A small warm-up run on a separate loop comes first, so lazy imports and first-call
costs (asyncio.queues, the executor's threads in their own loop, ...) are not timed.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import random
import sys
import threading
from collections.abc import Callable
from time import perf_counter as _wall
from time import process_time as _cpu
from typing import Any

Loop = asyncio.AbstractEventLoop

# FERROLOOP_BENCH_CLOCK=cpu (run.py --clock cpu): time the CPU the process spent (all its
# threads) instead of the wall clock, which on a shared machine also counts the time other
# processes held the CPU.
perf_counter = _cpu if os.environ.get("FERROLOOP_BENCH_CLOCK") == "cpu" else _wall


# -- the loops ---------------------------------------------------------------------------


def make_loop(kind: str) -> Loop:
    if kind == "asyncio":
        return asyncio.new_event_loop()
    if kind == "ferroloop":
        import ferroloop

        return ferroloop.new_event_loop()
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if kind == "rloop":
        import rloop

        return rloop.new_event_loop()
    if kind == "rsloop":
        import rsloop  # type: ignore[import-not-found]

        return rsloop.new_event_loop()  # type: ignore[no-any-return]
    if kind == "blazio":
        import blazio  # type: ignore[import-not-found]

        return blazio.new_event_loop()  # type: ignore[no-any-return]
    if kind == "talyn":
        import talyn  # type: ignore[import-not-found]

        return talyn.Loop()  # type: ignore[no-any-return]
    if kind == "loopmini":
        import loopmini  # type: ignore[import-not-found]

        return loopmini.new_event_loop()  # type: ignore[no-any-return]
    raise SystemExit(f"unknown loop {kind!r}")


class Result:
    """What a benchmark body returns: the elapsed time and optional extra facts."""

    def __init__(self, seconds: float, **info: Any) -> None:
        self.seconds = seconds
        self.info = info


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def timed_run_forever(loop: Loop) -> float:
    t0 = perf_counter()
    loop.run_forever()
    return perf_counter() - t0


def timed_run_until_complete(loop: Loop, coro: Any) -> float:
    t0 = perf_counter()
    loop.run_until_complete(coro)
    return perf_counter() - t0


# -- 1. call_soon ------------------------------------------------------------------------


def call_soon_flood(loop: Loop, n: int) -> Result:
    """n callbacks, scheduled in batches of 10k by a callback, so each loop iteration
    runs 10k handles (the ready queue never holds all n at once)."""
    batch = min(10_000, n)
    nbatches = n // batch
    counter = itertools.count()
    cb = counter.__next__  # a C callable: the time is the loop's, not the callback's
    call_soon = loop.call_soon
    done = [0]

    def next_batch() -> None:
        if done[0] == nbatches:
            loop.stop()
            return
        done[0] += 1
        for _ in range(batch):
            call_soon(cb)
        call_soon(next_batch)

    loop.call_soon(next_batch)
    t = timed_run_forever(loop)
    check(next(counter) == nbatches * batch, "callbacks lost")
    return Result(t)


def call_soon_chain(loop: Loop, n: int) -> Result:
    """n callbacks, each scheduling the next: one handle per loop iteration, so this
    is the cost of an iteration (poll decision, timers check, one dispatch)."""
    remaining = [n]
    call_soon = loop.call_soon

    def step() -> None:
        remaining[0] -= 1
        if remaining[0]:
            call_soon(step)
        else:
            loop.stop()

    loop.call_soon(step)
    t = timed_run_forever(loop)
    check(remaining[0] == 0, "chain broken")
    return Result(t)


# -- 2. timers ---------------------------------------------------------------------------


def call_later_cancel(loop: Loop, n: int) -> Result:
    """n timers with random delays in [0, 1 ms), half of them (random ones) cancelled,
    run until the other half has fired. The delays are shorter than the time it takes
    to schedule n timers, so this times timer-heap work, not waiting."""
    rng = random.Random(1234)
    delays = [rng.random() * 0.001 for _ in range(n)]
    cancel = rng.sample(range(n), n // 2)
    expected = n - n // 2
    fired = [0]

    def cb() -> None:
        fired[0] += 1
        if fired[0] == expected:
            loop.stop()

    def setup() -> None:
        call_later = loop.call_later
        handles = [call_later(d, cb) for d in delays]
        for i in cancel:
            handles[i].cancel()

    loop.call_soon(setup)
    t = timed_run_forever(loop)
    check(fired[0] == expected, "timers lost or cancelled ones fired")
    return Result(t)


def timeouts_cancelled(loop: Loop, n: int) -> Result:
    """The timeout pattern: n timers of 10 s, 100 scheduled per loop iteration, each
    cancelled one iteration later (the guarded operation finished in time). None fire;
    the loop must schedule, cancel and discard them without the heap piling up."""
    batch = 100
    nbatches = n // batch
    call_later = loop.call_later
    call_soon = loop.call_soon
    state: dict[str, Any] = {"left": nbatches, "prev": []}
    fired = [0]

    def cb() -> None:
        fired[0] += 1

    def step() -> None:
        for h in state["prev"]:
            h.cancel()
        if state["left"] == 0:
            loop.stop()
            return
        state["left"] -= 1
        state["prev"] = [call_later(10.0, cb) for _ in range(batch)]
        call_soon(step)

    loop.call_soon(step)
    t = timed_run_forever(loop)
    check(fired[0] == 0 and state["left"] == 0, "timeouts fired or steps lost")
    return Result(t)


def call_at_order(loop: Loop, n: int) -> Result:
    """n call_at timers with deadlines drawn from 1000 distinct values within 1 ms
    (so many are equal), all due by the time scheduling ends. Counts, without failing,
    adjacent pairs run out of deadline order (a loop with millisecond timer resolution
    runs all of them in scheduling order) and equal-deadline pairs not run in
    scheduling (FIFO) order (heapq is not stable, so the stock loop has many)."""
    rng = random.Random(99)
    offsets = [rng.randrange(1000) * 1e-6 for _ in range(n)]
    out: list[int] = []
    append = out.append

    def cb(i: int) -> None:
        append(i)
        if len(out) == n:
            loop.stop()

    def setup() -> None:
        call_at = loop.call_at
        base = loop.time()
        for i, off in enumerate(offsets):
            call_at(base + off, cb, i)

    loop.call_soon(setup)
    t = timed_run_forever(loop)
    check(len(out) == n, "timers lost")
    pairs = list(itertools.pairwise(out))
    out_of_order = sum(1 for a, b in pairs if offsets[a] > offsets[b])
    not_fifo = sum(1 for a, b in pairs if offsets[a] == offsets[b] and a > b)
    return Result(t, out_of_deadline_order=out_of_order, equal_deadline_not_fifo=not_fifo)


# -- 3. tasks ----------------------------------------------------------------------------


async def _noop() -> None:
    pass


def create_task_gather(loop: Loop, n: int) -> Result:
    """n loop.create_task() of a trivial coroutine, then one gather of all of them."""

    async def main() -> int:
        create_task = loop.create_task
        tasks = [create_task(_noop()) for _ in range(n)]
        return len(await asyncio.gather(*tasks))

    fut = loop.create_task(main())
    t = timed_run_until_complete(loop, fut)
    check(fut.result() == n, "tasks lost")
    return Result(t)


def small_gathers(loop: Loop, n: int) -> Result:
    """n/10 gathers, one after the other, of 10 trivial coroutines each (gather wraps
    each coroutine in a task): n tasks, with the loop going idle-to-busy often."""

    async def main() -> int:
        gather = asyncio.gather
        total = 0
        for _ in range(n // 10):
            r = await gather(
                _noop(), _noop(), _noop(), _noop(), _noop(),
                _noop(), _noop(), _noop(), _noop(), _noop(),
            )  # fmt: skip
            total += len(r)
        return total

    fut = loop.create_task(main())
    t = timed_run_until_complete(loop, fut)
    check(fut.result() == (n // 10) * 10, "tasks lost")
    return Result(t)


def sleep0(loop: Loop, n: int) -> Result:
    """100 tasks, each doing n/100 `await asyncio.sleep(0)`: n task switches."""
    k = 100
    m = n // k

    async def worker() -> int:
        sleep = asyncio.sleep
        for _ in range(m):
            await sleep(0)
        return m

    async def main() -> int:
        return sum(await asyncio.gather(*[worker() for _ in range(k)]))

    fut = loop.create_task(main())
    t = timed_run_until_complete(loop, fut)
    check(fut.result() == k * m, "switches lost")
    return Result(t)


def future_roundtrip(loop: Loop, n: int) -> Result:
    """One task, n times: loop.create_future(), call_soon(fut.set_result, i), await it."""

    async def main() -> int:
        create_future = loop.create_future
        call_soon = loop.call_soon
        total = 0
        for i in range(n):
            fut = create_future()
            call_soon(fut.set_result, i)
            total += await fut
        return total

    fut = loop.create_task(main())
    t = timed_run_until_complete(loop, fut)
    check(fut.result() == n * (n - 1) // 2, "wrong results")
    return Result(t)


# -- 5./6. primitives --------------------------------------------------------------------


def queue(loop: Loop, n: int) -> Result:
    """One producer and one consumer through asyncio.Queue(maxsize=1): n items, every
    put or get of one of them waits for the other side (the most loop-bound setting)."""

    async def main() -> int:
        q: asyncio.Queue[int] = asyncio.Queue(maxsize=1)

        async def producer() -> None:
            put = q.put
            for i in range(n):
                await put(i)

        async def consumer() -> int:
            get = q.get
            total = 0
            for _ in range(n):
                total += await get()
            return total

        _, total = await asyncio.gather(producer(), consumer())
        return total

    fut = loop.create_task(main())
    t = timed_run_until_complete(loop, fut)
    check(fut.result() == n * (n - 1) // 2, "items lost")
    return Result(t)


def lock(loop: Loop, n: int) -> Result:
    """10 tasks contending on one asyncio.Lock, n acquisitions in all; each holds the
    lock across an `await asyncio.sleep(0)`, so the other nine are always queued."""
    k = 10
    m = n // k

    async def main() -> int:
        lk = asyncio.Lock()
        held = [0]

        async def worker() -> None:
            sleep = asyncio.sleep
            for _ in range(m):
                async with lk:
                    held[0] += 1
                    await sleep(0)

        await asyncio.gather(*[worker() for _ in range(k)])
        return held[0]

    fut = loop.create_task(main())
    t = timed_run_until_complete(loop, fut)
    check(fut.result() == k * m, "acquisitions lost")
    return Result(t)


# -- 7./8. threads -----------------------------------------------------------------------


def threadsafe(loop: Loop, n: int) -> Result:
    """4 threads each calling loop.call_soon_threadsafe(cb) n/4 times as fast as they
    can; the loop counts the callbacks and stops at the total. Threads are started
    beforehand and released by the running loop."""
    nthreads = 4
    per = n // nthreads
    total = per * nthreads
    count = [0]

    def cb() -> None:
        count[0] += 1
        if count[0] == total:
            loop.stop()

    go = threading.Event()

    def producer() -> None:
        go.wait()
        cst = loop.call_soon_threadsafe
        for _ in range(per):
            cst(cb)

    threads = [threading.Thread(target=producer) for _ in range(nthreads)]
    for th in threads:
        th.start()
    loop.call_soon(go.set)
    t = timed_run_forever(loop)
    for th in threads:
        th.join()
    check(count[0] == total, "thread-safe callbacks lost")
    return Result(t)


def _small_function(x: int) -> int:
    return x + 1


def run_in_executor(loop: Loop, n: int) -> Result:
    """n small functions through the default executor, 64 in flight at a time
    (gathers of 64). The executor's threads are started before the timed region."""
    window = 64

    async def warm() -> None:
        await asyncio.gather(
            *[loop.run_in_executor(None, _small_function, i) for i in range(window)]
        )

    async def main() -> int:
        rie = loop.run_in_executor
        gather = asyncio.gather
        total = 0
        for _ in range(n // window):
            rs = await gather(*[rie(None, _small_function, i) for i in range(window)])
            total += sum(rs)
        return total

    loop.run_until_complete(warm())
    fut = loop.create_task(main())
    t = timed_run_until_complete(loop, fut)
    expected = (n // window) * sum(range(1, window + 1))
    check(fut.result() == expected, "executor results lost")
    return Result(t)


BENCHES: dict[str, Callable[[Loop, int], Result]] = {
    "call_soon_flood": call_soon_flood,
    "call_soon_chain": call_soon_chain,
    "call_later_cancel": call_later_cancel,
    "timeouts_cancelled": timeouts_cancelled,
    "call_at_order": call_at_order,
    "create_task_gather": create_task_gather,
    "small_gathers": small_gathers,
    "sleep0": sleep0,
    "future_roundtrip": future_roundtrip,
    "queue": queue,
    "lock": lock,
    "threadsafe": threadsafe,
    "run_in_executor": run_in_executor,
}


def measure(kind: str, bench: str, n: int, warmup: bool = True, gc_enabled: bool = True) -> Result:
    body = BENCHES[bench]
    if warmup:
        wl = make_loop(kind)
        try:
            body(wl, max(n // 20, 1000))
        finally:
            wl.close()
        del wl
    loop = make_loop(kind)
    # FERROLOOP_BENCH_DETECT=SECONDS (run.py --detector): ferroloop's blocking detector
    # watches the measured loop.
    detect = os.environ.get("FERROLOOP_BENCH_DETECT")
    detector = None
    if detect and kind == "ferroloop":
        import ferroloop

        detector = ferroloop.detect_blocking(loop, float(detect))  # type: ignore[attr-defined]
    try:
        gc.collect()
        before = [g["collections"] for g in gc.get_stats()]
        if not gc_enabled:
            gc.disable()
        r = body(loop, n)
        gc.enable()
        after = [g["collections"] for g in gc.get_stats()]
        # Collections of generations 0, 1, 2 during the benchmark (its setup included).
        r.info["gc_collections"] = [b - a for a, b in zip(before, after)]
        if detector is not None:
            r.info["blocking_reports"] = detector.reports
        return r
    finally:
        gc.enable()
        loop.close()  # stops the detector


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit("usage: worker.py LOOP BENCH N")
    kind, bench, n = argv[0], argv[1], int(argv[2])
    if bench not in BENCHES:
        raise SystemExit(f"unknown benchmark {bench!r}")
    # FERROLOOP_BENCH_NO_GC=1 (run.py --no-gc): cyclic GC off during the measured run,
    # a diagnostic showing how much of a row's time is the collector's.
    r = measure(kind, bench, n, gc_enabled=os.environ.get("FERROLOOP_BENCH_NO_GC") != "1")
    print(json.dumps({"time": r.seconds, "info": r.info}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
