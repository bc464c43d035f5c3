"""The hello-world ASGI app `net.py` serves with uvicorn + httptools under wrk.

    uvicorn net_asgi:app --app-dir benchmarks --http httptools --loop ferroloop:new_event_loop

GET / answers 200 with a fixed 13-byte text body and a Content-Length, so every
response is the same size on every loop. No framework: the row measures uvicorn's
protocol (httptools' parser) over the loop's transports.
"""

from __future__ import annotations

from typing import Any

BODY = b"Hello, world!"
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())],
}
RESPONSE = {"type": "http.response.body", "body": BODY}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    await send(START)
    await send(RESPONSE)
