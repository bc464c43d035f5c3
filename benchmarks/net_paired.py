"""Paired A/B of two ferroloop builds on the serving rows: server CPU per message/request.

    python benchmarks/net_paired.py --a epoll=DIR --b uring=DIR [--pairs 10] [--rows ...]

DIR as for `net.py --variant` (benchmarks/variant.sh prints one; an empty DIR is the
installed build). Each pair runs the row on both builds back to back, their order
alternating, and the ratio b/a of that pair is kept: on a shared machine, the
disturbance that two cells far apart in a long run see differently mostly cancels
within a pair. Echo rows use net.py's C load generator (10 connections, 1 s); the raw
HTTP rows (benchmarks/net_http_raw.py) run under `wrk -t2 -c50 -d2s` and take the
server's CPU from /proc. Prints per row the two medians and the median ratio with its
quartiles (issue 13: the io_uring prototype).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from net import build_c_client  # noqa: E402

PORT = "18778"


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def env_for(path: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=path) if path else dict(os.environ)


def echo(load: list[str], path: str, api: str, size: int) -> float:
    server = [sys.executable, str(HERE / "net_server.py"), "ferroloop", api]
    s = subprocess.Popen(
        ["taskset", "-c", "0", *server], stdout=subprocess.PIPE, text=True, env=env_for(path)
    )
    try:
        assert s.stdout is not None
        _, port, pid = s.stdout.readline().split()
        out = subprocess.run(
            [
                "taskset",
                "-c",
                "1",
                *load,
                "--port",
                port,
                "--server-pid",
                pid,
                "--sizes",
                str(size),
                "--duration",
                "1",
                "--warmup",
                "0.3",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        s.kill()
        s.wait()
    return float(json.loads(out.splitlines()[-1])["server_cpu_per_msg_us"])


def wrk(seconds: str) -> str:
    return subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t2", "-c50", f"-d{seconds}", f"http://127.0.0.1:{PORT}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def http(path: str, writes: str) -> float:
    server = [sys.executable, str(HERE / "net_http_raw.py"), "ferroloop", PORT, writes]
    s = subprocess.Popen(["taskset", "-c", "0", *server], env=env_for(path))
    try:
        time.sleep(1.2)
        wrk("1s")
        before = proc_cpu(s.pid)
        out = wrk("2s")
        after = proc_cpu(s.pid)
    finally:
        s.kill()
        s.wait()
    m = re.search(r"(\d+) requests in", out)
    if not m:
        raise RuntimeError(f"unreadable wrk output: {out!r}")
    return (after - before) / int(m.group(1)) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--a", required=True, metavar="NAME=DIR")
    ap.add_argument("--b", required=True, metavar="NAME=DIR")
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--rows", default="protocol,buffered,streams,raw1,raw2")
    args = ap.parse_args()
    (na, da), (nb, db) = (v.split("=", 1) for v in (args.a, args.b))
    load = build_c_client(HERE / "results")
    if isinstance(load, str):
        sys.exit(load)
    rows = {
        "protocol": ("echo Protocol 1 KiB", lambda d: echo(load, d, "protocol", 1024)),
        "buffered": ("echo BufferedProtocol 1 KiB", lambda d: echo(load, d, "buffered", 1024)),
        "streams": ("echo streams 1 KiB", lambda d: echo(load, d, "streams", 1024)),
        "raw1": ("raw HTTP, 1 write", lambda d: http(d, "1")),
        "raw2": ("raw HTTP, 2 writes", lambda d: http(d, "2")),
    }
    for key in args.rows.split(","):
        title, run = rows[key]
        got: dict[str, list[float]] = {na: [], nb: []}
        ratios = []
        for i in range(args.pairs):
            order = [(na, da), (nb, db)] if i % 2 == 0 else [(nb, db), (na, da)]
            pair = {name: run(d) for name, d in order}
            for name, v in pair.items():
                got[name].append(v)
            ratios.append(pair[nb] / pair[na])
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        print(
            f"{title}: {na} {statistics.median(got[na]):.2f} us, {nb} "
            f"{statistics.median(got[nb]):.2f} us; {nb}/{na} median "
            f"{statistics.median(ratios):.3f} (quartiles {q1:.3f}-{q3:.3f}, "
            f"{sum(r < 1 for r in ratios)}/{args.pairs} below 1)",
            flush=True,
        )


if __name__ == "__main__":
    main()
