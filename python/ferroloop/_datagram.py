"""`DatagramTransport`: ferroloop's UDP and Unix datagram transport, an asyncio
`DatagramTransport` whose work is done by the Rust `DatagramTransportCore` (asyncio's
`_SelectorDatagramTransport` semantics). `sendto` is the core's own bound method, set on
each instance, so a `transport.sendto()` call runs no Python code of ours. The replies
`datagram_received()` sends during a burst of datagrams leave together when it ends
(src/transports/datagram/defer.rs); only the timing of `error_received()` for a reply
that fails (and of `pause_writing()` for one that would block) tells.

Two behaviours differ from asyncio's on purpose (uvloop's test_udp found them;
tests/test_upstream_decisions.py checks both):

* `sendto()` once the transport is closed drops the datagram. asyncio drops it only for a
  connected endpoint: an unconnected one's `sendto()` raises AttributeError from inside
  the transport once `connection_lost` has run (its socket and loop are gone; uvloop's
  `test_send_after_close`). We drop it, counted and warned about as a closed stream
  transport's `write()`. While the close is pending an unconnected endpoint still sends,
  as asyncio does (CPython's gh-156920 test relies on it).
* `sendto(data)` on an endpoint over a socket connected to an unnamed Unix socket (one end
  of a `socket.socketpair()`) sends to that peer. asyncio tells a connected socket by the
  truth of its peer name, which is ``''`` there, so it calls ``sock.sendto(data, None)``
  and closes the transport on the TypeError (uvloop's `test_socketpair` sends). The peer
  name stays ``''``.
"""

from __future__ import annotations

import socket
import sys
import warnings
from asyncio import futures, transports, trsock
from typing import Any

from . import _core

# Bound per instance, straight to the Rust core.
_DIRECT = ("sendto", "is_closing", "get_write_buffer_size")


class DatagramTransport(transports._FlowControlMixin, transports.DatagramTransport):  # type: ignore[name-defined,misc]
    """A datagram endpoint over a UDP or Unix datagram socket.

    A `_FlowControlMixin` and an `asyncio.Transport`, as asyncio's own datagram transport
    is, and an `asyncio.DatagramTransport` on every version (asyncio's is one from 3.12),
    with the mixin's state kept in the Rust core.
    """

    max_size = 256 * 1024  # asyncio's: the most one read asks for

    _extra: dict[str, Any]

    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        protocol: Any,
        address: Any = None,
        waiter: Any = None,
        extra: dict[str, Any] | None = None,
        context: Any = None,
    ) -> None:
        # BaseTransport.__init__, not the mixin's: flow-control state lives in the core.
        transports.BaseTransport.__init__(self, extra)
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        peername = self._extra["peername"]
        # asyncio sends with send() when the peer name is true; a socket connected to an
        # unnamed Unix socket has '' for one, and is connected all the same.
        connected = bool(peername) or (peername == "" and sock.family == socket.AF_UNIX)
        self._sock_fd = sock.fileno()
        core = _core.DatagramTransportCore(
            loop, sock, protocol, self, address, connected, type(sock) is socket.socket, context
        )
        self._core = core
        for name in _DIRECT:
            setattr(self, name, getattr(core, name))
        loop._transport_add(self._sock_fd, self)
        loop.call_soon(protocol.connection_made, self, context=context)
        # only start reading when connection_made() has been called
        loop.call_soon(core._start_reading, context=context)
        if waiter is not None:
            # only wake up the waiter when connection_made() has been called
            loop.call_soon(
                futures._set_result_unless_cancelled,  # type: ignore[attr-defined]
                waiter,
                None,
                context=context,
            )

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        core = self.__dict__.get("_core")
        if core is None or core._sock is None:
            info.append("closed")
        elif core.is_closing():
            info.append("closing")
        info.append(f"fd={self.__dict__.get('_sock_fd', -1)}")
        loop = core._loop if core is not None else None
        if core is not None and loop is not None and not loop.is_closed():
            events = loop._fd_events(self._sock_fd)
            info.append("read=polling" if events & 1 else "read=idle")
            state = "polling" if events & 2 else "idle"
            info.append(f"write=<{state}, bufsize={core.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Any = warnings.warn) -> None:
        core = self.__dict__.get("_core")
        if core is not None and core._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            core._sock.close()

    @property
    def _sock(self) -> socket.socket | None:
        return self._core._sock  # type: ignore[no-any-return]

    @property
    def _address(self) -> Any:
        return self._core._address

    @property
    def _loop(self) -> Any:
        return self._core._loop

    @property
    def _protocol(self) -> Any:
        return self._core.get_protocol()

    @property
    def _closing(self) -> bool:
        return self._core._closing  # type: ignore[no-any-return]

    @property
    def _conn_lost(self) -> int:
        return self._core._conn_lost  # type: ignore[no-any-return]

    @property
    def _protocol_paused(self) -> bool:
        return self._core._protocol_paused  # type: ignore[no-any-return]

    # The rest of the API, for the class and unbound calls; instances have the hot ones
    # bound straight to the core (see _DIRECT).
    def sendto(self, data: Any, addr: Any = None) -> None:
        self._core.sendto(data, addr)

    def close(self) -> None:
        self._core.close()

    def abort(self) -> None:
        self._core.abort()

    def is_closing(self) -> bool:
        return self._core.is_closing()  # type: ignore[no-any-return]

    if sys.version_info >= (3, 11):
        # asyncio 3.10's datagram transport cannot pause reading (Transport's
        # NotImplementedError); 3.11's can.

        @property
        def _paused(self) -> bool:
            return self._core._paused  # type: ignore[no-any-return]

        def is_reading(self) -> bool:
            return self._core.is_reading()  # type: ignore[no-any-return]

        def pause_reading(self) -> None:
            self._core.pause_reading()

        def resume_reading(self) -> None:
            self._core.resume_reading()

    def set_protocol(self, protocol: Any) -> None:
        self._core.set_protocol(protocol)

    def get_protocol(self) -> Any:
        return self._core.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._core.get_write_buffer_size()  # type: ignore[no-any-return]

    def get_write_buffer_limits(self) -> tuple[Any, Any]:
        return self._core.get_write_buffer_limits()  # type: ignore[no-any-return]

    def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None:
        self._core.set_write_buffer_limits(high, low)

    def _read_ready(self) -> None:
        self._core._read_ready()

    def _sendto_ready(self) -> None:
        self._core._sendto_ready()

    def _force_close(self, exc: BaseException | None) -> None:
        self._core._force_close(exc)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        self._core._fatal_error(exc, message)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        self._core._call_connection_lost(exc)
