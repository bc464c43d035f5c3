"""Soak tests, on the stock loop and on ferroloop: resident memory stays flat over many
callbacks, timers and connections, file descriptors come back to where they started, and
10,000 connections can be open at once.

Sizes: quick ones by default (they run in `make test`, ~10 s on both loops, 10,000
concurrent connections included); FERROLOOP_SOAK=1 (`make soak`) runs the full ones: 1M
callbacks, 200k timers, 50k connections. With FERROLOOP_SOAK_REPORT=path each test
appends its figures there as JSON lines. RSS is read after a warm-up round, so the pools,
free lists and allocator arenas the work needs are already there; what grows after that
is drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Iterator

import pytest
from helpers import LOCAL, run

SOAK = os.environ.get("FERROLOOP_SOAK") == "1"
REPORT = os.environ.get("FERROLOOP_SOAK_REPORT")
PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1024 * 1024


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def report(loop: asyncio.AbstractEventLoop, what: str, **figures: object) -> None:
    if REPORT:
        name = "ferroloop" if type(loop).__module__.startswith("ferroloop") else "asyncio"
        with open(REPORT, "a") as f:
            f.write(json.dumps({"test": what, "loop": name, **figures}) + "\n")


@contextlib.contextmanager
def nofile_at_least(need: int) -> Iterator[None]:
    """Raises RLIMIT_NOFILE to `need` for the block (the hard limit too, where the
    process may: root); skips the test where it cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(need, hard)))
        except (ValueError, OSError):
            pytest.skip(f"needs {need} file descriptors, RLIMIT_NOFILE hard limit is {hard}")
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def drift_over(loop, rounds: int, one_round) -> tuple[int, int]:
    """Runs `one_round` once to warm up, then `rounds` times; RSS before and after."""
    one_round()
    gc.collect()
    before = rss()
    for _ in range(rounds):
        one_round()
    gc.collect()
    return before, rss()


@pytest.mark.timeout(600)
def test_rss_flat_over_callbacks(loop):
    total = 1_000_000 if SOAK else 200_000
    wave = 10_000
    count = [0]

    def cb():
        count[0] += 1

    def one_round():
        for _ in range(wave):
            loop.call_soon(cb)
        loop.call_soon(loop.stop)
        loop.run_forever()

    before, after = drift_over(loop, total // wave, one_round)
    report(loop, "callbacks", n=total, rss_before=before, rss_after=after)
    assert count[0] == total + wave
    assert after - before < 8 * MiB


@pytest.mark.timeout(600)
def test_rss_flat_over_timers(loop):
    total = 200_000 if SOAK else 40_000
    wave = 5_000
    fired = [0]

    def cb():
        fired[0] += 1

    def one_round():
        handles = [loop.call_later(0.0001 * (i % 10), cb) for i in range(wave)]
        for h in handles[::2]:
            h.cancel()
        del handles
        loop.call_later(0.002, loop.stop)
        loop.run_forever()

    before, after = drift_over(loop, total // wave, one_round)
    report(loop, "timers", n=total, rss_before=before, rss_after=after)
    assert fired[0] == (total + wave) // 2
    assert after - before < 8 * MiB


@pytest.mark.timeout(900)
def test_rss_and_fds_flat_over_connections(loop):
    total = 50_000 if SOAK else 4_000
    batch = 200

    class Echo(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr

        def data_received(self, data):
            self.tr.write(data)

    async def main():
        server = await loop.create_server(Echo, LOCAL, 0, backlog=512)
        port = server.sockets[0].getsockname()[1]

        async def one(i: int) -> None:
            reader, writer = await asyncio.open_connection(LOCAL, port)
            if i % 20 == 0:
                peak[0] = max(peak[0], open_fds())
            writer.write(b"%d\n" % i)
            assert await reader.readline() == b"%d\n" % i
            writer.close()
            await writer.wait_closed()

        async def wave() -> None:
            await asyncio.gather(*(one(i) for i in range(batch)))
            await asyncio.sleep(0.01)  # the server's side of each close

        peak = [0]
        await wave()
        gc.collect()
        fds, before = open_fds(), rss()
        for _ in range(total // batch):
            await wave()
        server.close()
        await server.wait_closed()
        gc.collect()
        return fds, before, open_fds(), rss(), peak[0]

    with nofile_at_least(4 * batch + 256):
        fds, before, fds_after, after, peak = run(loop, main(), timeout=800)
    report(
        loop,
        "connections",
        n=total,
        rss_before=before,
        rss_after=after,
        fds_before=fds,
        fds_after=fds_after,
        fds_peak=peak,
    )
    assert peak > fds + batch  # a wave's connections were open at once
    assert fds_after <= fds  # the server's socket is gone too
    assert after - before < 16 * MiB


# The clients of test_10000_concurrent_connections, in a process of their own (20,000 fds
# in one process are past the hard limit here): the stock loop opens n connections, 200 at
# a time, and once all are open sends a line on each and reads it back.
CLIENTS = """
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, n = int(sys.argv[1]), int(sys.argv[2])
async def main():
    gate, opened, all_open = asyncio.Semaphore(200), [0], asyncio.Event()
    async def client(i):
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened[0] += 1
        if opened[0] == n:
            all_open.set()
        await all_open.wait()
        writer.write(b"%d\\n" % i)
        assert await reader.readline() == b"%d\\n" % i
        writer.close()
        await writer.wait_closed()
    await asyncio.gather(*(client(i) for i in range(n)))
asyncio.run(main())
"""


@pytest.mark.timeout(900)
def test_10000_concurrent_connections(loop):
    n = 10_000
    state = {"open": 0, "peak": 0}

    class Echo(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr
            state["open"] += 1
            state["peak"] = max(state["peak"], state["open"])

        def data_received(self, data):
            self.tr.write(data)

        def connection_lost(self, exc):
            state["open"] -= 1

    async def main():
        gc.collect()
        fds0 = open_fds()
        server = await loop.create_server(Echo, LOCAL, 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        t0 = time.monotonic()
        clients = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENTS, str(port), str(n)
        )
        assert await clients.wait() == 0
        while state["open"]:
            await asyncio.sleep(0.01)
        seconds = time.monotonic() - t0
        server.close()
        await server.wait_closed()
        gc.collect()
        return fds0, open_fds(), seconds

    with nofile_at_least(n + 512):
        fds0, fds1, seconds = run(loop, main(), timeout=800)
    report(loop, "concurrent", n=n, peak=state["peak"], fds_before=fds0, fds_after=fds1, s=seconds)
    assert state["peak"] == n
    assert fds1 <= fds0
