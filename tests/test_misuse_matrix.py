"""The misuse matrix (tests/misuse_matrix.py) on the stock loop and on ferroloop, in
subprocesses: every case's outcome on ferroloop must be the stock loop's, but for the
differences listed below with their reason (README: differences from asyncio), and no case
may crash or hang.

Cases run in batches, one subprocess per batch; when a worker dies (a crash: a signal, a
Rust abort) or stops answering (a hang), the case it was running is recorded as such and
the rest of the batch goes on in a new worker. Run this file as a script for the figures.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "misuse_matrix.py")
BATCH = 1000
# No answer for this long while a batch runs: the running case hangs.
STALL = 30.0

# Differences kept on purpose (README: differences from asyncio): (case pattern, ferroloop's
# outcome pattern, reason); `*` matches anything. A deadline asyncio's run step fails on,
# which ferroloop refuses at the call, is a verdict of its own ("raised-early").
KNOWN: list[tuple[str, str, str]] = []
if sys.version_info >= (3, 13):
    KNOWN.append(
        (
            "loop.call_*[arg0=nan]@open",
            "ok",
            "a NaN deadline is due at once; asyncio 3.13's selector raises ValueError on "
            "the NaN timeout when nothing else is ready",
        )
    )
if sys.version_info >= (3, 12):
    KNOWN.append(
        (
            "transport.writelines[valid]@closing",
            "ok:None",
            "asyncio 3.12+'s close() drops the write callback writelines() then calls "
            "(TypeError: 'NoneType' object is not callable); ferroloop ignores the data, "
            "as write() on a closing transport does",
        )
    )
if sys.version_info < (3, 11):
    KNOWN.append(
        (
            "loop.call_at[arg0=None]@*",
            "TypeError",
            "asyncio 3.10 asserts (AssertionError), 3.11+ raises TypeError at the call",
        )
    )
    KNOWN.append(
        (
            "loop.start_tls[*]@*",
            "TimeoutError",
            "TLS has 3.11's semantics on 3.10: start_tls() to a peer that closed does not "
            "finish within the case's deadline, as on asyncio 3.11+; 3.10's older "
            "sslproto returns None",
        )
    )


def _cases() -> list[str]:
    sys.path.insert(0, HERE)
    try:
        import misuse_matrix

        return misuse_matrix.cases()
    finally:
        sys.path.remove(HERE)


def _run_batch(
    loop: str, ids: list[str], out: dict[str, str], cwd: str, stall: float = STALL
) -> None:
    """Runs `ids` in workers until each has an outcome (crash and hang included)."""
    todo = list(ids)
    while todo:
        proc = subprocess.Popen(
            [sys.executable, "-W", "ignore", WORKER, loop],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=cwd,  # relative Unix socket paths land here, apart from the other loop's
        )
        assert proc.stdin is not None and proc.stdout is not None
        # Ids are short: the whole batch fits the pipe before the worker reads it.
        proc.stdin.write(("\n".join(todo) + "\n").encode())
        proc.stdin.close()
        fd = proc.stdout.fileno()
        done, buf, last, hung = 0, b"", time.monotonic(), False
        while True:
            ready, _, _ = select.select([fd], [], [], 0.5)
            chunk = os.read(fd, 1 << 16) if ready else b""
            if chunk:
                last = time.monotonic()
                *lines, buf = (buf + chunk).split(b"\n")
                for line in lines:
                    case, outcome = json.loads(line)
                    out[case] = outcome
                    done += 1
            elif ready:  # EOF: the worker is gone
                proc.wait()
                break
            elif time.monotonic() - last > stall:
                proc.kill()
                proc.wait()
                hung = True
                break
        proc.stdout.close()
        if done < len(todo):
            out[todo[done]] = "hang" if hung else f"crash:{proc.returncode}"
            done += 1
        todo = todo[done:]


def run_all(loop: str, ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="flmis-") as cwd:
        for i in range(0, len(ids), BATCH):
            _run_batch(loop, ids[i : i + BATCH], out, cwd)
    return out


def _glob(pattern: str, text: str) -> bool:
    """Whether `text` matches `pattern`, where only `*` is special (ids have brackets)."""
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), text) is not None


def _known(case: str, outcome: str) -> str | None:
    for pattern, fl_outcome, reason in KNOWN:
        if _glob(pattern, case) and _glob(fl_outcome, outcome):
            return reason
    return None


def compare(stock: dict[str, str], fl: dict[str, str]) -> dict[str, list[str]]:
    """The cases by verdict: same, raised-early (asyncio raises the same type in its run),
    known (listed), unexplained, broken (ferroloop crashed, hung or panicked)."""
    verdicts: dict[str, list[str]] = {
        k: [] for k in ("same", "raised-early", "known", "unexplained", "broken")
    }
    for case, a in stock.items():
        f = fl.get(case, "missing")
        if f.startswith(("crash", "hang", "missing", "setup")) or "PanicException" in f:
            verdicts["broken"].append(f"{case}: {f}")
        elif f == a:
            verdicts["same"].append(case)
        elif a.startswith("ok@run:") and a.split("@run:")[1].split("+")[0] == f:
            verdicts["raised-early"].append(case)
        elif (reason := _known(case, f)) is not None:
            verdicts["known"].append(f"{case}: asyncio {a}, ferroloop {f} ({reason})")
        else:
            verdicts["unexplained"].append(f"{case}: asyncio {a}, ferroloop {f}")
    return verdicts


def summary(verdicts: dict[str, list[str]]) -> str:
    total = sum(len(v) for v in verdicts.values())
    counts = ", ".join(f"{k} {len(v)}" for k, v in verdicts.items())
    lines = [f"misuse matrix: {total} cases; {counts}"]
    for k in ("broken", "unexplained", "known"):
        lines += [f"  {k}: {line}" for line in verdicts[k]]
    return "\n".join(lines)


def _public(obj) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_")}


# Public loop methods ferroloop adds to asyncio's API.
FERROLOOP_ONLY = {"stats"}


def test_public_api_is_the_stock_loops():
    # The matrix calls what the stock loop has; nothing more may be there either (an API
    # asyncio adds in a later version is absent from older versions' builds), but for
    # ferroloop's own documented additions (README: Observability).
    import asyncio

    import ferroloop

    stock, fl = asyncio.SelectorEventLoop(), ferroloop.new_event_loop()
    try:
        assert _public(fl) - FERROLOOP_ONLY == _public(stock)
        assert FERROLOOP_ONLY <= _public(fl)
        for make in (lambda lp: lp.call_soon(print), lambda lp: lp.call_later(1, print)):
            h_stock, h_fl = make(stock), make(fl)
            assert _public(h_fl) == _public(h_stock)
            h_stock.cancel()
            h_fl.cancel()
    finally:
        stock.close()
        fl.close()


def test_a_crash_or_hang_is_recorded_and_the_batch_goes_on(monkeypatch, tmp_path):
    ids = ["loop.time[valid]@open", "loop.stop[valid]@open", "loop.is_closed[valid]@open"]
    monkeypatch.setenv("FERROLOOP_MISUSE_ABORT_ON", ids[1])
    out: dict[str, str] = {}
    _run_batch("ferroloop", ids, out, str(tmp_path))
    assert out == {ids[0]: "ok:float", ids[1]: "crash:-6", ids[2]: "ok:False"}
    monkeypatch.delenv("FERROLOOP_MISUSE_ABORT_ON")
    monkeypatch.setenv("FERROLOOP_MISUSE_HANG_ON", ids[0])
    out = {}
    _run_batch("ferroloop", ids, out, str(tmp_path), stall=1.0)
    assert out == {ids[0]: "hang", ids[1]: "ok:None", ids[2]: "ok:False"}


@pytest.mark.timeout(600)
def test_misuse_matrix_matches_the_stock_loop():
    ids = _cases()
    with ThreadPoolExecutor(2) as pool:
        stock, fl = pool.map(lambda loop: run_all(loop, ids), ["asyncio", "ferroloop"])
    assert not [c for c, o in stock.items() if o.startswith(("crash", "hang", "setup"))]
    verdicts = compare(stock, fl)
    report = summary(verdicts)
    assert not verdicts["broken"], report
    assert not verdicts["unexplained"], report


if __name__ == "__main__":
    t0 = time.monotonic()
    ids = _cases()
    with ThreadPoolExecutor(2) as pool:
        stock, fl = pool.map(lambda loop: run_all(loop, ids), ["asyncio", "ferroloop"])
    print(summary(compare(stock, fl)))
    print(f"({time.monotonic() - t0:.1f} s)")
