"""A local stand-in for api.github.com's `/users/{name}`, for the aiohttp tutorial programs.

The tutorial's aiohttp programs (20_aiohttp_fetch.py, 21_aiohttp_async_with.py) fetch
https://api.github.com/users/{python,microsoft,google}. Examples never touch the internet,
so each program starts this aiohttp server itself, on 127.0.0.1 and a port the kernel
picks, on the same event loop as its client, and fetches from it instead. The answers are
shaped like the GitHub API's (a JSON object per user, 404 with a JSON message otherwise);
their values are fixed made-up figures, so the programs print the same on every run.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import AsyncIterator, Iterator

from aiohttp import web

# Fixed values in the shape of GitHub's user objects (not the real figures).
USERS = {
    "python": {"id": 1525981, "name": "Python", "type": "Organization", "public_repos": 88},
    "microsoft": {"id": 6154722, "name": "Microsoft", "type": "Organization", "public_repos": 7000},
    "google": {"id": 1342004, "name": "Google", "type": "Organization", "public_repos": 2700},
}

# The port of the last server started: see print_port_masked().
port: int | None = None


async def _user(request: web.Request) -> web.Response:
    login = request.match_info["login"]
    if login not in USERS:
        return web.json_response(
            {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"},
            status=404,
        )
    return web.json_response(
        {"login": login, **USERS[login], "html_url": f"https://github.com/{login}"}
    )


@contextlib.asynccontextmanager
async def local_github() -> AsyncIterator[str]:
    """Serve the stand-in API on 127.0.0.1 (ephemeral port); yields its base URL."""
    global port
    app = web.Application()
    app.router.add_get("/users/{login}", _user)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def print_port_masked() -> Iterator[None]:
    """Print what the block prints, with the server's ephemeral port shown as `<port>`.

    The tutorial prints each URL it fetched, port included; masking the port keeps the
    output the same from run to run (and on both loops).
    """
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield
    finally:
        text = out.getvalue()
        if port is not None:
            text = text.replace(f"127.0.0.1:{port}", "127.0.0.1:<port>")
        sys.stdout.write(text)
        sys.stdout.flush()
