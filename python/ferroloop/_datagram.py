"""`DatagramTransport`: UDP and Unix datagram endpoints, for now asyncio's own
`_SelectorDatagramTransport` over the Rust poller, with one fix (below). The Rust datagram
transport replaces it later.
"""

from __future__ import annotations

from asyncio import constants, selector_events
from asyncio.log import logger
from typing import Any


class DatagramTransport(selector_events._SelectorDatagramTransport):  # type: ignore[name-defined,misc]
    """asyncio's datagram transport, where `sendto()` after `close()` drops the datagram.

    asyncio (3.10 to 3.13) drops it only for a connected endpoint: an unconnected one still
    sends it while the close is pending, and once `connection_lost` has run, `sendto()`
    raises AttributeError from inside the transport (its socket and loop are gone). uvloop
    drops it in both cases (its test_udp `test_send_after_close`), and so do we: what a
    closing stream transport does with `write()`, counted and warned about the same way.
    """

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._conn_lost and not self._address:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"data argument must be a bytes-like object, not {type(data).__name__!r}"
                )
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.sendto() raised exception.")
            self._conn_lost += 1
            return
        super().sendto(data, addr)
