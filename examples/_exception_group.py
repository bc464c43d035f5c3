"""The tutorial's ExceptionGroup program (Python 3.11+), run by 07_exception_group.py.

Kept in its own module because `except*` does not compile before Python 3.11.
"""

import asyncio


# From the tutorial's "Handling Errors in gather()" section.
async def might_fail(n: int):
    await asyncio.sleep(1)
    if n == 2:
        raise ValueError(f"Task {n} failed!")
    return f"Task {n} succeeded"


async def main():
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(might_fail(1))
            tg.create_task(might_fail(2))
            tg.create_task(might_fail(3))
    except* ValueError as eg:
        for exc in eg.exceptions:
            print(f"Caught: {exc}")


if __name__ == "__main__":
    asyncio.run(main())
