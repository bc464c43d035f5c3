"""Tutorial: Running Multiple Coroutines - asyncio.create_task()."""

import asyncio


# From the tutorial's asyncio.gather() section.
async def fetch_data(name: str, delay: float) -> dict:
    print(f"Fetching {name}...")
    await asyncio.sleep(delay)
    return {"name": name, "data": f"Data from {name}"}


async def main():
    # Create tasks for concurrent execution
    task1 = asyncio.create_task(fetch_data("API 1", 2))
    task2 = asyncio.create_task(fetch_data("API 2", 1))

    # Do other work while tasks run
    print("Tasks are running...")

    # Wait for results when needed
    result1 = await task1
    result2 = await task2

    print(result1, result2)


asyncio.run(main())
