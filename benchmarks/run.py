"""Event-loop microbenchmarks: ferroloop against the stock asyncio loop and the peers
(uvloop, rloop, rsloop, blazio, talyn, loopmini: those installed).

    python benchmarks/run.py            # full run, about 5 minutes on 2 cores
    python benchmarks/run.py --quick    # about 1 minute: 5 rounds, half sizes
    python benchmarks/run.py --only queue,lock --rounds 9

Every measurement is a fresh subprocess (benchmarks/worker.py) running one benchmark on
one fresh loop. Measurements are interleaved: round after round, each benchmark is run
once on every loop, the order of the loops rotating from round to round so that no loop
always runs first or last. The figure reported for a cell is the median of its rounds.

Ratios are peer time / ferroloop time: above 1 means ferroloop is faster. "vs best" is
the best (smallest) of the third-party peers' medians (uvloop, rloop, rsloop if present)
over ferroloop's median. See benchmarks/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "worker.py"

# (key in worker.BENCHES, row label, default size). Sizes aim at ~50-250 ms on ferroloop.
BENCHES: list[tuple[str, str, int]] = [
    ("call_soon_flood", "call_soon flood (10k/iter)", 1_000_000),
    ("call_soon_chain", "call_soon chain", 500_000),
    ("call_later_cancel", "call_later, cancel half", 100_000),
    ("timeouts_cancelled", "call_later 10s, all cancelled", 300_000),
    ("create_task_gather", "create_task + gather(all)", 50_000),
    ("small_gathers", "gather of 10, repeated", 50_000),
    ("sleep0", "sleep(0), 100 tasks", 200_000),
    ("queue", "Queue(maxsize=1) 1 prod/1 cons", 100_000),
    ("lock", "Lock, 10 tasks contending", 50_000),
    ("threadsafe", "call_soon_threadsafe, 4 thr", 400_000),
    ("run_in_executor", "run_in_executor, 64 in flight", 10_000),
    ("future_roundtrip", "create_future/set/await", 100_000),
    ("call_at_order", "call_at, 1000 deadlines", 100_000),
]

# ferroloop first: it is what every ratio is relative to.
ALL_LOOPS = ["ferroloop", "asyncio", "uvloop", "rloop", "rsloop", "blazio", "talyn", "loopmini"]
THIRD_PARTY = ("uvloop", "rloop", "rsloop", "blazio", "talyn", "loopmini")
DIST = {k: k for k in ("ferroloop", "uvloop", "rloop", "rsloop", "blazio", "talyn", "loopmini")}


# --variant NAME=DIR: another ferroloop build (a `python/` directory holding a `ferroloop`
# package with its extension module), run as loop "ferroloop[NAME]" with DIR first on
# PYTHONPATH, e.g. to compare a candidate change with the installed build in one run.
VARIANTS: dict[str, str] = {}
# --detector: the installed ferroloop with its blocking detector on, as "ferroloop[detect]".
DETECTOR = "ferroloop[detect]"
DETECT_THRESHOLD = "0.1"


def worker_env(kind: str) -> tuple[str, dict[str, str]]:
    """The loop name to give the worker, and the environment to run it in."""
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)  # debug mode would measure something else
    env["PYTHONHASHSEED"] = "0"
    if kind == DETECTOR:
        env["FERROLOOP_BENCH_DETECT"] = DETECT_THRESHOLD
        return "ferroloop", env
    if kind in VARIANTS:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (VARIANTS[kind], env.get("PYTHONPATH", "")) if p
        )
        return "ferroloop", env
    return kind, env


def loop_available(kind: str) -> str | None:
    """None if `kind` can be created and run in this interpreter, else the reason."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import worker; "
        "l = worker.make_loop(sys.argv[2]); l.run_until_complete(worker._noop()); l.close()"
    )
    name, env = worker_env(kind)
    try:
        p = subprocess.run(
            [sys.executable, "-c", code, str(HERE), name],
            check=False, capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "timed out starting"
    if p.returncode != 0:
        lines = (p.stderr or p.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit status {p.returncode}"
    return None


def run_one(
    kind: str, bench: str, n: int, timeout: float, no_gc: bool, clock: str
) -> dict[str, Any]:
    name, env = worker_env(kind)
    env["FERROLOOP_BENCH_NO_GC"] = "1" if no_gc else "0"
    env["FERROLOOP_BENCH_CLOCK"] = clock
    try:
        p = subprocess.run(
            [sys.executable, str(WORKER), name, bench, str(n)],
            check=False, capture_output=True, text=True, timeout=timeout, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0:
        lines = (p.stderr or p.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {p.returncode}"}
    try:
        out: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"unreadable output: {p.stdout[-200:]!r}"}
    return out


# -- machine and version info ------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info(loops: list[str]) -> dict[str, Any]:
    versions: dict[str, str] = {}
    for kind in loops:
        if kind in DIST:
            try:
                versions[kind] = importlib.metadata.version(DIST[kind])
            except importlib.metadata.PackageNotFoundError:
                versions[kind] = "?"
    versions["asyncio"] = f"CPython {platform.python_version()} stdlib"
    dirty = git(
        "status", "--porcelain", "--untracked-files=no", "--", "src", "python", "Cargo.*"
    )  # fmt: skip
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": sys.version.replace("\n", " "),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "loadavg_start": loadavg(),
        "versions": versions,
        "ferroloop_commit": git("rev-parse", "--short", "HEAD"),
        "ferroloop_tree_dirty": bool(dirty),
        "ferroloop_changed_files": dirty.splitlines(),
        "ferroloop_extension_start": extension_fingerprint(),
    }


def extension_fingerprint() -> str:
    """Path, mtime and hash of the ferroloop extension module the workers will import
    (another `make dev` rebuilding it mid-run would mix two builds in one table)."""
    import hashlib
    import importlib.util

    try:
        spec = importlib.util.find_spec("ferroloop._core")
    except ImportError as e:
        return f"not importable: {e}"
    if spec is None or not spec.origin:
        return "not found"
    path = Path(spec.origin)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    mtime = _dt.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds")
    return f"{path.name} {mtime} sha256:{digest}"


# -- statistics and the table ------------------------------------------------------------


def fmt_n(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def fmt_ms(t: float | None) -> str:
    if t is None:
        return "ERR"
    ms = t * 1000
    return f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def summarize(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for kind, ts in samples.items():
        if ts:
            med = statistics.median(ts)
            mad = statistics.median(abs(t - med) for t in ts)
            out[kind] = {
                "median": med,
                "min": min(ts),
                "max": max(ts),
                "mad_rel": mad / med if med else 0.0,
            }
    return out


def build_rows(
    benches: list[tuple[str, str, int]], loops: list[str], results: dict[str, Any], stat: str
) -> tuple[list[str], list[list[str]], dict[str, Any]]:
    """The table on statistic `stat` ("median" or "min") of each cell's samples."""
    peers = [k for k in loops if k != "ferroloop"]
    best_pool = [k for k in peers if k in THIRD_PARTY]
    header = (
        ["benchmark", "n"]
        + [f"{k} ms" for k in loops]
        + [f"{k}/ferro" for k in peers]
        + (["vs best"] if best_pool else [])
        + ["noise"]
    )
    rows = []
    logs: dict[str, list[float]] = {k: [] for k in peers + ["best"]}
    for key, label, n in benches:
        res = results[key]
        st = res["stats"]
        ferro = st.get("ferroloop", {}).get(stat)
        row = [label, fmt_n(n)] + [fmt_ms(st.get(k, {}).get(stat)) for k in loops]
        ratios: dict[str, float | None] = {}
        for k in peers:
            t = st.get(k, {}).get(stat)
            ratios[k] = t / ferro if (t is not None and ferro) else None
            row.append(fmt_ratio(ratios[k]))
            if ratios[k]:
                logs[k].append(math.log(ratios[k]))  # type: ignore[arg-type]
        if best_pool:
            cands = [(st[k][stat], k) for k in best_pool if k in st]
            if cands and ferro:
                t, who = min(cands)
                ratios["best"] = t / ferro
                res.setdefault("best_peer", {})[stat] = who
                row.append(f"{t / ferro:.2f}x {who}")
                logs["best"].append(math.log(t / ferro))
            else:
                ratios["best"] = None
                row.append("-")
        res.setdefault("ratios", {})[stat] = ratios
        noise = max((s["mad_rel"] for s in st.values()), default=0.0)
        row.append(f"{noise * 100:.1f}%")
        rows.append(row)
    geo = {k: math.exp(sum(v) / len(v)) for k, v in logs.items() if v}
    geo_row = ["geometric mean", ""] + [""] * len(loops)
    geo_row += [fmt_ratio(geo.get(k)) for k in peers]
    if best_pool:
        geo_row.append(fmt_ratio(geo.get("best")))
    geo_row.append("")
    rows.append(geo_row)
    return header, rows, geo


def render_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows[:-1]), sep, line(rows[-1])])


def render_markdown(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |"]
    out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for r in rows:
        out.append("| " + " | ".join(r) + " |")
    return "\n".join(out)


def notes(results: dict[str, Any], loops: list[str]) -> list[str]:
    lines = []
    for key, res in results.items():
        for kind in loops:
            errs = res["errors"].get(kind)
            if errs:
                lines.append(f"{key} on {kind}: {len(errs)} failed run(s): {errs[0]}")
    order = results.get("call_at_order")
    if order:
        for kind in loops:
            infos = order["info"].get(kind)
            if infos:
                i = infos[-1]
                lines.append(
                    f"call_at order on {kind}: {i.get('out_of_deadline_order')} adjacent pairs "
                    f"out of deadline order, {i.get('equal_deadline_not_fifo')} equal-deadline "
                    "pairs not FIFO (last round)"
                )
    return lines


# -- the chart ---------------------------------------------------------------------------


def write_chart(
    benches: list[tuple[str, str, int]],
    loops: list[str],
    results: dict[str, Any],
    path: Path,
    title: str,
) -> str | None:
    """A PNG of the median ratios (peer time / ferroloop time), one bar per peer and row;
    None if matplotlib is missing (it is in requirements/bench.txt), else the reason."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart"
    peers = [k for k in loops if k != "ferroloop"]
    labels = [label for _key, label, _n in benches]
    height = 0.8 / max(len(peers), 1)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) * max(1, len(peers) / 2) + 1.5))
    for j, peer in enumerate(peers):
        ratios = [results[key]["ratios"]["median"].get(peer) for key, _l, _n in benches]
        ys = [i + (j - (len(peers) - 1) / 2) * height for i in range(len(labels))]
        ax.barh(ys, [r or 0 for r in ratios], height=height, label=peer)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ticker = matplotlib.ticker
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g×"))
    ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g×"))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("peer time / ferroloop time (median; > 1: ferroloop faster)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# -- main --------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="5 rounds at half size (~1 minute)")
    ap.add_argument("--rounds", type=int, help="rounds per cell (default 11, --quick 5)")
    ap.add_argument("--scale", type=float, help="multiply every size (default 1, --quick 0.5)")
    ap.add_argument(
        "--only", help="comma-separated benchmark keys: " + ",".join(b[0] for b in BENCHES)
    )
    ap.add_argument(
        "--loops",
        help="comma-separated loops (default: all available of " + ",".join(ALL_LOOPS) + ")",
    )
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per measurement")
    ap.add_argument(
        "--out", default=str(HERE / "results"), help="directory for the JSON/markdown results"
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also run another ferroloop build: DIR is a python/ directory holding its "
        "ferroloop package and extension (repeatable); shown as ferroloop[NAME]",
    )
    ap.add_argument(
        "--no-gc",
        action="store_true",
        help="diagnostic: cyclic GC disabled during the measured region (not the default)",
    )
    ap.add_argument(
        "--detector",
        action="store_true",
        help="also run the installed ferroloop with its blocking detector on (threshold "
        f"{DETECT_THRESHOLD} s), shown as {DETECTOR}",
    )
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what a measurement times: wall-clock time (default) or the CPU time of the "
        "worker process, all threads (steadier on a shared machine; it leaves out time "
        "spent waiting, which matters for the threadsafe and executor rows)",
    )
    ap.add_argument("--no-save", action="store_true", help="print only, write no result files")
    args = ap.parse_args()

    rounds = args.rounds or (5 if args.quick else 11)
    scale = args.scale or (0.5 if args.quick else 1.0)
    benches = [(k, label, max(int(n * scale), 1000)) for k, label, n in BENCHES]
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - {b[0] for b in BENCHES}
        if unknown:
            ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        benches = [b for b in benches if b[0] in wanted]

    requested = args.loops.split(",") if args.loops else list(ALL_LOOPS)
    for spec in args.variant:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path, "ferroloop").is_dir():
            ap.error(f"--variant {spec!r}: want NAME=DIR, DIR holding a ferroloop package")
        kind = f"ferroloop[{name}]"
        VARIANTS[kind] = str(Path(path).resolve())
        requested.insert(1, kind)
    if args.detector:
        requested.insert(1, DETECTOR)
    if "ferroloop" not in requested:
        ap.error("ferroloop must be among --loops: every ratio is relative to it")
    loops, missing = [], {}
    for kind in requested:
        why = loop_available(kind)
        if why is None:
            loops.append(kind)
        else:
            missing[kind] = why
    if "ferroloop" not in loops:
        sys.exit(f"ferroloop is not usable: {missing['ferroloop']} (run `make dev` first)")
    for kind, why in missing.items():
        print(f"note: {kind} left out: {why}", file=sys.stderr)

    info = machine_info(loops)
    info["variants"] = dict(VARIANTS)
    info.update(
        rounds=rounds,
        scale=scale,
        gc_disabled=args.no_gc,
        clock=args.clock,
        loops=loops,
        missing_loops=missing,
    )
    print(
        f"ferroloop benchmarks: {len(benches)} rows x {len(loops)} loops x {rounds} rounds "
        f"(Python {platform.python_version()}, {info['cpu']}, {info['cpus']} CPUs, "
        f"load {info['loadavg_start']})",
        file=sys.stderr,
    )

    results: dict[str, Any] = {
        key: {"label": label, "n": n, "samples": {k: [] for k in loops}, "errors": {}, "info": {}}
        for key, label, n in benches
    }
    t_start = time.monotonic()
    for r in range(rounds):
        # Rotate the order each round: every loop runs first, second, ... equally often.
        order = loops[r % len(loops) :] + loops[: r % len(loops)]
        for key, _label, n in benches:
            for kind in order:
                out = run_one(kind, key, n, args.timeout, args.no_gc, args.clock)
                res = results[key]
                if "error" in out:
                    res["errors"].setdefault(kind, []).append(out["error"])
                else:
                    res["samples"][kind].append(out["time"])
                    if out.get("info"):
                        res["info"].setdefault(kind, []).append(out["info"])
        info.setdefault("loadavg_per_round", []).append(loadavg())
        print(
            f"  round {r + 1}/{rounds} done, {time.monotonic() - t_start:.0f} s, "
            f"load {info['loadavg_per_round'][-1]}",
            file=sys.stderr,
        )

    for res in results.values():
        res["stats"] = summarize(res["samples"])
    tables = {stat: build_rows(benches, loops, results, stat) for stat in ("median", "min")}
    info["loadavg_end"] = loadavg()
    info["ferroloop_extension_end"] = extension_fingerprint()
    info["wall_seconds"] = round(time.monotonic() - t_start, 1)

    titles = {
        "median": f"Median of {rounds} rounds (ms)",
        "min": f"Minimum of {rounds} rounds (ms): the least disturbed run, as interference "
        "from other processes only ever adds time",
    }
    legend = (
        "ratios: peer time / ferroloop time (>1: ferroloop faster); vs best: the fastest of "
        + "/".join(k for k in loops if k in THIRD_PARTY)
        + " / ferroloop; noise: largest median absolute deviation / median among the row's cells"
    )
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    dirty = " (+uncommitted changes)" if info["ferroloop_tree_dirty"] else ""
    head = (
        f"Python {platform.python_version()} | {info['cpu']} x{info['cpus']} | {versions}\n"
        f"ferroloop commit {info['ferroloop_commit']}{dirty}"
        f" | {rounds} rounds, scale {scale:g}{', GC OFF' if args.no_gc else ''}"
        f"{', CPU time' if args.clock == 'cpu' else ''}"
        f" | load {info['loadavg_start']} -> {info['loadavg_end']}"
        f" | {info['wall_seconds']:.0f} s"
    )
    extra = notes(results, loops) + [f"{k} not run: {why}" for k, why in missing.items()]
    if info["ferroloop_extension_end"] != info["ferroloop_extension_start"]:
        extra.insert(
            0,
            "WARNING: ferroloop's extension module was rebuilt during the run "
            f"({info['ferroloop_extension_start']} -> {info['ferroloop_extension_end']}): "
            "the ferroloop column mixes two builds",
        )
    load0 = float(info["loadavg_start"].split()[0]) if info["loadavg_start"] != "n/a" else 0.0
    if load0 >= 1.0:
        extra.insert(
            0,
            f"WARNING: the machine was busy before the run started (1-minute load {load0:.2f} "
            f"on {info['cpus']} CPUs): other processes compete with the measurements",
        )
    print()
    print(head)
    for stat, (header, rows, _geo) in tables.items():
        print()
        print(titles[stat])
        print(render_text(header, rows))
    print(legend)
    for line in extra:
        print("note: " + line)

    if not args.no_save:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        payload = {
            "machine": info,
            "geometric_mean_ratios": {stat: t[2] for stat, t in tables.items()},
            "benchmarks": results,
            "notes": extra,
        }
        (out_dir / f"bench-{stamp}.json").write_text(json.dumps(payload, indent=2) + "\n")
        md = [f"# ferroloop benchmarks, {info['date']}", "", "```", head, "```"]
        for stat, (header, rows, _geo) in tables.items():
            md += ["", f"## {titles[stat]}", "", render_markdown(header, rows)]
        md += ["", legend, "", *(f"- {line}" for line in extra)]
        (out_dir / f"bench-{stamp}.md").write_text("\n".join(md) + "\n")
        chart = out_dir / f"bench-{stamp}.png"
        why = write_chart(benches, loops, results, chart, head)
        print(
            f"results: {out_dir / f'bench-{stamp}.json'}, .md"
            + (f" ({why})" if why else " and .png (the ratios as a chart)"),
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
