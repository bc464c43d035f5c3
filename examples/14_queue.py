"""Tutorial: Queues for Producer-Consumer.

It terminates as written: the producer puts one None after its last item; the consumer that
gets it puts it back (there is room: it has just taken it out, and the producer is done) and
stops, and the other consumer then gets it and stops too, so gather() returns (~5.5 s).
"""

import asyncio


async def producer(queue: asyncio.Queue, n: int):
    for i in range(n):
        item = f"item-{i}"
        await queue.put(item)
        print(f"Produced {item}")
        await asyncio.sleep(0.5)

    # Signal end of production
    await queue.put(None)


async def consumer(queue: asyncio.Queue, name: str):
    while True:
        item = await queue.get()
        if item is None:
            queue.put_nowait(None)  # Propagate to other consumers
            break

        print(f"{name} processing {item}")
        await asyncio.sleep(1)
        queue.task_done()


async def main():
    queue = asyncio.Queue(maxsize=5)

    await asyncio.gather(
        producer(queue, 10),
        consumer(queue, "Consumer 1"),
        consumer(queue, "Consumer 2"),
    )


asyncio.run(main())
