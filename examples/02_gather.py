"""Tutorial: Running Multiple Coroutines - asyncio.gather()."""

import asyncio


async def fetch_data(name: str, delay: float) -> dict:
    print(f"Fetching {name}...")
    await asyncio.sleep(delay)
    return {"name": name, "data": f"Data from {name}"}


async def main():
    # Run multiple coroutines concurrently
    results = await asyncio.gather(
        fetch_data("API 1", 2),
        fetch_data("API 2", 1),
        fetch_data("API 3", 3),
    )

    for result in results:
        print(result)


asyncio.run(main())
# Total time: ~3 seconds (not 6 seconds)
