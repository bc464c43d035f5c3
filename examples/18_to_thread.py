"""Tutorial: Best Practices - 2. Avoid Blocking Calls.

The tutorial shows only the two functions; this program supplies what they need: it writes
the small file that `blocking_io()` reads, in a temporary directory that it makes the
working directory (so the tutorial's relative "large_file.txt" is found, and nothing is
left behind), then reads it through `asyncio.to_thread`.
"""

import asyncio
import os
import tempfile
import threading


# ❌ Bad - blocks the event loop
def blocking_io():
    with open("large_file.txt") as f:
        return f.read()


# ✅ Good - run in thread pool
async def non_blocking_io():
    return await asyncio.to_thread(blocking_io)


def write_sample_file():
    with open("large_file.txt", "w") as f:
        f.writelines(f"line {i}: some data\n" for i in range(1000))


async def main():
    data = await non_blocking_io()
    lines = data.splitlines()
    print(f"Read {len(data)} characters, {len(lines)} lines")
    print(f"First line: {lines[0]}")
    print(f"Last line: {lines[-1]}")

    # Several reads at once, each in a worker thread of the loop's default executor.
    results = await asyncio.gather(*[non_blocking_io() for _ in range(4)])
    print(f"4 concurrent reads, all the same: {all(r == data for r in results)}")
    worker = await asyncio.to_thread(threading.get_ident)
    print(f"to_thread ran in a worker thread: {worker != threading.get_ident()}")


with tempfile.TemporaryDirectory() as tmp:
    os.chdir(tmp)
    write_sample_file()
    asyncio.run(main())
    os.chdir(os.path.dirname(tmp))  # leave the directory before it is removed
