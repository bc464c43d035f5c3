"""Tutorial: Timeouts and Cancellation - Using asyncio.timeout() (Python 3.11+)."""

import asyncio
import sys

if sys.version_info < (3, 11):
    print("SKIP: 08_timeout needs Python 3.11+ (asyncio.timeout)")
    raise SystemExit(0)


async def slow_operation():
    await asyncio.sleep(10)
    return "Done"


async def main():
    try:
        async with asyncio.timeout(2):
            result = await slow_operation()  # noqa: F841  (the tutorial's code)
    except TimeoutError:
        print("Operation timed out!")


asyncio.run(main())
