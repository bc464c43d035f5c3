"""Tutorial: Real-World Patterns - Async Iterator."""

import asyncio


class AsyncPaginator:
    def __init__(self, url: str, page_size: int = 10):
        self.url = url
        self.page_size = page_size
        self.current_page = 0
        self.has_more = True

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.has_more:
            raise StopAsyncIteration

        # Simulate API call
        await asyncio.sleep(0.5)

        self.current_page += 1
        if self.current_page >= 5:  # Simulate 5 pages
            self.has_more = False

        return {
            "page": self.current_page,
            "items": [f"item-{i}" for i in range(self.page_size)]
        }


async def main():
    paginator = AsyncPaginator("https://api.example.com/items")

    async for page in paginator:
        print(f"Page {page['page']}: {len(page['items'])} items")


asyncio.run(main())
