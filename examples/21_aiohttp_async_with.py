"""Tutorial: Best Practices - 1. Use async with for Resources.

The tutorial's "Good" snippet (`async with aiohttp.ClientSession()` around
`async with session.get(url)`), made into a program: it fetches the three users of the
aiohttp program (20_aiohttp_fetch.py) and one that does not exist from the same local
stand-in for the GitHub API (`_local_github.py`, on 127.0.0.1 and an ephemeral port), and
shows what it received and that both `async with` blocks closed what they opened. The
"Bad" snippet is left out: it leaks the session on purpose.
"""

import asyncio

import aiohttp

from _local_github import local_github


async def get_user(api: str, name: str) -> None:
    url = f"{api}/users/{name}"
    # ✅ Good
    async with aiohttp.ClientSession() as session:  # noqa: SIM117 (the tutorial's form)
        async with session.get(url) as response:
            data = await response.json()
    if response.status == 200:
        print(f"{data['login']}: {data['name']} ({data['type']}, id {data['id']}), "
              f"{data['public_repos']} public repos")
    else:
        print(f"{name}: {response.status} {data['message']}")
    print(f"  session closed: {session.closed}, response closed: {response.closed}")


async def main():
    async with local_github() as api:
        for name in ("python", "microsoft", "google", "no-such-user"):
            await get_user(api, name)


asyncio.run(main())
