"""Tutorial: Synchronization Primitives - asyncio.Semaphore."""

import asyncio


async def limited_task(semaphore: asyncio.Semaphore, n: int):
    async with semaphore:
        print(f"Task {n} starting")
        await asyncio.sleep(1)
        print(f"Task {n} done")


async def main():
    # Only 3 tasks can run concurrently
    semaphore = asyncio.Semaphore(3)

    await asyncio.gather(*[
        limited_task(semaphore, i) for i in range(10)
    ])


asyncio.run(main())
