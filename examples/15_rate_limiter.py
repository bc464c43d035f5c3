"""Tutorial: Real-World Patterns - Rate-Limited API Client (corrected).

The fix: the tutorial's `acquire()`, once `rate` calls are in the window, sleeps and then
`return await self.acquire()` *inside* `async with self.lock`. asyncio.Lock is not
reentrant, so that inner call waits forever for the lock its own caller holds: the
program deadlocks, on any event loop, as soon as a sixth call comes within `per` seconds
(here: after printing the first five URLs). This version loops instead of recursing,
still holding the lock while it sleeps. Holding it is deliberate: callers get their turn
in arrival order (asyncio.Lock is FIFO), and nobody can take the slot that frees up while
the current caller waits for it. The `while` re-checks the window after each sleep, so a
sleep that ends a hair early only costs one more short sleep.
"""

import asyncio
from collections import deque
from time import monotonic


class RateLimiter:
    def __init__(self, rate: int, per: float):
        self.rate = rate
        self.per = per
        self.timestamps = deque()
        self.lock = asyncio.Lock()

    async def acquire(self):
        async with self.lock:
            while True:  # the tutorial recursed here, re-entering self.lock: deadlock
                now = monotonic()

                # Remove old timestamps
                while self.timestamps and now - self.timestamps[0] > self.per:
                    self.timestamps.popleft()

                if len(self.timestamps) < self.rate:
                    break

                sleep_time = self.per - (now - self.timestamps[0])
                await asyncio.sleep(sleep_time)

            self.timestamps.append(now)


async def rate_limited_fetch(limiter: RateLimiter, url: str):
    await limiter.acquire()
    # Perform actual fetch here
    print(f"Fetching {url}")
    await asyncio.sleep(0.1)


async def main():
    limiter = RateLimiter(rate=5, per=1.0)  # 5 requests per second

    urls = [f"https://api.example.com/item/{i}" for i in range(20)]
    await asyncio.gather(*[
        rate_limited_fetch(limiter, url) for url in urls
    ])


# Guarded (unlike the other examples) so that tests/test_rate_limiter.py can import
# RateLimiter from this file without running the program.
if __name__ == "__main__":
    asyncio.run(main())
