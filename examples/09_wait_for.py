"""Tutorial: Timeouts and Cancellation - wait_for with Timeout."""

import asyncio


# From the tutorial's asyncio.timeout() section.
async def slow_operation():
    await asyncio.sleep(10)
    return "Done"


async def main():
    try:
        result = await asyncio.wait_for(  # noqa: F841  (the tutorial's code)
            slow_operation(),
            timeout=2.0
        )
    except asyncio.TimeoutError:
        print("Timed out!")


asyncio.run(main())
