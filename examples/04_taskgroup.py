"""Tutorial: Running Multiple Coroutines - TaskGroup (Python 3.11+)."""

import asyncio
import sys

if sys.version_info < (3, 11):
    print("SKIP: 04_taskgroup needs Python 3.11+ (asyncio.TaskGroup)")
    raise SystemExit(0)


# From the tutorial's asyncio.gather() section.
async def fetch_data(name: str, delay: float) -> dict:
    print(f"Fetching {name}...")
    await asyncio.sleep(delay)
    return {"name": name, "data": f"Data from {name}"}


async def main():
    async with asyncio.TaskGroup() as tg:
        task1 = tg.create_task(fetch_data("API 1", 2))
        task2 = tg.create_task(fetch_data("API 2", 1))
        task3 = tg.create_task(fetch_data("API 3", 3))

    # All tasks completed here
    print(task1.result())
    print(task2.result())
    print(task3.result())


asyncio.run(main())
