"""Tutorial: Understanding Async/Await - The Basics."""

import asyncio


async def hello():
    print("Hello")
    await asyncio.sleep(1)  # Non-blocking sleep
    print("World")


# Running the coroutine
asyncio.run(hello())
