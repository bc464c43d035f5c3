"""A minimal HTTP/1.1 server on one loop: `python benchmarks/net_http_raw.py LOOP PORT WRITES`.

The raw HTTP rows of `net.py`: an `asyncio.Protocol` that answers every GET (keep-alive,
pipelining allowed) with the same 200 response as benchmarks/net_asgi.py, with no HTTP
library: the row measures the loop's transport under wrk. WRITES is how each response is
written: `1`, one `transport.write()` of the whole response; `2`, the head then the body
in two writes, as uvicorn and most HTTP servers do (the row where coalescing the writes
of one callback matters). Serves until killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker import make_loop  # noqa: E402

BODY = b"Hello, world!"
HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
    b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n"
)


class RawHttp(asyncio.Protocol):
    writes = 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        buf = self.pending + data if self.pending else data
        write = self.transport.write
        start = 0
        while (end := buf.find(b"\r\n\r\n", start)) >= 0:
            start = end + 4
            if self.writes == 1:
                write(HEAD + BODY)
            else:
                write(HEAD)
                write(BODY)
        self.pending = buf[start:]


def main() -> None:
    kind, port, writes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    RawHttp.writes = writes
    loop = make_loop(kind)
    server = loop.run_until_complete(loop.create_server(RawHttp, "127.0.0.1", port))
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


if __name__ == "__main__":
    main()
