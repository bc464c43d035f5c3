"""The shape of `Loop.stats()`, and the summary `python -m ferroloop --stats` prints.

The numbers are kept by the Rust core (src/loop_core/stats/); this module only types them,
adds up several loops' and formats them.
"""

from __future__ import annotations

import sys
from typing import Any, TypedDict

KINDS = ("tcp", "unix", "tls", "udp", "pipe")
_COUNTS = ("open", "bytes_read", "reads", "bytes_written", "writes")


class TimerStats(TypedDict):
    scheduled: int
    """call_later/call_at timers made."""
    cancelled: int
    """Timers cancelled before they fired."""
    fired: int
    """Timers whose callback ran."""


class TransportStats(TypedDict):
    """One transport kind's I/O. tcp, unix, pipe: syscalls; udp: datagrams; tls: the
    application's plaintext (its records count under tcp or unix, the transport
    underneath)."""

    open: int
    """Transports of this kind open now (made, connection not lost yet)."""
    bytes_read: int
    reads: int
    """tcp, unix, pipe: read syscalls that returned (0 bytes: end of file). udp:
    datagrams received. tls: deliveries to the protocol (data_received/buffer_updated)."""
    bytes_written: int
    writes: int
    """tcp, unix, pipe: write syscalls that took bytes. udp: datagrams sent. tls:
    write()/writelines() calls with data."""


class CallbackDurations(TypedDict):
    count: int
    """Callbacks timed: one in 64 while they are short (under 4 µs start to start), every
    one otherwise (see the stubs of `LoopCore.stats`)."""
    max: float
    p50: float
    p99: float
    """Seconds, from the histogram: each is the upper bound of its 12.5%-wide bucket."""
    histogram: list[tuple[float, float, int]]
    """(from seconds, to seconds, count) for each non-empty bucket."""


class SlowestCallback(TypedDict):
    repr: str
    """As asyncio's slow-callback warning names it: the task for a task step."""
    seconds: float
    timed: bool
    """False: it ran untimed among short callbacks; `seconds` is an upper bound."""


class LoopStats(TypedDict):
    iterations: int
    callbacks: int
    """Callbacks run (task steps included)."""
    max_ready: int
    """The most handles ready in one iteration."""
    timers: TimerStats
    io_events: int
    """Readiness events the poller reported for watched fds."""
    transports: dict[str, TransportStats]
    """By kind: tcp, unix, tls, udp, pipe."""
    servers: int
    """Server objects made and not closed yet (serving or not)."""
    poll_seconds: float
    """Time blocked in the poller (waiting for I/O or a timer, without the GIL)."""
    busy_seconds: float
    """The rest of the time inside run_forever(): callbacks and the loop's own work."""
    callback_durations: CallbackDurations
    slowest_callback: SlowestCallback | None


def merge(all_stats: list[LoopStats]) -> dict[str, Any]:
    """Several loops' stats added up (max_ready and the slowest: the largest)."""
    out: dict[str, Any] = {
        "loops": len(all_stats),
        "iterations": 0,
        "callbacks": 0,
        "max_ready": 0,
        "timers": {"scheduled": 0, "cancelled": 0, "fired": 0},
        "io_events": 0,
        "transports": {k: dict.fromkeys(_COUNTS, 0) for k in KINDS},
        "servers": 0,
        "poll_seconds": 0.0,
        "busy_seconds": 0.0,
        "slowest_callback": None,
    }
    hist: dict[tuple[float, float], int] = {}
    timed, longest = 0, 0.0
    for st in all_stats:
        for key in ("iterations", "callbacks", "io_events", "servers"):
            out[key] += st[key]  # type: ignore[literal-required]
        for key in ("poll_seconds", "busy_seconds"):
            out[key] += st[key]  # type: ignore[literal-required]
        out["max_ready"] = max(out["max_ready"], st["max_ready"])
        for key, n in st["timers"].items():
            out["timers"][key] += n
        for kind, counts in st["transports"].items():
            for key, n in counts.items():
                out["transports"].setdefault(kind, {}).setdefault(key, 0)
                out["transports"][kind][key] += n
        d = st["callback_durations"]
        timed += d["count"]
        longest = max(longest, d["max"])
        for lo, hi, n in d["histogram"]:
            hist[(lo, hi)] = hist.get((lo, hi), 0) + n
        slow = st["slowest_callback"]
        best = out["slowest_callback"]
        if slow is not None and (best is None or slow["seconds"] > best["seconds"]):
            out["slowest_callback"] = slow
    buckets = sorted(hist.items())

    def quantile(q: float) -> float:
        rank, seen = max(1, int(-(-q * timed // 1))), 0
        for (_lo, hi), n in buckets:
            seen += n
            if seen >= rank:
                return min(hi, longest)
        return longest

    out["callback_durations"] = {
        "count": timed,
        "max": longest,
        "p50": quantile(0.5) if timed else 0.0,
        "p99": quantile(0.99) if timed else 0.0,
        "histogram": [(lo, hi, n) for (lo, hi), n in buckets],
    }
    return out


def _secs(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def format_summary(st: dict[str, Any]) -> str:
    """A few lines for a person: what the loop(s) did and where the time went."""
    loops = st.get("loops", 1)
    run = st["poll_seconds"] + st["busy_seconds"]
    busy = 100 * st["busy_seconds"] / run if run else 0.0
    d = st["callback_durations"]
    t = st["timers"]
    lines = [
        f"ferroloop stats ({loops} loop{'s' if loops != 1 else ''}): "
        f"{_secs(run)} running, {busy:.0f}% busy ({_secs(st['busy_seconds'])}), "
        f"{_secs(st['poll_seconds'])} polling",
        f"  {st['iterations']:,} iterations, {st['callbacks']:,} callbacks "
        f"(at most {st['max_ready']:,} ready at once), {st['io_events']:,} I/O events",
        f"  timers: {t['scheduled']:,} scheduled, {t['fired']:,} fired, "
        f"{t['cancelled']:,} cancelled",
    ]
    if d["count"]:
        lines.append(
            f"  callback durations ({d['count']:,} timed): p50 {_secs(d['p50'])}, "
            f"p99 {_secs(d['p99'])}, max {_secs(d['max'])}"
        )
    slow = st["slowest_callback"]
    if slow is not None:
        bound = "" if slow.get("timed", True) else "at most "
        lines.append(f"  slowest: {bound}{_secs(slow['seconds'])}: {slow['repr']}")
    for kind, c in st["transports"].items():
        if c["reads"] or c["writes"] or c["open"]:
            lines.append(
                f"  {kind}: read {_bytes(c['bytes_read'])} in {c['reads']:,} calls, "
                f"wrote {_bytes(c['bytes_written'])} in {c['writes']:,} calls, "
                f"{c['open']} open"
            )
    return "\n".join(lines)


def print_summary(loops: list[Any], file: Any = None) -> None:
    """Prints the summary of `loops` (ferroloop loops, closed or not) to stderr."""
    if not loops:
        return
    merged = merge([lp.stats() for lp in loops])
    print(format_summary(merged), file=sys.stderr if file is None else file, flush=True)
