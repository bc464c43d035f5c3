"""Tutorial: Best Practices - 3. Use TaskGroup for Structured Concurrency (Python 3.11+).

The tutorial leaves task1() and task2() undefined; these two are small stand-ins.
"""

import asyncio
import sys

if sys.version_info < (3, 11):
    print("SKIP: 19_structured_taskgroup needs Python 3.11+ (asyncio.TaskGroup)")
    raise SystemExit(0)


async def task1():
    print("task1 started")
    await asyncio.sleep(1)
    print("task1 finished")


async def task2():
    print("task2 started")
    await asyncio.sleep(0.5)
    print("task2 finished")


# ✅ Python 3.11+ preferred pattern
async def main():
    async with asyncio.TaskGroup() as tg:
        tg.create_task(task1())
        tg.create_task(task2())
    # All tasks complete or error here
    print("All tasks complete")


asyncio.run(main())
