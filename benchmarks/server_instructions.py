"""Instructions per operation of an echo server (`net_server.py`), counted by valgrind
(callgrind) while a load generator drives it: the accept row (`net_accept_load`, one
connection per operation), the 1 KiB echo (`net_load`, one message per operation) or the
10 KiB TLS echo (`net_load_tls`).

    python benchmarks/server_instructions.py --loops ferroloop,uvloop,rloop --row accept

The server runs under callgrind with instrumentation off; it is switched on for a
measured window (after an unmeasured warm-up) and the counts are dumped at its end. Two
window lengths are differenced, so start-up and the switching itself cancel out. User
space only (the kernel's share is not counted): read it beside `net_proc.py`'s CPU time.
ferroloop's loop statistics time every callback under valgrind (each runs ~50x slower),
so the bar for that is scaled as `instructions.py` scales it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import net
import net_tls

HERE = Path(__file__).resolve().parent
# row -> (load generator, its extra arguments, the server's API)
ROWS = {
    "accept": ("net_accept_load.c", [], "protocol"),
    "echo": ("net_load.c", ["--sizes", "1024"], "protocol"),
    "tls-echo": ("net_load_tls.c", ["--sizes", "10240"], "tls-protocol"),
}


def counted(out: str) -> int:
    total = 0
    for f in glob.glob(out + "*"):
        with open(f) as fh:
            for line in fh:
                if line.startswith(("summary:", "totals:")):
                    total = max(total, int(line.split()[1]))
    return total


def one(
    kind: str, row: str, load: list[str], api: str, seconds: float, tmp: str
) -> tuple[int, int]:
    """(operations, instructions) of one measured window of `seconds`."""
    out = os.path.join(tmp, f"cg.{kind}.{row}.{seconds}")
    name, env = net.micro.worker_env(kind)
    env = dict(env, PYTHONHASHSEED="0", FERROLOOP_STATS_FULL_TIMING_NS="400000")
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    p = subprocess.Popen(
        [*cmd, sys.executable, str(HERE / "net_server.py"), name, api],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=HERE,
    )  # fmt: skip
    try:
        assert p.stdout is not None
        _, port, pid = p.stdout.readline().split()
        base = [*load, "--port", port, "--server-pid", pid, "--conns", "10", "--warmup", "0"]
        subprocess.run([*base, "--duration", "2", "--stall", "60"], capture_output=True)
        subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], capture_output=True)
        r = subprocess.run(
            [*base, "--duration", str(seconds), "--stall", "60"], capture_output=True, text=True
        )
        subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True)
        d = json.loads(r.stdout.strip().splitlines()[-1])
        ops = d["connections"] if row == "accept" else d["messages"]
        return ops, counted(out)
    finally:
        p.kill()
        p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loops", default="ferroloop,uvloop,rloop")
    ap.add_argument("--row", choices=sorted(ROWS), default="accept")
    ap.add_argument("--seconds", default="3,9", help="the two window lengths, seconds")
    ap.add_argument("--keep", metavar="DIR", help="keep callgrind's files in DIR")
    args = ap.parse_args()
    src, extra, api = ROWS[args.row]
    if src == "net_load_tls.c":
        built = net_tls.build_client(HERE / "results")
    else:
        built = net.build_c_client(HERE / "results", HERE / src)
    if isinstance(built, str):
        sys.exit(f"cannot build {src}: {built}")
    short, long = (float(x) for x in args.seconds.split(","))
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        for kind in args.loops.split(","):
            o1, i1 = one(kind, args.row, [*built, *extra], api, short, tmp)
            o2, i2 = one(kind, args.row, [*built, *extra], api, long, tmp)
            print(f"{kind:10} {(i2 - i1) / (o2 - o1):9.0f} instructions per {args.row} "
                  f"({o1} and {o2} operations)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
