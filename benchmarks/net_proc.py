"""Server and subprocess benchmarks (issue 11): accept rate, spawn + wait, 64 MiB through
`cat`, fd watcher cycles and sock_connect + sock_accept, on ferroloop and its peers.

    python benchmarks/net_proc.py                  # every row, about 4 minutes on 2 cores
    python benchmarks/net_proc.py --only accept,spawn --rounds 9
    python benchmarks/net_proc.py --loops ferroloop,uvloop,rloop --quick

Accept rate: the protocol echo server of benchmarks/net_server.py runs on the loop under
test in its own process; a C program (benchmarks/net_accept_load.c), the same for every
loop, keeps 10 connections in a cycle: connect, send 64 bytes, receive the echo, close,
connect again. The figure: the server's CPU time per connection (its /proc schedstat
over the measured window), with connections/s beside it.

Loop-side rows (benchmarks/net_proc_worker.py, one process per measurement): spawn +
wait of /bin/true, 64 MiB through `cat`, cycles of add_reader/remove_reader/add_writer/
remove_writer, sock_connect + sock_accept. The figure: the loop process's CPU time per
operation (every thread; the children's CPU not included), with operations/s of wall
time beside it.

Interleaved as benchmarks/net.py: every round runs every row on every loop, the loops'
order rotating; a cell is the median of its rounds; ratios > 1 mean ferroloop is better.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import net  # noqa: E402  (C builds, pinning, servers, tables)
import run as micro  # noqa: E402  (machine info, loop availability)

WORKER = HERE / "net_proc_worker.py"
ACCEPT_LOAD_C = HERE / "net_accept_load.c"
# row -> (label, unit of one op, worker size; None: the accept row)
ROWS: dict[str, tuple[str, str, int | None]] = {
    "accept": ("accept, 1 round trip each", "conn", None),
    "spawn": ("spawn + wait /bin/true", "spawn", 300),
    "cat": ("64 MiB through cat", "MiB", 64),
    "fdwatch": ("add/remove reader+writer", "cycle", 30000),
    "sockconn": ("sock_connect + sock_accept", "conn", 3000),
}


def run_worker(kind: str, row: str, n: int) -> dict[str, Any]:
    name, env = micro.worker_env(kind)
    try:
        p = subprocess.run(
            [sys.executable, str(WORKER), name, row, str(n)], capture_output=True, text=True,
            timeout=300, env=env, preexec_fn=net.pin_self(0),
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    if p.returncode != 0:
        return {"error": net.last_line(p.stderr) or f"exit status {p.returncode}"}
    d: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    d["cpu_per_op_us"] = d["cpu_s"] * 1e6 / d["ops"]
    d["rate"] = d["ops"] / d["seconds"]
    return d


def run_accept(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    started = net.start_server(kind, "protocol")
    if isinstance(started, str):
        return {"error": started}
    p, err, port, pid = started
    cmd = [
        *args.accept_cmd, "--port", str(port), "--server-pid", str(pid), "--conns", "10",
        "--warmup", str(args.warmup), "--duration", str(args.duration),
    ]  # fmt: skip
    try:
        lp = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.warmup + args.duration + 30,
            preexec_fn=net.pin_self(1),
        )  # fmt: skip
        lines = lp.stdout.strip().splitlines()
        d: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": "no output"}
    except subprocess.TimeoutExpired:
        d = {"error": "load generator timed out"}
    finally:
        net.stop(p)
        err.seek(0)
        server_err = err.read()
        err.close()
    if "error" in d and server_err.strip():
        d["error"] += f"; server: {net.last_line(server_err)}"
    if "error" not in d:
        d["cpu_per_op_us"] = d["server_cpu_per_conn_us"]
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--loops", default=",".join(net.ALL_LOOPS))
    ap.add_argument("--only", default=",".join(ROWS), help="rows: " + ",".join(ROWS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=float, default=0.5, help="accept row warm-up, seconds")
    ap.add_argument("--duration", type=float, default=2.0, help="accept row window, seconds")
    ap.add_argument("--quick", action="store_true", help="3 rounds, shorter windows")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                    help="also run another ferroloop build (benchmarks/variant.sh), shown "
                    "as ferroloop[NAME]")  # fmt: skip
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.warmup, args.duration = 3, 0.25, 1.0
    rows = [r for r in args.only.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        ap.error(f"unknown rows: {', '.join(sorted(unknown))}")
    cpus = sorted(os.sched_getaffinity(0))
    if not args.no_pin and len(cpus) >= 2:
        net.PIN = ({cpus[0]}, {cpus[1]}, set(cpus[1:]))
    out_dir = Path(args.out)
    if "accept" in rows:
        built = net.build_c_client(out_dir, ACCEPT_LOAD_C)
        if isinstance(built, str):
            sys.exit(f"cannot build the accept load generator: {built}")
        args.accept_cmd = built
    requested = args.loops.split(",")
    net.add_variants(ap, requested, args.variant)
    loops, missing = net.available_loops(requested)
    if "ferroloop" not in loops:
        sys.exit(f"ferroloop is not usable: {missing.get('ferroloop')}")
    info = micro.machine_info(loops)
    print(
        f"server/subprocess benchmarks: {len(rows)} rows x {len(loops)} loops x "
        f"{args.rounds} rounds (Python {info['python'].split()[0]}, load {info['loadavg_start']})",
        file=sys.stderr,
    )
    results: dict[str, dict[str, list[dict[str, Any]]]] = {r: {} for r in rows}
    t0 = time.monotonic()
    for r in range(args.rounds):
        order = loops[r % len(loops) :] + loops[: r % len(loops)]
        for row in rows:
            for kind in order:
                size = ROWS[row][2]
                d = run_accept(kind, args) if size is None else run_worker(kind, row, size)
                results[row].setdefault(kind, []).append(d)
        print(f"  round {r + 1}/{args.rounds}, {time.monotonic() - t0:.0f} s", file=sys.stderr)
    info["loadavg_end"] = micro.loadavg()

    def samples(row: str, key: str) -> dict[str, list[float]]:
        return {
            k: [d[key] for d in ds if "error" not in d and d.get(key) is not None]
            for k, ds in results[row].items()
        }

    notes: dict[str, str] = {}

    def cell_error(label: str, kind: str) -> str | None:
        row = next(r for r in rows if ROWS[r][0] == label)
        errs = [d["error"] for d in results[row].get(kind, []) if "error" in d]
        if errs:
            notes.setdefault(f"{label} on {kind}", errs[0])
            return "n/a"
        return None

    tables = []
    for key, hb, fmt, unit, title in [
        ("cpu_per_op_us", False, net.fmt_us, "us",
         "CPU time per operation, microseconds (accept: the server's; others: the loop "
         "process's; ratio = peer / ferroloop)"),
        ("rate", True, net.fmt_rate, "/s",
         "Operations per second of wall time (ratio = ferroloop / peer)"),
    ]:  # fmt: skip
        trows = [(f"{ROWS[r][0]} (per {ROWS[r][1]})", samples(r, key)) for r in rows]
        labels = {f"{ROWS[r][0]} (per {ROWS[r][1]})": ROWS[r][0] for r in rows}
        h, rws, _ = net.metric_table(
            trows, loops, hb, fmt, unit, lambda lbl, k, labels=labels: cell_error(labels[lbl], k)
        )
        tables.append((title, h, rws))
    head = (
        f"Python {info['python'].split()[0]} | {info['cpu']} x{info['cpus']} | "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        + f"\nferroloop commit {info['ferroloop_commit']} | {args.rounds} rounds | load "
        f"{info['loadavg_start']} -> {info['loadavg_end']}"
    )
    print()
    print(head)
    for title, h, rws in tables:
        print()
        print(title)
        print(net.render_text(h, rws))
    extra = [f"n/a: {where}: {e}" for where, e in notes.items()]
    extra += [f"{k} not run: {why}" for k, why in missing.items()]
    for line in extra:
        print("note: " + line)
    if not args.no_save:
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        payload = {"machine": info, "results": results, "notes": extra}
        (out_dir / f"proc-{stamp}.json").write_text(json.dumps(payload, indent=2) + "\n")
        md = [f"# ferroloop server/subprocess benchmarks, {info['date']}", "", "```", head, "```"]
        for title, h, rws in tables:
            md += ["", f"## {title}", "", micro.render_markdown(h, rws)]
        md += ["", *(f"- {line}" for line in extra)]
        (out_dir / f"proc-{stamp}.md").write_text("\n".join(md) + "\n")
        print(f"results: {out_dir / f'proc-{stamp}.json'} and .md", file=sys.stderr)


if __name__ == "__main__":
    main()
