"""`DatagramTransport`: UDP and Unix datagram endpoints, for now asyncio's own
`_SelectorDatagramTransport` over the Rust poller, with two fixes (below). The Rust datagram
transport replaces it later.
"""

from __future__ import annotations

import socket
from asyncio import constants, selector_events
from asyncio.log import logger
from typing import Any


class _UnnamedPeer(str):
    """The peer name of a socket connected to an unnamed Unix socket: ``''``, and true."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return True


class DatagramTransport(selector_events._SelectorDatagramTransport):  # type: ignore[name-defined,misc]
    """asyncio's datagram transport, with two fixes uvloop's test_udp found.

    * `sendto()` once the transport is closed drops the datagram. asyncio drops it only for
      a connected endpoint: an unconnected one's `sendto()` raises AttributeError from
      inside the transport once `connection_lost` has run (its socket and loop are gone;
      uvloop's `test_send_after_close`). We drop it, counted and warned about as a closed
      stream transport's `write()`. While the close is pending an unconnected endpoint
      still sends, as asyncio does (CPython's gh-156920 test relies on it).
    * `sendto(data)` on an endpoint over a socket connected to an unnamed Unix socket (one
      end of a `socket.socketpair()`) sends to that peer. asyncio tells a connected socket
      by the truth of its peer name, which is ``''`` there, so it calls
      ``sock.sendto(data, None)`` and closes the transport on the TypeError (uvloop's
      `test_socketpair` sends). The peer name stays ``''`` (a str equal to it), but true.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._extra.get("peername") == "" and self._sock.family == socket.AF_UNIX:
            self._extra["peername"] = _UnnamedPeer()

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._sock is None and not self._address:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"data argument must be a bytes-like object, not {type(data).__name__!r}"
                )
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.sendto() raised exception.")
            self._conn_lost += 1
            return
        super().sendto(data, addr)
