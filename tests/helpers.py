"""Helpers shared by the test modules: running a coroutine with a deadline, connected
socket pairs made through the loop under test, and running a loop for a while."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

LOCAL = "127.0.0.1"

_T = TypeVar("_T")


def run(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, _T], timeout: float = 30.0
) -> _T:
    """`loop.run_until_complete(coro)`, failing after `timeout` rather than hanging."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def run_for(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    """Runs `loop` for `seconds` (a timer stops it)."""
    loop.call_later(seconds, loop.stop)
    loop.run_forever()


async def pair(loop: asyncio.AbstractEventLoop) -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair of non-blocking sockets, made with sock_accept/sock_connect."""
    with socket.socket() as lsock:
        lsock.bind((LOCAL, 0))
        lsock.listen()
        lsock.setblocking(False)
        csock = socket.socket()
        csock.setblocking(False)
        accepting = asyncio.ensure_future(loop.sock_accept(lsock))
        await loop.sock_connect(csock, lsock.getsockname())
        conn, addr = await accepting
        assert addr == csock.getsockname()
        return csock, conn


def asyncio_bug(reason: str) -> Any:
    """Strict xfail on the stock param only, for an asyncio bug ferroloop fixes on purpose:
    ferroloop must pass."""
    import pytest

    return pytest.mark.parametrize(
        "loop_factory",
        [
            pytest.param(
                "asyncio", marks=pytest.mark.xfail(strict=True, reason=f"asyncio: {reason}")
            ),
            "ferroloop",
        ],
        indirect=True,
    )


class Errors:
    """An exception handler that records the contexts it is given."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.contexts.append(context)

    def messages(self) -> list[str]:
        return [str(c.get("message")) for c in self.contexts]


def open_fds() -> int:
    """How many file descriptors this process has open."""
    import os

    return len(os.listdir("/proc/self/fd"))
