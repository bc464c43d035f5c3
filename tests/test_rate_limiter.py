"""The corrected RateLimiter of examples/15_rate_limiter.py, on the stock loop and ferroloop.

The tutorial's own version deadlocks (it re-enters its non-reentrant asyncio.Lock); the
example ships a corrected one. These tests hold it to its contract: never more than `rate`
acquisitions in any window of `per` seconds, callers served in arrival order, and the
tutorial's 20 calls at 5 per second spread over more than 3 seconds. Timing assertions are
lower bounds only: a slow machine may make the limiter slower, never faster.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from time import monotonic
from types import ModuleType
from typing import Any, TypeVar

import pytest

_T = TypeVar("_T")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "15_rate_limiter.py"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rate_limiter_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the example runs its main() only as __main__
    return module


example = _load_example()


def run_on(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    main: Callable[[], Awaitable[_T]],
) -> _T:
    """asyncio.run(main()) on a loop from `loop_factory`."""
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main())  # type: ignore[arg-type]
    loop = loop_factory()  # Python 3.10 has no asyncio.Runner
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def max_in_window(stamps: list[float], per: float) -> int:
    """The most acquisitions that any closed window of `per` seconds holds."""
    return max(sum(1 for t in stamps if start <= t <= start + per) for start in stamps)


def recording_limiter(stamps: list[float]) -> type:
    """The example's RateLimiter, noting the time of each acquisition it grants."""

    class Recording(example.RateLimiter):  # type: ignore[name-defined,misc]
        async def acquire(self) -> None:
            await super().acquire()
            # The stamp the limiter itself stored for this acquisition: nothing else ran
            # between its append and here (lock release does not yield to other tasks).
            stamps.append(self.timestamps[-1])

    return Recording


def test_tutorial_main_holds_5_per_second(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The example's own main(): 20 URLs through RateLimiter(rate=5, per=1.0).
    stamps: list[float] = []
    monkeypatch.setattr(example, "RateLimiter", recording_limiter(stamps))
    start = monotonic()
    run_on(loop_factory, example.main)
    elapsed = monotonic() - start

    urls = [f"https://api.example.com/item/{i}" for i in range(20)]
    assert capsys.readouterr().out.splitlines() == [f"Fetching {url}" for url in urls]
    assert len(stamps) == 20
    assert stamps == sorted(stamps)
    assert max_in_window(stamps, 1.0) == 5
    # Calls 0, 5, 10 and 15 open four successive windows: more than 3 s from first to last.
    assert stamps[15] - stamps[0] > 3.0
    assert elapsed > 3.0


def test_spread_arrivals_stay_within_rate_in_order(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    rate, per, calls = 5, 0.2, 25
    stamps: list[float] = []
    served: list[int] = []

    async def caller(limiter: Any, n: int, delay: float) -> None:
        await asyncio.sleep(delay)
        await limiter.acquire()
        served.append(n)

    async def main() -> None:
        limiter = recording_limiter(stamps)(rate=rate, per=per)
        # Arrivals in bursts and trickles: 8 at once, then one every 15 ms, then 7 at once.
        delays = [0.0] * 8 + [0.01 + 0.015 * i for i in range(10)] + [0.3] * 7
        await asyncio.gather(*[caller(limiter, n, d) for n, d in enumerate(delays)])

    run_on(loop_factory, main)
    assert served == list(range(calls))  # first come, first served
    assert max_in_window(stamps, per) <= rate
    assert all(stamps[i + rate] - stamps[i] > per for i in range(calls - rate))
    assert stamps[20] - stamps[0] > 4 * per


class TutorialRateLimiter:
    """The tutorial's RateLimiter, verbatim: it deadlocks once the rate is exceeded."""

    def __init__(self, rate: int, per: float):
        self.rate = rate
        self.per = per
        self.timestamps: deque[float] = deque()
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self.lock:
            now = monotonic()

            # Remove old timestamps
            while self.timestamps and now - self.timestamps[0] > self.per:
                self.timestamps.popleft()

            if len(self.timestamps) >= self.rate:
                sleep_time = self.per - (now - self.timestamps[0])
                await asyncio.sleep(sleep_time)
                return await self.acquire()

            self.timestamps.append(now)


def test_tutorial_version_deadlocks(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    # Why the example is corrected: the sixth call re-enters the lock its caller holds.
    per = 0.1
    acquired: list[int] = []

    async def caller(limiter: TutorialRateLimiter, n: int) -> None:
        await limiter.acquire()
        acquired.append(n)

    async def main() -> None:
        limiter = TutorialRateLimiter(rate=5, per=per)
        with pytest.raises(asyncio.TimeoutError):
            # 5 windows long: a working limiter would be done after one.
            await asyncio.wait_for(
                asyncio.gather(*[caller(limiter, n) for n in range(6)]), timeout=5 * per
            )

    run_on(loop_factory, main)
    assert acquired == [0, 1, 2, 3, 4]
