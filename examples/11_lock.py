"""Tutorial: Synchronization Primitives - asyncio.Lock."""

import asyncio


class SharedResource:
    def __init__(self):
        self.data = 0
        self.lock = asyncio.Lock()

    async def increment(self):
        async with self.lock:
            current = self.data
            await asyncio.sleep(0.1)  # Simulate some work
            self.data = current + 1


async def main():
    resource = SharedResource()

    # Without lock, this would have race conditions
    await asyncio.gather(*[
        resource.increment() for _ in range(10)
    ])

    print(f"Final value: {resource.data}")  # 10


asyncio.run(main())
