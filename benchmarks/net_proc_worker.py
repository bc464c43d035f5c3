"""One loop-side row of benchmarks/net_proc.py: `python net_proc_worker.py LOOP ROW N`.

Runs row ROW N times on a fresh loop of kind LOOP after a warm-up, and prints one JSON
line: {"ops": N, "seconds": wall, "cpu_s": this process's CPU time over the measured
region (every thread; the children's own CPU is not in it), "unit": what one op is}.
Every row checks its outcome, so a loop that loses work reports an error instead.

Rows:
- spawn: `asyncio.create_subprocess_exec("/bin/true")` then `wait()`, one at a time;
- cat: 64 MiB (N = MiB) written to `cat`'s stdin with drain() while its stdout is read
  back, 256 KiB writes, reads of up to 1 MiB; the total length is checked (a checksum
  would cost more than the loop's own work; tests/test_subprocesses.py checks content);
- fdwatch: `add_reader`, `remove_reader`, `add_writer`, `remove_writer` of one socket's
  fd, the four as one cycle;
- sockconn: `sock_connect` of a new non-blocking TCP socket to a listener on 127.0.0.1
  while `sock_accept` waits on it, then both sockets closed.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker import make_loop  # noqa: E402

MiB = 1024 * 1024


async def spawn(n: int) -> None:
    for _ in range(n):
        proc = await asyncio.create_subprocess_exec("/bin/true")
        if await proc.wait() != 0:
            raise AssertionError("/bin/true failed")


async def cat(mib: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    chunk = os.urandom(256 * 1024)
    total = mib * MiB

    async def feed() -> None:
        assert proc.stdin is not None
        for _ in range(total // len(chunk)):
            proc.stdin.write(chunk)
            await proc.stdin.drain()
        proc.stdin.close()

    async def drain() -> int:
        assert proc.stdout is not None
        n = 0
        while data := await proc.stdout.read(MiB):
            n += len(data)
        return n

    _, got = await asyncio.gather(feed(), drain())
    if got != total or await proc.wait() != 0:
        raise AssertionError(f"cat gave back {got} of {total} bytes")


async def fdwatch(n: int) -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    fd = a.fileno()
    calls = 0

    def cb() -> None:
        nonlocal calls
        calls += 1

    try:
        for _ in range(n):
            loop.add_reader(fd, cb)
            loop.remove_reader(fd)
            loop.add_writer(fd, cb)
            loop.remove_writer(fd)
        if calls:
            raise AssertionError("a callback of a removed watcher ran")
    finally:
        a.close()
        b.close()


async def sockconn(n: int) -> None:
    loop = asyncio.get_running_loop()
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(128)
        lsock.setblocking(False)
        addr = lsock.getsockname()
        for _ in range(n):
            c = socket.socket()
            c.setblocking(False)
            accepting = asyncio.ensure_future(loop.sock_accept(lsock))
            await loop.sock_connect(c, addr)
            conn, peer = await accepting
            if peer != c.getsockname():
                raise AssertionError("accepted the wrong connection")
            conn.close()
            c.close()


ROWS: dict[str, tuple[Any, str]] = {
    "spawn": (spawn, "spawn"),
    "cat": (cat, "MiB"),
    "fdwatch": (fdwatch, "cycle"),
    "sockconn": (sockconn, "connection"),
}


def main() -> None:
    kind, row, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    body, unit = ROWS[row]
    warm = make_loop(kind)
    try:
        warm.run_until_complete(body(max(1, n // 20)))
    finally:
        warm.close()
    loop = make_loop(kind)
    try:
        cpu0, t0 = time.process_time(), time.perf_counter()
        loop.run_until_complete(body(n))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        loop.close()
    print(json.dumps({"ops": n, "seconds": wall, "cpu_s": cpu, "unit": unit}))


if __name__ == "__main__":
    main()
