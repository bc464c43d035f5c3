"""Tutorial: Error Handling - Basic Exception Handling."""

import asyncio


async def risky_operation():
    await asyncio.sleep(1)
    raise ValueError("Something went wrong!")


async def main():
    try:
        await risky_operation()
    except ValueError as e:
        print(f"Caught error: {e}")


asyncio.run(main())
