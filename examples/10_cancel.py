"""Tutorial: Timeouts and Cancellation - Cancelling Tasks."""

import asyncio


async def long_running_task():
    try:
        while True:
            print("Working...")
            await asyncio.sleep(1)
    except asyncio.CancelledError:
        print("Task was cancelled!")
        # Cleanup code here
        raise  # Re-raise to properly cancel


async def main():
    task = asyncio.create_task(long_running_task())

    await asyncio.sleep(3)
    task.cancel()

    try:
        await task
    except asyncio.CancelledError:
        print("Main: Task cancelled successfully")


asyncio.run(main())
