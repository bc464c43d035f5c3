"""A load test seen through `loop.stats()` and the blocking detector: the README's picture.

    python benchmarks/observe.py                       # ~8 s, writes docs/stats-load-test.png
    python benchmarks/observe.py --out /tmp/x.png --phase-seconds 3

A ferroloop server (asyncio streams: a request line in, a response line out) takes load from
a separate client process running on the stock loop, in three phases: light (4 connections,
5 ms think time), heavy (32 connections flat out), heavy with a handler that blocks (every
100th request calls time.sleep(0.03), the bug the detector is for). The server samples
`loop.stats()` every 100 ms; the chart shows where its time went per interval (polling,
busy), callbacks per second, the blocking reports, and the callback-duration histogram of
each phase. Requires matplotlib (requirements/bench.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PHASES = [
    ("light: 4 connections, 5 ms think time", 4, 0.005, 0),
    ("heavy: 32 connections flat out", 32, 0.0, 0),
    ("heavy, 1 request in 100 blocks 30 ms", 32, 0.0, 100),
]


async def client(port: int, phase_seconds: float) -> None:
    """The load generator (stock asyncio loop, its own process)."""
    for _label, conns, think, block_every in PHASES:
        end = time.monotonic() + phase_seconds
        counter = [0]

        async def one(
            end: float = end,
            think: float = think,
            every: int = block_every,
            counter: list[int] = counter,
        ) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while time.monotonic() < end:
                counter[0] += 1
                block = every and counter[0] % every == 0
                writer.write(b"block\n" if block else b"hello\n")
                await reader.readline()
                if think:
                    await asyncio.sleep(think)
            writer.close()
            await writer.wait_closed()

        await asyncio.gather(*(one() for _ in range(conns)))


async def serve(phase_seconds: float) -> dict[str, Any]:
    import ferroloop

    loop = asyncio.get_running_loop()
    reports: list[tuple[float, float]] = []
    t0 = time.monotonic()
    detector = ferroloop.detect_blocking(
        threshold=0.02, callback=lambda r: reports.append((time.monotonic() - t0, r.duration))
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            if line == b"block\n":
                time.sleep(0.03)  # the bug: a blocking call in a handler
            writer.write(b"ok " + line)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", str(port), "--phase-seconds", str(phase_seconds)
    )
    samples = []
    while proc.returncode is None:
        samples.append((time.monotonic() - t0, loop.stats()))  # type: ignore[attr-defined]
        try:
            await asyncio.wait_for(proc.wait(), 0.1)
        except asyncio.TimeoutError:
            pass
    samples.append((time.monotonic() - t0, loop.stats()))  # type: ignore[attr-defined]
    detector.stop()
    server.close()
    await server.wait_closed()
    return {"samples": samples, "reports": reports}


def _phase_histograms(
    samples: list[tuple[float, Any]], bounds: list[float]
) -> list[dict[tuple[float, float], int]]:
    """Callback-duration histogram per phase, from the samples nearest the boundaries."""

    def at(t: float) -> dict[tuple[float, float], int]:
        st = min(samples, key=lambda s: abs(s[0] - t))[1]
        return {(lo, hi): n for lo, hi, n in st["callback_durations"]["histogram"]}

    out = []
    for a, b in zip(bounds, bounds[1:]):
        ha, hb = at(a), at(b)
        out.append({lo: n - ha.get(lo, 0) for lo, n in hb.items() if n - ha.get(lo, 0) > 0})
    return out


def plot(data: dict[str, Any], phase_seconds: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = data["samples"]
    ts, busy, poll, cps = [], [], [], []
    for (t1, a), (t2, b) in zip(samples, samples[1:]):
        dt = t2 - t1
        ts.append(t2)
        busy.append((b["busy_seconds"] - a["busy_seconds"]) / dt)
        poll.append((b["poll_seconds"] - a["poll_seconds"]) / dt)
        cps.append((b["callbacks"] - a["callbacks"]) / dt)
    start = samples[0][0]
    bounds = [start + 0.3 + i * phase_seconds for i in range(len(PHASES) + 1)]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7.5), height_ratios=[1.1, 1])
    ax1.stackplot(ts, busy, poll, labels=["busy (callbacks)", "polling"], alpha=0.8)
    ax1.set_ylim(0, 1.15)
    ax1.set_ylabel("share of each 100 ms")
    ax1.set_xlabel("seconds")
    for t, _duration in data["reports"]:
        ax1.axvline(t, color="red", linewidth=0.5, alpha=0.35)
    if data["reports"]:
        ax1.plot(
            [], [], color="red", linewidth=0.6, label=f"blocking reports ({len(data['reports'])})"
        )
    axc = ax1.twinx()
    axc.plot(ts, [c / 1000 for c in cps], color="black", linewidth=1, label="callbacks/s")
    axc.set_ylabel("thousand callbacks/s")
    axc.set_ylim(bottom=0)
    for i, (label, *_rest) in enumerate(PHASES):
        ax1.text(bounds[i] + 0.05, 1.08, label, fontsize=8)
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = axc.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower left")
    ax1.set_title(
        "ferroloop echo server under load: loop.stats() sampled every 100 ms", fontsize=10
    )
    for (label, *_rest), hist in zip(PHASES, _phase_histograms(samples, bounds)):
        if hist:
            # One step per bucket (12.5% wide); empty buckets break the line.
            total = sum(hist.values())
            edges, values = [], []
            for lo, hi in sorted(hist):
                if edges and edges[-1] < lo * 1e6:
                    values.append(float("nan"))
                    edges.append(lo * 1e6)
                elif not edges:
                    edges.append(lo * 1e6)
                values.append(hist[(lo, hi)] / total)
                edges.append(hi * 1e6)
            ax2.stairs(values, edges, label=label, linewidth=1.2)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("callback duration (µs, log scale)")
    ax2.set_ylabel("share of callbacks")
    ax2.set_title(
        "callback durations per phase (loop.stats()['callback_durations']['histogram'])",
        fontsize=10,
    )
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--phase-seconds", type=float, default=2.5)
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "stats-load-test.png")
    ap.add_argument("--json", type=Path, help="also write the samples here")
    ap.add_argument("--client", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        asyncio.run(client(args.client, args.phase_seconds))
        return
    import ferroloop

    data = ferroloop.run(serve(args.phase_seconds))
    if args.json:
        args.json.write_text(json.dumps(data))
    last = data["samples"][-1][1]
    print(
        f"{last['callbacks']:,} callbacks, {len(data['reports'])} blocking reports, "
        f"tcp read {last['transports']['tcp']['bytes_read']:,} bytes",
        file=sys.stderr,
    )
    plot(data, args.phase_seconds, args.out)


if __name__ == "__main__":
    main()
