"""Network benchmarks: echo servers and uvicorn on ferroloop, asyncio, uvloop and rloop.

    python benchmarks/net.py              # full run, about 5 minutes on 2 cores
    python benchmarks/net.py --quick      # under a minute: 3 short rounds, 1 wrk round
    python benchmarks/net.py --only protocol,streams --sizes 1024 --rounds 9
    python benchmarks/net.py --no-http    # echo rows only
    python benchmarks/net.py --profile ferroloop:protocol:1024   # perf + py-spy of one server

Echo rows: a server (benchmarks/net_server.py) runs on the loop under test in its own
process, over one of four APIs (protocol, streams, sock_*, BufferedProtocol). The load
comes from a separate process, benchmarks/net_load.py, which is the same for every loop:
10 connections, one request in flight on each (send a message, wait for the whole echo,
check it byte for byte, send the next), at 1 KiB, 10 KiB and 100 KiB. Over a fixed
measured window it reports messages/s, p50/p99 round-trip time, the server's CPU time per
message (its /proc schedstat before and after the window) and its own CPU use, which
shows it was not the bottleneck.

HTTP row: uvicorn + httptools serving a hello-world ASGI app (benchmarks/net_asgi.py),
1 worker, under `wrk -t2 -c50` on 127.0.0.1; requests/s, p50/p99, server CPU per request.
Skipped with the reason printed when wrk, uvicorn or httptools is missing.

Interleaved as benchmarks/run.py: every round runs every row on every loop, the loops'
order rotating from round to round; a cell is the median of its rounds. Ratios are
oriented so that above 1 means ferroloop is better: peer latency or CPU / ferroloop's,
ferroloop's throughput / peer's. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import math
import os
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import net_tls  # noqa: E402  (the TLS rows)
import run as micro  # noqa: E402  (machine info, loop availability, table rendering)

SERVER = HERE / "net_server.py"
LOAD = HERE / "net_load.py"
LOAD_C = HERE / "net_load.c"
APIS = [
    ("protocol", "Protocol"),
    ("streams", "streams"),
    ("sock", "sock_*"),
    ("buffered", "BufferedProtocol"),
    *net_tls.APIS,
]
SIZES = [1024, 10 * 1024, 100 * 1024]
# Peers run when installed (rsloop is built by hand; blazio, talyn, loopmini have wheels
# for some interpreters only: requirements/bench.txt).
ALL_LOOPS = ["ferroloop", "asyncio", "uvloop", "rloop", "rsloop", "blazio", "talyn", "loopmini"]
# The HTTP rows under wrk: uvicorn + httptools, and a raw asyncio.Protocol HTTP server
# (benchmarks/net_http_raw.py) writing each response in one write or in two (head, body).
HTTP_SERVERS = {
    "uvicorn": "uvicorn",
    "raw2": "raw HTTP Protocol, head + body in 2 writes",
    "raw1": "raw HTTP Protocol, 1 write per response",
}
THIRD_PARTY = ("uvloop", "rloop", "rsloop", "blazio", "talyn", "loopmini")
# uvicorn --loop values: an import string for a loop factory (uvicorn >= 0.36).
UVICORN_LOOP = {
    "ferroloop": "ferroloop:new_event_loop",
    "asyncio": "asyncio",
    "uvloop": "uvloop",
    "rloop": "rloop:new_event_loop",
    "rsloop": "rsloop:new_event_loop",
    "blazio": "blazio:new_event_loop",
    "talyn": "talyn:Loop",
    "loopmini": "loopmini:new_event_loop",
}
# A cell whose load generator used at least this share of a core, and more than the
# server did, was paced by the generator rather than by the server.
CLIENT_BUSY = 0.9


def client_limited(server_util: float, client_util: float) -> bool:
    return client_util >= CLIENT_BUSY and client_util >= server_util


def fmt_size(n: int) -> str:
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} B"


def build_c_client(out_dir: Path, source: Path = LOAD_C) -> list[str] | str:
    """Compile a load generator (net_load.c; cached by the source's hash); its command,
    or why not."""
    import hashlib

    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return "no C compiler (cc/gcc) on PATH"
    src = source.read_bytes()
    exe = out_dir / ".bin" / f"{source.stem}-{hashlib.sha256(src).hexdigest()[:12]}"
    if not exe.exists():
        exe.parent.mkdir(parents=True, exist_ok=True)
        tmp = exe.with_suffix(".tmp")
        p = subprocess.run(
            [cc, "-O2", "-o", str(tmp), str(source)], capture_output=True, text=True, check=False
        )
        if p.returncode != 0:
            return f"{cc} failed: {last_line(p.stderr)}"
        tmp.rename(exe)
    return [str(exe)]


# -- echo: one server process per (loop, API, round), one load process for all sizes ---


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


# CPU placement: (the server's CPUs, the echo load generator's, wrk's), or None to let the
# scheduler decide (--no-pin). Pinned by default when there are 2 CPUs or more: left to
# itself the scheduler sometimes runs a ping-pong pair on one core, taking turns, which
# changes what a message costs (no cross-CPU wake-ups), so cells would not be alike.
PIN: tuple[set[int], set[int], set[int]] | None = None


def pin_self(which: int) -> Callable[[], None] | None:
    """A preexec_fn pinning the child to PIN[which], or None when not pinning."""
    if PIN is None:
        return None
    cpus = PIN[which]
    return lambda: os.sched_setaffinity(0, cpus)


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) seconds of all CPUs so far, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    busy = f[0] + f[1] + f[2] + f[5] + f[6]
    tck = os.sysconf("SC_CLK_TCK")
    return busy / tck, f[7] / tck


def start_server(kind: str, api: str) -> tuple[subprocess.Popen[str], Any, int, int] | str:
    """Start an echo server; (process, stderr file, port, pid) or the reason it failed."""
    name, env = micro.worker_env(kind)
    err = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen(
        [sys.executable, str(SERVER), name, api],
        stdout=subprocess.PIPE, stderr=err, text=True, env=env, preexec_fn=pin_self(0),
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
        stop(p)
        err.seek(0)
        why = last_line(err.read()) or f"exit status {p.returncode}"
        err.close()
        return f"server did not start: {why}"
    _, port, pid = line.split()
    return p, err, int(port), int(pid)


def stop(p: subprocess.Popen[Any]) -> None:
    if p.poll() is None:
        p.kill()
    p.wait()


def run_echo(kind: str, api: str, sizes: list[int], args: argparse.Namespace) -> dict[int, Any]:
    """Results of one server of `kind` over `api`, loaded at each size in turn."""
    started = start_server(kind, api)
    if isinstance(started, str):
        return {s: {"error": started} for s in sizes}
    p, err, port, pid = started
    out: dict[int, Any] = {}
    cmd = [
        *net_tls.client_cmd(api, args), "--port", str(port), "--server-pid", str(pid),
        "--sizes", ",".join(map(str, sizes)), "--conns", str(args.conns),
        "--warmup", str(args.warmup), "--duration", str(args.duration),
        "--stall", str(args.stall),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0")
    env.pop("PYTHONASYNCIODEBUG", None)
    budget = len(sizes) * (args.warmup + args.duration + 2 * args.stall + 5) + 10
    # Everything else the machine did meanwhile: all CPUs' busy time minus the server's,
    # the generator's and this driver's.
    m0, ru0, self0 = (
        machine_cpu(),
        resource.getrusage(resource.RUSAGE_CHILDREN),
        time.process_time(),
    )
    srv0, t0 = micro_proc_cpu(pid), time.monotonic()
    try:
        lp = subprocess.run(
            cmd, capture_output=True, text=True, timeout=budget, env=env,
            preexec_fn=pin_self(1),
        )  # fmt: skip
        m1, ru1 = machine_cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.monotonic() - t0
        ours = (
            (micro_proc_cpu(pid) - srv0) / 1e9
            + (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)
            + (time.process_time() - self0)
        )
        foreign = max(0.0, (m1[0] - m0[0]) - ours) / wall
        steal = (m1[1] - m0[1]) / wall
        for line in lp.stdout.splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            d["foreign_cpu"], d["steal_cpu"] = foreign, steal
            out[d["size"]] = d
        if lp.returncode != 0:
            why = last_line(lp.stderr) or f"exit status {lp.returncode}"
            for s in sizes:
                out.setdefault(s, {"error": f"load generator failed: {why}"})
    except subprocess.TimeoutExpired:
        for s in sizes:
            out.setdefault(s, {"error": f"load generator timed out after {budget:.0f} s"})
    died = p.poll()
    stop(p)
    err.seek(0)
    server_err = err.read()
    err.close()
    errors = [ln for ln in server_err.splitlines() if ln.startswith("ERROR") or "Error" in ln]
    for s in sizes:
        d = out.setdefault(s, {"error": "no result from the load generator"})
        if "error" in d and (errors or died is not None):
            # The server's own complaint says more than the client's symptom.
            why = errors[-1] if errors else last_line(server_err) or f"server exited ({died})"
            d["error"] = f"{d['error']}; server: {why}"
        elif errors:
            d["server_errors"] = errors[:3]
    return out


# -- HTTP: uvicorn + httptools under wrk -----------------------------------------------


WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_wrk(text: str) -> dict[str, Any]:
    def dur(s: str) -> float:
        m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s)
        if not m:
            raise ValueError(s)
        return float(m.group(1)) * WRK_UNITS[m.group(2)]

    out: dict[str, Any] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) == 2 and f[0] in ("50%", "99%"):
            out["p" + f[0][:-1] + "_ms"] = dur(f[1]) * 1e3
        elif line.startswith("Requests/sec:"):
            out["rate"] = float(f[1])
        elif len(f) > 3 and f[1] == "requests" and f[2] == "in":
            out["requests"] = int(f[0])
            out["seconds"] = dur(f[3].rstrip(","))
        elif line.strip().startswith("Non-2xx"):
            out["non_2xx"] = int(f[-1])
        elif line.strip().startswith("Socket errors"):
            out["socket_errors"] = line.strip()
    missing = {"rate", "p50_ms", "p99_ms", "requests"} - out.keys()
    if missing:
        raise ValueError(f"unreadable wrk output (no {', '.join(sorted(missing))})")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_missing() -> str | None:
    """None if the HTTP row can run, else why not."""
    if shutil.which("wrk") is None:
        return "wrk is not installed (apt-get install -y wrk)"
    for mod in ("uvicorn", "httptools"):
        try:
            importlib.metadata.version(mod)
        except importlib.metadata.PackageNotFoundError:
            return f"{mod} is not installed in {sys.prefix} (pip install uvicorn httptools)"
    return None


def run_wrk(port: int, seconds: float, conns: int, threads: int) -> tuple[str, float]:
    """wrk's output and its CPU time (user + system, all threads)."""
    p = subprocess.Popen(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--latency",
         f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=pin_self(2),
    )  # fmt: skip
    assert p.stdout is not None
    text = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed: {last_line(text)}")
    return text, ru.ru_utime + ru.ru_stime


def run_http(kind: str, args: argparse.Namespace, server: str = "uvicorn") -> dict[str, Any]:
    """One HTTP server of `kind` under wrk: uvicorn, or a raw HTTP row (HTTP_SERVERS)."""
    name, env = micro.worker_env(kind)
    loop_arg = UVICORN_LOOP.get(name)
    if loop_arg is None:
        return {"error": f"no uvicorn --loop value for {name}"}
    env["PYTHONHASHSEED"] = "0"
    port = free_port()
    err = tempfile.TemporaryFile(mode="w+")
    if server == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", "net_asgi:app", "--app-dir", str(HERE),
               "--host", "127.0.0.1", "--port", str(port), "--loop", loop_arg,
               "--http", "httptools", "--workers", "1", "--lifespan", "off",
               "--no-access-log", "--log-level", "warning"]  # fmt: skip
    else:
        cmd = [sys.executable, str(HERE / "net_http_raw.py"), name, str(port), server[-1]]
    p = subprocess.Popen(
        cmd, stdout=err, stderr=err, env=env, preexec_fn=pin_self(0)
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        body = b""
        while time.monotonic() < deadline and p.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    status, body = r.status, r.read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            err.seek(0)
            return {"error": f"{server} did not start: " + (last_line(err.read()) or "timeout")}
        if status != 200 or body != b"Hello, world!":
            return {"error": f"wrong response: {status} {body[:40]!r}"}
        if args.http_warmup > 0:
            run_wrk(port, args.http_warmup, args.http_conns, args.http_threads)
        cpu0, m0, self0 = micro_proc_cpu(p.pid), machine_cpu(), time.process_time()
        t0 = time.monotonic()
        text, wrk_cpu = run_wrk(port, args.http_duration, args.http_conns, args.http_threads)
        cpu1, m1 = micro_proc_cpu(p.pid), machine_cpu()
        ours = (cpu1 - cpu0) / 1e9 + wrk_cpu + (time.process_time() - self0)
        foreign = max(0.0, (m1[0] - m0[0]) - ours) / (time.monotonic() - t0)
        if p.poll() is not None:
            err.seek(0)
            return {"error": f"{server} exited during the run: " + last_line(err.read())}
        d = parse_wrk(text)
        d["server_cpu_s"] = (cpu1 - cpu0) / 1e9
        d["server_cpu_per_req_us"] = (cpu1 - cpu0) / 1e3 / d["requests"] if d["requests"] else None
        d["server_util"] = d["server_cpu_s"] / d["seconds"]
        d["client_util"] = wrk_cpu / d["seconds"]
        d["foreign_cpu"], d["steal_cpu"] = foreign, (m1[1] - m0[1]) / d["seconds"]
        if d.get("non_2xx") or d.get("socket_errors"):  # wrk prints these lines only if any
            d["warning"] = f"non-2xx: {d.get('non_2xx', 0)}; {d.get('socket_errors', '')}"
        return d
    except (RuntimeError, ValueError) as e:
        return {"error": str(e)}
    finally:
        stop(p)
        err.close()


def micro_proc_cpu(pid: int) -> int:
    """CPU nanoseconds of every thread of `pid` (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


# -- tables ------------------------------------------------------------------------------


def fmt_rate(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def fmt_us(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def fmt_pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def noise(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = statistics.median(xs)
    return statistics.median(abs(x - m) for x in xs) / m if m else 0.0


def metric_table(
    rows: list[tuple[str, dict[str, list[float]]]],
    loops: list[str],
    higher_better: bool,
    fmt: Callable[[float], str],
    unit: str,
    cell_error: Callable[[str, str], str | None],
    best_round: bool = False,
) -> tuple[list[str], list[list[str]], dict[str, float]]:
    """One table: a row per entry of `rows` (label, {loop: samples}), a column per loop
    (the median of the rounds, or with `best_round` the best one: the highest throughput,
    the lowest latency or CPU), then ratios oriented so that > 1 means ferroloop is better."""
    peers = [k for k in loops if k != "ferroloop"]
    best_pool = [k for k in peers if k in THIRD_PARTY]
    header = (
        ["row"] + [f"{k} {unit}" for k in loops] + [f"vs {k}" for k in peers]
        + (["vs best"] if best_pool else []) + ["noise"]
    )  # fmt: skip
    logs: dict[str, list[float]] = {k: [] for k in peers + ["best"]}
    out = []
    for label, samples in rows:
        pick = (max if higher_better else min) if best_round else statistics.median
        meds = {k: pick(v) if (v := samples.get(k)) else None for k in loops}
        cells = [label]
        for k in loops:
            m = meds[k]
            cells.append(fmt(m) if m is not None else (cell_error(label, k) or "n/a"))
        f = meds["ferroloop"]

        def ratio(m: float | None, f: float | None = f) -> float | None:
            if m is None or not f:
                return None
            return f / m if higher_better else m / f

        for k in peers:
            r = ratio(meds[k])
            cells.append(micro.fmt_ratio(r))
            if r:
                logs[k].append(math.log(r))
        if best_pool:
            cands = [(meds[k], k) for k in best_pool if meds[k] is not None]
            if cands and f:
                m, who = (max if higher_better else min)(cands)
                r = ratio(m)
                assert r is not None
                cells.append(f"{r:.2f}x {who}")
                logs["best"].append(math.log(r))
            else:
                cells.append("-")
        cells.append(f"{max((noise(v) for v in samples.values() if v), default=0) * 100:.1f}%")
        out.append(cells)
    geo = {k: math.exp(sum(v) / len(v)) for k, v in logs.items() if v}
    geo_row = ["geometric mean"] + [""] * len(loops) + [micro.fmt_ratio(geo.get(k)) for k in peers]
    if best_pool:
        geo_row.append(micro.fmt_ratio(geo.get("best")))
    out.append(geo_row + [""])
    return header, out, geo


def util_table(
    rows: list[tuple[str, dict[str, list[float]], dict[str, list[float]]]], loops: list[str]
) -> tuple[list[str], list[list[str]]]:
    header = ["row"] + [f"{k} srv/gen" for k in loops]
    out = []
    for label, srv, cli in rows:
        cells = [label]
        for k in loops:
            s, c = med(srv.get(k, [])), med(cli.get(k, []))
            if s is None or c is None:
                cells.append("n/a")
            else:
                star = " *" if client_limited(s, c) else "  "
                cells.append(f"{fmt_pct(s)}/{fmt_pct(c)}{star}")
        out.append(cells)
    return header, out


def render_text(header: list[str], rows: list[list[str]]) -> str:
    """As run.py's, with the separator only above a closing geometric-mean row."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    sep = "  ".join("-" * w for w in widths)
    out = [line(header), sep]
    for r in rows:
        if r[0] == "geometric mean":
            out.append(sep)
        out.append(line(r))
    return "\n".join(out)


# -- profile mode ------------------------------------------------------------------------


def profile(spec: str, args: argparse.Namespace, out_dir: Path) -> None:
    """Run one echo server under load and profile it: perf (native, kernel included)
    and py-spy (Python frames), one after the other, each for --profile-seconds."""
    try:
        kind, api, size_s = spec.split(":")
        size = int(size_s)
    except ValueError:
        sys.exit("--profile wants LOOP:API:SIZE, e.g. ferroloop:protocol:1024")
    secs = args.profile_seconds
    tools = [
        t
        for t in ("perf", "py-spy")
        if shutil.which(t) or (Path(sys.executable).parent / t).exists()
    ]
    if not tools:
        sys.exit("neither perf nor py-spy is installed")
    started = start_server(kind, api)
    if isinstance(started, str):
        sys.exit(started)
    p, err, port, pid = started
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    total = len(tools) * (secs + 1.5) + 1
    load = subprocess.Popen(
        [*args.client_cmd, "--port", str(port), "--server-pid", str(pid),
         "--sizes", str(size), "--conns", str(args.conns), "--warmup", "0.5",
         "--duration", str(total)],
        stdout=subprocess.PIPE, text=True, preexec_fn=pin_self(1),
    )  # fmt: skip
    try:
        time.sleep(1.0)
        for tool in tools:
            base = out_dir / f"profile-{stamp}-{kind}-{api}-{size}"
            if tool == "perf":
                data = base.with_suffix(".perf.data")
                subprocess.run(
                    ["perf", "record", "-q", "-g", "-p", str(pid), "-o", str(data),
                     "--", "sleep", str(secs)],
                    check=False, capture_output=True,
                )  # fmt: skip
                print(f"\n== perf: {kind} {api} {fmt_size(size)}, {secs:g} s ({data})")
                views = [
                    ("by shared object (self)", ["--no-children", "--sort", "dso"]),
                    ("by symbol (self)", ["--no-children", "--sort", "dso,sym"]),
                    ("by symbol, callees included (syscall wrappers show their kernel cost)",
                     ["--children", "--sort", "dso,sym"]),
                ]  # fmt: skip
                for title, opts in views:
                    rep = subprocess.run(
                        ["perf", "report", "-i", str(data), "--stdio", "-g", "none",
                         "--percent-limit", "1.5", *opts],
                        check=False, capture_output=True, text=True,
                    )  # fmt: skip
                    lines = [ln for ln in rep.stdout.splitlines() if ln and not ln.startswith("#")]
                    print(f"-- {title}")
                    print("\n".join(lines[:30]))
            else:
                spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                raw = base.with_suffix(".pyspy.txt")
                subprocess.run(
                    [spy, "record", "-p", str(pid), "-d", str(max(1, round(secs))), "-r", "500",
                     "--native", "-f", "raw", "-o", str(raw)],
                    check=False, capture_output=True,
                )  # fmt: skip
                print(f"\n== py-spy: {kind} {api} {fmt_size(size)}, {secs:g} s ({raw})")
                print_pyspy(raw)
    finally:
        load.wait(timeout=total + 30)
        stop(p)
        err.close()
    for line in (load.stdout.read() if load.stdout else "").splitlines():
        d = json.loads(line)
        if "error" in d:
            print(f"load: {d['error']}")
        else:
            print(
                f"load (whole run, profilers attached): {d['rate']:.0f} msg/s, server "
                f"{d['server_cpu_per_msg_us']:.2f} us/msg, client CPU {fmt_pct(d['client_util'])}"
            )


def print_pyspy(raw: Path) -> None:
    """Self and inclusive time per Python function from py-spy's collapsed stacks."""
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    try:
        text = raw.read_text()
    except OSError:
        print("(no py-spy output)")
        return
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]  # drop line numbers
        total += k
        self_t[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    if not total:
        print("(no samples: the process was idle, or py-spy could not attach)")
        return
    print(f"{total} samples; top functions by own time (% of samples):")
    for f, k in self_t.most_common(15):
        print(f"  {k * 100 / total:5.1f}%  {f}")
    print("top functions by inclusive time:")
    for f, k in incl.most_common(25):
        print(f"  {k * 100 / total:5.1f}%  {f}")


# -- main --------------------------------------------------------------------------------


def add_variants(ap: argparse.ArgumentParser, requested: list[str], specs: list[str]) -> None:
    """`--variant NAME=DIR` (repeatable): another ferroloop build, its `python/` directory,
    run as `ferroloop[NAME]` right after the first loop of `requested`."""
    for spec in specs:
        vname, sep, path = spec.partition("=")
        if not sep or not vname or not Path(path, "ferroloop").is_dir():
            ap.error(f"--variant {spec!r}: want NAME=DIR, DIR holding a ferroloop package")
        kind = f"ferroloop[{vname}]"
        micro.VARIANTS[kind] = str(Path(path).resolve())
        requested.insert(1, kind)


def available_loops(requested: list[str]) -> tuple[list[str], dict[str, str]]:
    """The loops of `requested` that can run here, and why each other one cannot."""
    loops, missing = [], {}
    for kind in requested:
        why = micro.loop_available(kind)
        if why is None:
            loops.append(kind)
        else:
            missing[kind] = why
    return loops, missing


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="3 short rounds, one wrk round of 2 s")
    ap.add_argument("--rounds", type=int, help="echo rounds (default 5, --quick 3)")
    ap.add_argument("--duration", type=float, help="measured seconds per echo cell (default 0.5)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per echo cell (default 0.2)")
    ap.add_argument("--conns", type=int, default=10, help="echo connections (default 10)")
    ap.add_argument("--stall", type=float, default=3.0, help="seconds without progress = error")
    ap.add_argument(
        "--client", choices=["c", "py"],
        help="load generator: c (net_load.c, built on first use; the default when a C "
        "compiler is available) or py (net_load.py)",
    )  # fmt: skip
    ap.add_argument("--only", help="comma-separated APIs: " + ",".join(a for a, _ in APIS))
    ap.add_argument(
        "--sizes", help="comma-separated message sizes in bytes (default 1024,10240,102400)"
    )
    ap.add_argument("--loops", help="comma-separated loops (default " + ",".join(ALL_LOOPS) + ")")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                    help="another ferroloop build, as in run.py")  # fmt: skip
    ap.add_argument(
        "--no-pin",
        action="store_true",
        help="let the scheduler place server and load generator (default: server on the "
        "first CPU, generator on the second, wrk on all but the first)",
    )
    ap.add_argument("--no-echo", action="store_true", help="skip the echo rows")
    ap.add_argument("--no-http", action="store_true", help="skip the uvicorn/wrk row")
    ap.add_argument(
        "--http-servers",
        default=",".join(HTTP_SERVERS),
        help="comma-separated wrk rows: " + ",".join(HTTP_SERVERS) + " (default: all)",
    )
    ap.add_argument("--http-rounds", type=int, help="uvicorn rounds (default 3, --quick 1)")
    ap.add_argument("--http-duration", type=float, help="wrk -d seconds (default 5, --quick 2)")
    ap.add_argument(
        "--http-warmup", type=float, help="unmeasured wrk seconds first (default 1; 0: none)"
    )
    ap.add_argument("--http-conns", type=int, default=50, help="wrk -c (default 50)")
    ap.add_argument("--http-threads", type=int, default=2, help="wrk -t (default 2)")
    ap.add_argument(
        "--profile",
        metavar="LOOP:API:SIZE",
        help="profile one echo server under load with perf and py-spy, then exit",
    )
    ap.add_argument("--profile-seconds", type=float, default=5.0)
    ap.add_argument("--out", default=str(HERE / "results"), help="directory for JSON/markdown")
    ap.add_argument("--no-save", action="store_true", help="print only, write no result files")
    args = ap.parse_args()

    global PIN
    cpus = sorted(os.sched_getaffinity(0))
    if not args.no_pin and len(cpus) >= 2:
        PIN = ({cpus[0]}, {cpus[1]}, set(cpus[1:]))
    client_note = ""
    if args.client != "py":
        built = build_c_client(Path(args.out))
        if isinstance(built, list):
            args.client_cmd, args.client = built, "c"
        elif args.client == "c":
            sys.exit(f"cannot build the C load generator: {built}")
        else:
            client_note = f"the Python load generator is used: {built}"
            print(f"note: {client_note}", file=sys.stderr)
    if args.client != "c":
        args.client_cmd, args.client = [sys.executable, str(LOAD)], "py"

    if args.profile:
        profile(args.profile, args, Path(args.out))
        return

    q = args.quick
    rounds = args.rounds or (3 if q else 5)
    args.duration = args.duration or (0.15 if q else 0.5)
    args.warmup = args.warmup if args.warmup is not None else (0.05 if q else 0.2)
    http_rounds = args.http_rounds or (1 if q else 3)
    # wrk takes whole seconds only.
    args.http_duration = max(1, round(args.http_duration or (2 if q else 5)))
    args.http_warmup = round(args.http_warmup if args.http_warmup is not None else 1)
    apis = [a for a in APIS if not args.only or a[0] in args.only.split(",")]
    if args.only and len(apis) != len(args.only.split(",")):
        ap.error(f"--only: APIs are {', '.join(a for a, _ in APIS)}")
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(SIZES)

    requested = args.loops.split(",") if args.loops else list(ALL_LOOPS)
    add_variants(ap, requested, args.variant)
    if "ferroloop" not in requested:
        ap.error("ferroloop must be among --loops: every ratio is relative to it")
    loops, missing = available_loops(requested)
    if "ferroloop" not in loops:
        sys.exit(f"ferroloop is not usable: {missing['ferroloop']} (run `make dev` first)")
    for kind, why in missing.items():
        print(f"note: {kind} left out: {why}", file=sys.stderr)
    http_skip = "--no-http" if args.no_http else http_missing()
    if http_skip and not args.no_http:
        print(f"note: uvicorn/wrk row skipped: {http_skip}", file=sys.stderr)

    info = micro.machine_info(loops)
    for mod in ("uvicorn", "httptools"):
        try:
            info["versions"][mod] = importlib.metadata.version(mod)
        except importlib.metadata.PackageNotFoundError:
            pass
    if shutil.which("wrk"):
        v = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        info["versions"]["wrk"] = (
            (v.stdout + v.stderr).split()[1] if (v.stdout + v.stderr).split()[1:] else "?"
        )
    info.update(
        rounds=rounds, http_rounds=http_rounds, loops=loops, missing_loops=missing,
        conns=args.conns, client=args.client, warmup=args.warmup, duration=args.duration,
        sizes=sizes,
        apis=[a for a, _ in apis], http=None if http_skip else {
            "duration": args.http_duration, "warmup": args.http_warmup,
            "conns": args.http_conns, "threads": args.http_threads},
        variants=dict(micro.VARIANTS),
        pinning=None if PIN is None else {
            "server": sorted(PIN[0]), "load_generator": sorted(PIN[1]), "wrk": sorted(PIN[2])},
    )  # fmt: skip
    print(
        f"ferroloop network benchmarks: {0 if args.no_echo else len(apis) * len(sizes)} echo rows "
        f"x {len(loops)} loops x {rounds} rounds"
        + ("" if http_skip else f", uvicorn x {http_rounds} rounds")
        + f" (Python {info['python'].split()[0]}, {info['cpu']}, {info['cpus']} CPUs, "
        f"load {info['loadavg_start']})",
        file=sys.stderr,
    )

    # echo[(api, size)][kind] -> list of per-round result dicts (or {"error": ...})
    echo: dict[str, dict[str, list[dict[str, Any]]]] = {}
    unsupported: dict[tuple[str, str], str] = {}
    t0 = time.monotonic()
    if not args.no_echo:
        for r in range(rounds):
            order = loops[r % len(loops) :] + loops[: r % len(loops)]
            for api, _ in apis:
                for kind in order:
                    if (kind, api) in unsupported:
                        continue
                    res = run_echo(kind, api, sizes, args)
                    for size, d in res.items():
                        echo.setdefault(f"{api}:{size}", {}).setdefault(kind, []).append(d)
                    if r == 0 and all("error" in d for d in res.values()):
                        # Failing at every size in the first round: an API this loop lacks
                        # (or a broken one); later rounds would only wait for it again.
                        unsupported[(kind, api)] = res[sizes[0]]["error"]
            info.setdefault("loadavg_per_round", []).append(micro.loadavg())
            print(
                f"  echo round {r + 1}/{rounds} done, {time.monotonic() - t0:.0f} s, "
                f"load {info['loadavg_per_round'][-1]}",
                file=sys.stderr,
            )

    # https[server][kind] -> list of per-round results
    servers = [sv for sv in args.http_servers.split(",") if sv]
    if any(sv not in HTTP_SERVERS for sv in servers):
        ap.error(f"--http-servers: rows are {', '.join(HTTP_SERVERS)}")
    https: dict[str, dict[str, list[dict[str, Any]]]] = {sv: {} for sv in servers}
    if not http_skip:
        for r in range(http_rounds):
            order = loops[r % len(loops) :] + loops[: r % len(loops)]
            for sv in servers:
                http = https[sv]
                for kind in order:
                    if r > 0 and all("error" in d for d in http.get(kind, [])):
                        continue
                    http.setdefault(kind, []).append(run_http(kind, args, sv))
            info.setdefault("loadavg_per_http_round", []).append(micro.loadavg())
            print(
                f"  uvicorn round {r + 1}/{http_rounds} done, {time.monotonic() - t0:.0f} s, "
                f"load {info['loadavg_per_http_round'][-1]}",
                file=sys.stderr,
            )
    info["loadavg_end"] = micro.loadavg()
    info["ferroloop_extension_end"] = micro.extension_fingerprint()
    info["wall_seconds"] = round(time.monotonic() - t0, 1)

    # -- tables
    def samples(cell: dict[str, list[dict[str, Any]]], key: str) -> dict[str, list[float]]:
        return {
            k: [d[key] for d in ds if "error" not in d and d.get(key) is not None]
            for k, ds in cell.items()
        }

    def first_error(cell: dict[str, list[dict[str, Any]]], kind: str) -> str | None:
        errs = [d["error"] for d in cell.get(kind, []) if "error" in d]
        return errs[0] if errs else None

    labels = {a: lbl for a, lbl in APIS}
    echo_rows = [
        (f"{labels[api]} {fmt_size(size)}", f"{api}:{size}") for api, _ in apis for size in sizes
    ]
    na_notes: dict[str, str] = {}

    def cell_error(cells: dict[str, Any]) -> Callable[[str, str], str | None]:
        def f(label: str, kind: str) -> str | None:
            key = dict(echo_rows).get(label) or label
            e = first_error(cells.get(key, {}), kind)
            if e:
                na_notes.setdefault(f"{label} on {kind}", e)
                return "n/a"
            return None

        return f

    tables: list[tuple[str, list[str], list[list[str]]]] = []
    geos: dict[str, Any] = {}
    if echo:
        specs = [
            ("rate", True, fmt_rate, "msg/s",
             "Throughput, messages/s (median of rounds; ratio = ferroloop / peer)"),
            ("p50_us", False, fmt_us, "us",
             "p50 round trip, microseconds (ratio = peer / ferroloop)"),
            ("p99_us", False, fmt_us, "us",
             "p99 round trip, microseconds (ratio = peer / ferroloop)"),
            ("server_cpu_per_msg_us", False, fmt_us, "us",
             "Server CPU time per message, microseconds, user + system (ratio = peer / ferroloop)"),
        ]  # fmt: skip
        specs += [
            ("rate", True, fmt_rate, "msg/s",
             "Throughput, messages/s, BEST round of each cell (the least disturbed)"),
            ("server_cpu_per_msg_us", False, fmt_us, "us",
             "Server CPU time per message, microseconds, BEST round of each cell"),
        ]  # fmt: skip
        for i, (key, hb, fmt, unit, title) in enumerate(specs):
            best = i >= 4
            rows = [(label, samples(echo.get(ck, {}), key)) for label, ck in echo_rows]
            h, rws, geo = metric_table(rows, loops, hb, fmt, unit, cell_error(echo), best)
            tables.append((title, h, rws))
            geos[key + ("_best" if best else "")] = geo
        urows = [
            (
                label,
                samples(echo.get(ck, {}), "server_util"),
                samples(echo.get(ck, {}), "client_util"),
            )
            for label, ck in echo_rows
        ]
        h, rws = util_table(urows, loops)
        title = (
            "CPU use during the window, share of one core: server / load generator "
            f"(*: generator >= {CLIENT_BUSY:.0%} and above the server: it set the pace)"
        )
        tables.append((title, h, rws))
    for sv, http in https.items():
        if not http:
            continue
        hrows = [
            ("requests/s", "rate", True, fmt_rate),
            ("p50 latency ms", "p50_ms", False, lambda x: f"{x:.2f}"),
            ("p99 latency ms", "p99_ms", False, lambda x: f"{x:.2f}"),
            ("server CPU us/request", "server_cpu_per_req_us", False, fmt_us),
        ]
        what = (
            f"uvicorn {info['versions'].get('uvicorn', '?')} + httptools"
            if sv == "uvicorn"
            else HTTP_SERVERS[sv]
        )
        htitle = (
            f"{what}, hello world, 1 worker, "
            f"wrk -t{args.http_threads} -c{args.http_conns} -d{args.http_duration:g}s "
            f"(median of {http_rounds}; ratios > 1: ferroloop better)"
        )
        parts = []
        hgeo: dict[str, Any] = {}
        for label, key, hb, fmt in hrows:
            h, rws, _g = metric_table(
                [(label, samples(http, key))],
                loops, hb, fmt, "",
                lambda lbl, kind, http=http: "n/a" if first_error(http, kind) else None,
            )  # fmt: skip
            parts.append(rws[0])
            hgeo[key] = rws[0]
        h[0] = sv
        wrk_util = samples(http, "client_util")
        srv_util = samples(http, "server_util")
        util_row = ["CPU srv/wrk"] + [
            f"{fmt_pct(med(srv_util[k]) or 0)}/{fmt_pct(med(wrk_util[k]) or 0)}"
            if srv_util.get(k) else "n/a" for k in loops
        ] + [""] * (len(h) - 1 - len(loops))  # fmt: skip
        parts.append(util_row)
        tables.append((htitle, h, parts))
        geos["http" if sv == "uvicorn" else f"http_{sv}"] = hgeo
        for kind in loops:
            e = first_error(http, kind)
            if e:
                na_notes[f"{sv} on {kind}"] = e
            for d in http.get(kind, []):
                if d.get("warning"):
                    na_notes.setdefault(f"{sv} on {kind} (warning)", d["warning"])

    extra: list[str] = []
    for where, e in na_notes.items():
        extra.append(f"n/a or failed: {where}: {e}")
    for ck, cell in echo.items():
        for kind, ds in cell.items():
            errs = [d["error"] for d in ds if "error" in d]
            ok = len(ds) - len(errs)
            if errs and ok:
                extra.append(f"{ck} on {kind}: {len(errs)} of {len(ds)} rounds failed: {errs[0]}")
            srv_errs = [e for d in ds for e in d.get("server_errors", [])]
            if srv_errs:
                extra.append(f"{ck} on {kind}: server logged errors: {srv_errs[0]}")
    for (kind, api), why in unsupported.items():
        extra.append(f"{api} on {kind}: not retried after round 1 ({why})")
    if http_skip and not args.no_http:
        extra.append(f"uvicorn/wrk row skipped: {http_skip}")
    extra += [f"{k} not run: {why}" for k, why in missing.items()]
    if client_note:
        extra.append(client_note)
    foreign = [
        (d["foreign_cpu"], d.get("steal_cpu", 0.0))
        for cell in echo.values()
        for ds in cell.values()
        for d in ds
        if "foreign_cpu" in d
    ]
    hforeign = sorted(
        d["foreign_cpu"]
        for http in https.values()
        for ds in http.values()
        for d in ds
        if "foreign_cpu" in d
    )
    if hforeign:
        info["foreign_cpu_http"] = {"median": statistics.median(hforeign), "max": hforeign[-1]}
        hmed = statistics.median(hforeign)
        extra.insert(
            0,
            ("WARNING: " if hmed > 0.1 else "")
            + f"other processes used {hmed:.2f} of a CPU (median over uvicorn runs; max "
            f"{hforeign[-1]:.2f}) during the wrk measurements",
        )
    if foreign:
        fs = sorted(f for f, _ in foreign)
        st = statistics.median(x for _, x in foreign)
        info["foreign_cpu"] = {"median": statistics.median(fs), "max": fs[-1], "steal": st}
        msg = (
            f"other processes used {statistics.median(fs):.2f} of a CPU (median over echo "
            f"cells; max {fs[-1]:.2f}) during the measurements; hypervisor steal {st:.2f}"
        )
        extra.insert(0, ("WARNING: " if statistics.median(fs) > 0.1 else "") + msg)
    busy = []
    for label, ck in echo_rows:
        srv_u, cli_u = (
            samples(echo.get(ck, {}), "server_util"),
            samples(echo.get(ck, {}), "client_util"),
        )
        for kind in loops:
            if srv_u.get(kind) and cli_u.get(kind):
                if client_limited(statistics.median(srv_u[kind]), statistics.median(cli_u[kind])):
                    busy.append(f"{label} on {kind}")
    if busy:
        extra.append(
            f"paced by the load generator (it used >= {CLIENT_BUSY:.0%} of a core, more than "
            f"the server): {', '.join(busy)}; there, throughput and latency understate the "
            "server, and CPU per message is the figure to compare"
        )
    if info["ferroloop_extension_end"] != info["ferroloop_extension_start"]:
        extra.insert(0, "WARNING: ferroloop's extension module was rebuilt during the run: "
                     "the ferroloop column mixes two builds")  # fmt: skip
    load0 = float(info["loadavg_start"].split()[0]) if info["loadavg_start"] != "n/a" else 0.0
    if load0 >= 1.0:
        extra.insert(0, f"WARNING: the machine was busy before the run started (1-minute load "
                     f"{load0:.2f} on {info['cpus']} CPUs): other processes compete with the "
                     "servers and the load generator; throughput and latency suffer most, "
                     "CPU per message least")  # fmt: skip

    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    dirty = " (+uncommitted changes)" if info["ferroloop_tree_dirty"] else ""
    head = (
        f"Python {info['python'].split()[0]} | {info['cpu']} x{info['cpus']} | {versions}\n"
        f"ferroloop commit {info['ferroloop_commit']}{dirty} | echo: {args.conns} connections, "
        f"{'C' if args.client == 'c' else 'Python'} load generator, "
        f"{rounds} rounds of {args.warmup:g} s warm-up + {args.duration:g} s measured | "
        + (
            "not pinned"
            if PIN is None
            else f"server on CPU {min(PIN[0])}, generator on CPU {min(PIN[1])}, wrk on CPUs "
            + ",".join(map(str, sorted(PIN[2])))
        )
        + f" | load {info['loadavg_start']} -> {info['loadavg_end']} | {info['wall_seconds']:.0f} s"
    )
    print()
    print(head)
    for title, h, rws in tables:
        print()
        print(title)
        print(render_text(h, rws))
    print(
        "ratios > 1: ferroloop better (more messages/s, lower latency, less CPU); vs best: "
        "against the best of "
        + "/".join(k for k in loops if k in THIRD_PARTY)
        + "; noise: largest median absolute deviation / median among the row's cells"
    )
    for line in extra:
        print("note: " + line)

    if not args.no_save:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        payload = {
            "machine": info,
            "echo": echo,
            "http": https.get("uvicorn", {}),
            "http_raw": {sv: h for sv, h in https.items() if sv != "uvicorn"},
            "notes": extra,
        }
        (out_dir / f"net-{stamp}.json").write_text(json.dumps(payload, indent=2) + "\n")
        md = [f"# ferroloop network benchmarks, {info['date']}", "", "```", head, "```"]
        for title, h, rws in tables:
            md += ["", f"## {title}", "", micro.render_markdown(h, rws)]
        md += ["", "Ratios > 1: ferroloop better.", "", *(f"- {line}" for line in extra)]
        (out_dir / f"net-{stamp}.md").write_text("\n".join(md) + "\n")
        print(f"results: {out_dir / f'net-{stamp}.json'} and .md", file=sys.stderr)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
