"""The echo load generator in Python: same protocol, options and output as net_load.c.

    python benchmarks/net_load.py --port P --server-pid PID --sizes 1024,10240 \
        [--conns 10] [--warmup 0.25] [--duration 1.0]

net.py uses the C generator (net_load.c) when a C compiler is available and this one
otherwise (or with `--client py`). This one spends about 1 us more per message than
the C one (interpreter time); both spend most of their time in the kernel.

For each size in turn it opens `--conns` TCP connections to 127.0.0.1:P and keeps one
request in flight on each: send a message of `size` bytes, wait for the complete echo,
check it (in full up to 16 KiB; above, every 8th echo of a connection in full and the
others on their first and last 256 bytes), send the next. Each connection alternates
between two messages that differ from each other and from every other connection's,
so a server that drops, duplicates, reorders, mixes up or re-sends stale bytes fails
the check instead of looking fast.

One thread, non-blocking sockets on a level-triggered `select.epoll`, `recv_into` a
preallocated buffer per connection; it uses no event loop, so it is identical whichever
loop the server runs.

Timeline per size: warm-up (`--warmup` s, not counted), the measured window
(`--duration` s), then no new requests: the in-flight ones are completed and the
connections closed cleanly. Over the measured window it records

- messages completed and the window's length (throughput = messages / seconds),
- every round-trip time (send of the first byte to receipt of the last), for p50/p99,
- the server process's CPU time, read from /proc/PID/task/*/schedstat (nanoseconds, all
  threads) and the user/system split from /proc/PID/stat (clock ticks),
- its own CPU time (time.process_time), to show whether it was the bottleneck.

Prints one JSON line per size on stdout. On an error (no progress for --stall seconds,
a wrong echo, a closed connection) it prints {"size": .., "error": ".."} for that size
and goes on with the next.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import time
from array import array
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> tuple[int, int, int]:
    """(cpu ns over all threads, utime ticks, stime ticks) of process `pid`."""
    total = 0
    base = Path(f"/proc/{pid}/task")
    for task in base.iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just exited
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return total, int(fields[11]), int(fields[12])


def make_messages(size: int, conns: int) -> list[tuple[bytes, bytes]]:
    """Two distinct messages per connection, each distinct from all others'."""
    out = []
    for c in range(conns):
        msgs = []
        for k in range(2):
            start = (c * 2 + k) * 7 + 1
            unit = bytes((start + i * (2 * c + k + 1)) & 0xFF for i in range(256))
            msgs.append((unit * (size // 256 + 1))[:size])
        out.append((msgs[0], msgs[1]))
    return out


# As net_load.c: up to 16 KiB every echo is compared in full; above, every 8th echo of
# each connection (its first included) in full and the others on their first and last
# 256 bytes, which identify the message.
FULL_CHECK_MAX = 16 * 1024


class LoadError(Exception):
    pass


def run_size(
    port: int, size: int, conns: int, warmup: float, duration: float, spid: int, stall: float
) -> dict[str, Any]:
    msgs = make_messages(size, conns)
    socks: list[socket.socket] = []
    try:
        for _ in range(conns):
            s = socket.create_connection(("127.0.0.1", port), timeout=5.0)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            socks.append(s)
        return drive(socks, msgs, size, warmup, duration, spid, stall)
    finally:
        for s in socks:
            s.close()


def drive(
    socks: list[socket.socket],
    msgs: list[tuple[bytes, bytes]],
    size: int,
    warmup: float,
    duration: float,
    spid: int,
    stall: float,
) -> dict[str, Any]:
    n = len(socks)
    ep = select.epoll()
    IN, OUT = select.EPOLLIN, select.EPOLLOUT
    fd_index = {s.fileno(): i for i, s in enumerate(socks)}
    bufs = [bytearray(size) for _ in range(n)]
    views = [memoryview(b) for b in bufs]
    got = [0] * n  # bytes of the current echo received
    unsent: list[memoryview | None] = [None] * n  # rest of a partially sent message
    parity = [0] * n  # which of the connection's two messages is in flight
    t_sent = [0] * n  # perf_counter_ns when the current message was sent
    inflight = [False] * n
    seq = [0] * n  # echoes completed per connection
    lat = array("q")
    record = lat.append
    clock = time.perf_counter_ns

    def send(i: int) -> None:
        msg = msgs[i][parity[i]]
        t_sent[i] = clock()
        inflight[i] = True
        try:
            k = socks[i].send(msg)
        except BlockingIOError:
            k = 0
        if k < size:
            unsent[i] = memoryview(msg)[k:]
            ep.modify(socks[i], IN | OUT)

    for s in socks:
        ep.register(s, IN)
    t_begin = clock()
    t_w = t_begin + int(warmup * 1e9)  # end of warm-up
    t_e = t_w + int(duration * 1e9)  # end of the measured window
    phase = 0  # 0 warm-up, 1 measuring, 2 draining
    done = 0
    last_progress = t_begin
    snap0: dict[str, Any] = {}
    snap1: dict[str, Any] = {}
    for i in range(n):
        send(i)
    poll = ep.poll
    try:
        while True:
            events = poll(0.05)
            now = clock()
            if phase == 0 and now >= t_w:
                phase = 1
                snap0 = {
                    "t": now,
                    "done": done,
                    "srv": proc_cpu(spid),
                    "cli": time.process_time_ns(),
                }
            elif phase == 1 and now >= t_e:
                phase = 2
                snap1 = {
                    "t": now,
                    "done": done,
                    "srv": proc_cpu(spid),
                    "cli": time.process_time_ns(),
                }
            for fd, ev in events:
                i = fd_index[fd]
                s = socks[i]
                if ev & OUT:
                    rest = unsent[i]
                    if rest is not None:
                        try:
                            k = s.send(rest)
                        except BlockingIOError:
                            k = 0
                        if k == len(rest):
                            unsent[i] = None
                            ep.modify(s, IN)
                        else:
                            unsent[i] = rest[k:]
                if not ev & ~OUT:
                    continue
                g = got[i]
                v = views[i]
                while g < size:
                    try:
                        k = s.recv_into(v[g:])
                    except BlockingIOError:
                        break
                    except OSError as e:
                        raise LoadError(f"connection {i}: {e.strerror or e}") from e
                    if k == 0:
                        raise LoadError(f"connection {i}: closed by the server mid-echo")
                    g += k
                if not inflight[i] and g:
                    raise LoadError(f"connection {i}: {g} unexpected bytes")
                got[i] = g
                if g < size:
                    continue
                # The whole echo is in: check it, record, send the next request.
                t = clock()
                msg = msgs[i][parity[i]]
                k = seq[i]
                seq[i] = k + 1
                if (
                    bufs[i] != msg
                    if size <= FULL_CHECK_MAX or k % 8 == 0
                    else views[i][:256] != msg[:256] or views[i][-256:] != msg[-256:]
                ):
                    raise LoadError(f"connection {i}: echo differs from the message sent")
                got[i] = 0
                inflight[i] = False
                done += 1
                last_progress = t
                if phase == 1:
                    record(t - t_sent[i])
                if phase < 2:
                    parity[i] ^= 1
                    send(i)
            if phase == 2 and not any(inflight):
                break
            if now - last_progress > stall * 1e9:
                state = "draining" if phase == 2 else "running"
                raise LoadError(f"no echo completed for {stall:g} s ({state}, {done} done)")
    finally:
        ep.close()
    wall = (snap1["t"] - snap0["t"]) / 1e9
    count = snap1["done"] - snap0["done"]
    srv = [b - a for a, b in zip(snap0["srv"], snap1["srv"])]
    cli = (snap1["cli"] - snap0["cli"]) / 1e9
    lat_sorted = sorted(lat)
    m = len(lat_sorted)
    if m == 0:
        raise LoadError("no message completed in the measured window")
    return {
        "size": size,
        "messages": count,
        "seconds": wall,
        "rate": count / wall,
        "p50_us": lat_sorted[(m - 1) // 2] / 1e3,
        "p99_us": lat_sorted[int(0.99 * (m - 1))] / 1e3,
        "max_us": lat_sorted[-1] / 1e3,
        "server_cpu_s": srv[0] / 1e9,
        "server_user_s": srv[1] / CLK_TCK,
        "server_sys_s": srv[2] / CLK_TCK,
        "server_cpu_per_msg_us": srv[0] / 1e3 / count if count else None,
        "server_util": srv[0] / 1e9 / wall,
        "client_cpu_s": cli,
        "client_util": cli / wall,
        "total_messages": done,
        "client": "py",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--sizes", required=True, help="comma-separated message sizes in bytes")
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--warmup", type=float, default=0.25)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument(
        "--stall", type=float, default=3.0, help="error after this long without progress"
    )
    args = ap.parse_args()
    for size in (int(x) for x in args.sizes.split(",")):
        try:
            out = run_size(
                args.port, size, args.conns, args.warmup, args.duration, args.server_pid, args.stall
            )
        except (LoadError, OSError) as e:
            out = {"size": size, "error": str(e) or type(e).__name__}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
