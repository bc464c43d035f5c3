"""Tutorial: Real-World Patterns - HTTP Client with aiohttp.

The tutorial's program; `fetch_url` and `fetch_all` are unchanged. Examples never touch the
internet, so instead of https://api.github.com, `main()` fetches the same three
`/users/...` paths from a local aiohttp server standing in for the GitHub API
(`_local_github.py` beside this file), which it starts first, on 127.0.0.1 and a port the
kernel picks, on the same event loop as the client. The tutorial prints each URL it
fetched; the output shows the port as `<port>` so that it is the same on every run.
"""

import asyncio

import aiohttp

from _local_github import local_github, print_port_masked


async def fetch_url(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as response:
        return {
            "url": url,
            "status": response.status,
            "data": await response.json()
        }

async def fetch_all(urls: list[str]) -> list[dict]:
    async with aiohttp.ClientSession() as session:
        tasks = [fetch_url(session, url) for url in urls]
        return await asyncio.gather(*tasks)

async def main():
    async with local_github() as api:  # the local stand-in for https://api.github.com
        urls = [
            f"{api}/users/python",
            f"{api}/users/microsoft",
            f"{api}/users/google",
        ]

        results = await fetch_all(urls)
        for result in results:
            print(f"{result['url']}: {result['status']}")

with print_port_masked():
    asyncio.run(main())
