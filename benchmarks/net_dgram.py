"""Datagram and pipe benchmarks: UDP echo and a pipe relay on ferroloop and its peers.

    python benchmarks/net_dgram.py                 # both, about 3 minutes on 2 cores
    python benchmarks/net_dgram.py --only udp --sizes 64 --rounds 9
    python benchmarks/net_dgram.py --loops ferroloop,uvloop --only pipe

UDP echo: a server (benchmarks/net_dgram_server.py, an `asyncio.DatagramProtocol` that
sends every datagram back) runs on the loop under test in its own process; the load comes
from a C program (benchmarks/net_udp_load.c), the same for every loop: 4 UDP sockets, each
with a bounded window of 8 datagrams in flight, every echo checked byte for byte, a
datagram without an echo after 200 ms counted as lost and replaced. At 64 B and 1400 B.
The figure: the server's CPU time per echoed datagram (its /proc schedstat over the
measured window), with throughput, round-trip times and losses beside it.

Pipe relay: the server relays 64 MiB from one pipe to another through `connect_read_pipe`
and `connect_write_pipe` (the write side's flow control pausing the read side); this
process writes the data into the first pipe and reads it back from the second, checked.
The figure: the server's CPU time per MiB relayed.

Interleaved as benchmarks/net.py (every round runs every row on every loop, the loops'
order rotating); a cell is the median of its rounds; ratios > 1 mean ferroloop is better.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import net  # noqa: E402  (C builds, pinning, tables)
import run as micro  # noqa: E402  (machine info, loop availability)

SERVER = HERE / "net_dgram_server.py"
UDP_LOAD_C = HERE / "net_udp_load.c"
SIZES = [64, 1400]
MiB = 1024 * 1024


def start(kind: str, args: list[str], pass_fds: tuple[int, ...] = ()) -> Any:
    """Starts a server; (process, stderr file, port, pid) or the reason it failed."""
    name, env = micro.worker_env(kind)
    err = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen(
        [sys.executable, str(SERVER), name, *args], stdout=subprocess.PIPE, stderr=err,
        text=True, env=env, pass_fds=pass_fds, preexec_fn=net.pin_self(0),
    )  # fmt: skip
    assert p.stdout is not None
    deadline = time.monotonic() + 20
    line = ""
    while time.monotonic() < deadline:
        r, _, _ = select.select([p.stdout], [], [], 0.1)
        if r:
            line = p.stdout.readline()
            break
        if p.poll() is not None:
            break
    if not line.startswith("READY"):
        net.stop(p)
        err.seek(0)
        why = net.last_line(err.read()) or f"exit status {p.returncode}"
        err.close()
        return f"server did not start: {why}"
    _, port, pid = line.split()
    return p, err, int(port), int(pid)


def server_errors(p: subprocess.Popen[str], err: Any) -> list[str]:
    net.stop(p)
    err.seek(0)
    text = err.read()
    err.close()
    return [ln for ln in text.splitlines() if ln.startswith("ERROR") or "Error" in ln]


def run_udp(kind: str, args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    started = start(kind, ["udp"])
    if isinstance(started, str):
        return {s: {"error": started} for s in args.sizes}
    p, err, port, pid = started
    cmd = [
        *args.udp_cmd, "--port", str(port), "--server-pid", str(pid),
        "--sizes", ",".join(map(str, args.sizes)), "--socks", str(args.socks),
        "--window", str(args.window), "--warmup", str(args.warmup),
        "--duration", str(args.duration),
    ]  # fmt: skip
    out: dict[int, dict[str, Any]] = {}
    budget = len(args.sizes) * (args.warmup + args.duration + 8) + 10
    try:
        lp = subprocess.run(
            cmd, capture_output=True, text=True, timeout=budget, preexec_fn=net.pin_self(1)
        )
        for line in lp.stdout.splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if "messages" in d:
                sent = d["messages"] + d["lost"]
                d["loss_pct"] = 100.0 * d["lost"] / sent if sent else 0.0
            out[d["size"]] = d
        if lp.returncode != 0:
            why = net.last_line(lp.stderr) or f"exit status {lp.returncode}"
            for s in args.sizes:
                out.setdefault(s, {"error": f"load generator failed: {why}"})
    except subprocess.TimeoutExpired:
        for s in args.sizes:
            out.setdefault(s, {"error": f"load generator timed out after {budget:.0f} s"})
    errors = server_errors(p, err)
    for s in args.sizes:
        d = out.setdefault(s, {"error": "no result from the load generator"})
        if errors:
            d["server_errors"] = errors[:3]
            if "error" not in d:
                d["error"] = f"server: {errors[0]}"
    return out


def run_pipe(kind: str, payload: bytes, args: argparse.Namespace) -> dict[str, Any]:
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    started = start(kind, ["pipe", str(a_r), str(b_w)], pass_fds=(a_r, b_w))
    os.close(a_r)
    os.close(b_w)
    if isinstance(started, str):
        os.close(a_w)
        os.close(b_r)
        return {"error": started}
    p, err, _, pid = started
    failure: list[BaseException] = []

    def feed() -> None:
        try:
            view = memoryview(payload)
            for i in range(0, len(view), MiB):
                os.write(a_w, view[i : i + MiB])
        except OSError as e:
            failure.append(e)
        finally:
            os.close(a_w)

    cpu0, t0 = net.micro_proc_cpu(pid), time.monotonic()
    writer = threading.Thread(target=feed)
    writer.start()
    got = 0
    ok = True
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            chunk = os.read(b_r, MiB)
            if not chunk:
                break
            ok = ok and payload[got : got + len(chunk)] == chunk
            got += len(chunk)
        wall = time.monotonic() - t0
        cpu1 = net.micro_proc_cpu(pid)
    finally:
        writer.join()
        os.close(b_r)
    errors = server_errors(p, err)
    if failure:
        return {"error": f"writing to the relay: {failure[0]!r}"}
    if got != len(payload) or not ok:
        why = errors[0] if errors else f"{got} of {len(payload)} bytes came back intact"
        return {"error": f"relay lost data: {why}"}
    mib = len(payload) / MiB
    cpu = (cpu1 - cpu0) / 1e9
    return {
        "mib": mib, "seconds": wall, "rate": mib / wall, "server_cpu_s": cpu,
        "server_cpu_per_mib_us": cpu * 1e6 / mib, "server_util": cpu / wall,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--loops", default=",".join(net.ALL_LOOPS))
    ap.add_argument("--only", default="udp,pipe", help="udp, pipe or both")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--socks", type=int, default=4)
    ap.add_argument("--window", type=int, default=8, help="datagrams in flight per socket")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--pipe-mib", type=int, default=64)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                    help="also run the ferroloop package in DIR, as ferroloop[NAME]")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    only = set(args.only.split(","))
    cpus = sorted(os.sched_getaffinity(0))
    if not args.no_pin and len(cpus) >= 2:
        # Servers on one CPU, the load (the C generator, this process's pipe feeder and
        # reader) on another, as benchmarks/net.py places them.
        net.PIN = ({cpus[0]}, {cpus[1]}, set(cpus[1:]))
        os.sched_setaffinity(0, net.PIN[1])
    requested = args.loops.split(",")
    net.add_variants(ap, requested, args.variant)
    loops, missing = net.available_loops(requested)
    if "ferroloop" not in loops:
        sys.exit(f"ferroloop is not usable: {missing.get('ferroloop')}")
    if "udp" in only:
        built = net.build_c_client(Path(args.out), UDP_LOAD_C)
        if isinstance(built, str):
            sys.exit(f"cannot build the UDP load generator: {built}")
        args.udp_cmd = built
    payload = os.urandom(args.pipe_mib * MiB) if "pipe" in only else b""
    info = micro.machine_info(loops)
    info.update(rounds=args.rounds, loops=loops, missing_loops=missing, sizes=args.sizes,
                socks=args.socks, window=args.window, pipe_mib=args.pipe_mib)  # fmt: skip
    print(
        f"ferroloop datagram/pipe benchmarks: {len(loops)} loops x {args.rounds} rounds "
        f"(Python {info['python'].split()[0]}, {info['cpu']}, load {info['loadavg_start']})",
        file=sys.stderr,
    )
    udp: dict[int, dict[str, list[dict[str, Any]]]] = {s: {} for s in args.sizes}
    pipes: dict[str, list[dict[str, Any]]] = {}
    t0 = time.monotonic()
    for r in range(args.rounds):
        order = loops[r % len(loops) :] + loops[: r % len(loops)]
        for kind in order:
            if "udp" in only:
                for size, d in run_udp(kind, args).items():
                    udp.setdefault(size, {}).setdefault(kind, []).append(d)
            if "pipe" in only:
                pipes.setdefault(kind, []).append(run_pipe(kind, payload, args))
        print(f"  round {r + 1}/{args.rounds} done, {time.monotonic() - t0:.0f} s, "
              f"load {micro.loadavg()}", file=sys.stderr)  # fmt: skip
    info["loadavg_end"] = micro.loadavg()

    def samples(cell: dict[str, list[dict[str, Any]]], key: str) -> dict[str, list[float]]:
        return {k: [d[key] for d in ds if "error" not in d] for k, ds in cell.items()}

    notes: list[str] = []

    def cell_error(cells: dict[str, dict[str, list[dict[str, Any]]]]) -> Any:
        def f(label: str, kind: str) -> str | None:
            errs = [d["error"] for d in cells.get(label, {}).get(kind, []) if "error" in d]
            if errs:
                notes.append(f"{label} on {kind}: {errs[0]}")
                return "n/a"
            return None

        return f

    tables = []
    if "udp" in only:
        cells = {f"UDP echo {net.fmt_size(s)}": udp[s] for s in args.sizes}
        specs = [
            ("server_cpu_per_msg_us", False, net.fmt_us, "us",
             "UDP echo: server CPU per datagram, microseconds (ratio = peer / ferroloop)"),
            ("rate", True, net.fmt_rate, "msg/s",
             "UDP echo: throughput, datagrams/s (ratio = ferroloop / peer)"),
            ("p99_us", False, net.fmt_us, "us", "UDP echo: p99 round trip, microseconds"),
            ("loss_pct", False, lambda x: f"{x:.2f}%", "", "UDP echo: datagrams lost, %"),
        ]  # fmt: skip
        for key, hb, fmt, unit, title in specs:
            rows = [(label, samples(c, key)) for label, c in cells.items()]
            if key == "loss_pct":
                # Losses are a count to read, not a ratio to take (0 on the best rows).
                h = ["row"] + loops
                rws = [[label] + [fmt(statistics.median(v)) if (v := s.get(k)) else "n/a"
                                  for k in loops] for label, s in rows]  # fmt: skip
            else:
                h, rws, _ = net.metric_table(rows, loops, hb, fmt, unit, cell_error(cells))
            tables.append((title, h, rws))
    if "pipe" in only:
        label = f"pipe relay {args.pipe_mib} MiB"
        cells = {label: pipes}
        for key, hb, fmt, unit, title in [
            ("server_cpu_per_mib_us", False, net.fmt_us, "us",
             "Pipe relay: server CPU per MiB, microseconds (ratio = peer / ferroloop)"),
            ("rate", True, lambda x: f"{x:.0f}", "MiB/s", "Pipe relay: throughput, MiB/s"),
        ]:  # fmt: skip
            h, rws, _ = net.metric_table(
                [(label, samples(pipes, key))], loops, hb, fmt, unit, cell_error(cells)
            )
            tables.append((title, h, rws[:-1]))
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    head = (
        f"Python {info['python'].split()[0]} | {info['cpu']} x{info['cpus']} | {versions}\n"
        f"ferroloop commit {info['ferroloop_commit']}"
        f"{' (+uncommitted changes)' if info['ferroloop_tree_dirty'] else ''} | UDP: "
        f"{args.socks} sockets x {args.window} in flight, {args.warmup:g} s warm-up + "
        f"{args.duration:g} s measured | pipe: {args.pipe_mib} MiB | median of {args.rounds} "
        f"rounds | load {info['loadavg_start']} -> {info['loadavg_end']}"
    )
    notes += [f"{k} not run: {why}" for k, why in missing.items()]
    print()
    print(head)
    for title, h, rws in tables:
        print()
        print(title)
        print(net.render_text(h, rws))
    for line in dict.fromkeys(notes):
        print("note: " + line)
    if not args.no_save:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        payload_json = {"machine": info, "udp": udp, "pipe": pipes, "notes": notes}
        (out / f"dgram-{stamp}.json").write_text(json.dumps(payload_json, indent=2) + "\n")
        md = [f"# ferroloop datagram and pipe benchmarks, {info['date']}", "", "```", head, "```"]
        for title, h, rws in tables:
            md += ["", f"## {title}", "", micro.render_markdown(h, rws)]
        md += ["", *(f"- {line}" for line in dict.fromkeys(notes))]
        (out / f"dgram-{stamp}.md").write_text("\n".join(md) + "\n")
        print(f"results: {out / f'dgram-{stamp}.json'} and .md", file=sys.stderr)


if __name__ == "__main__":
    main()
