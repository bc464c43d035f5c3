"""`SocketTransport`: ferroloop's TCP/Unix stream transport, an `asyncio.Transport` whose
work is done by the Rust `StreamTransportCore` (asyncio's `_SelectorSocketTransport`
semantics). The hot methods are the core's own bound methods (`_core.CoreMethod`, bound on
an instance's first use), so a `transport.write()` call runs no Python code of ours.
"""

from __future__ import annotations

import _socket
import socket
import warnings
from asyncio import constants, transports, trsock
from typing import Any

from ._core import CoreMethod, StreamTransportCore


def _set_nodelay(sock: socket.socket) -> None:
    """Disable Nagle's algorithm on a TCP stream socket, as asyncio and uvloop do.

    asyncio's `base_events._set_nodelay` also requires ``sock.proto == IPPROTO_TCP``, so a
    socket made with plain ``socket.socket()`` (proto 0, which is TCP all the same) and
    passed as ``sock=`` to `create_connection`/`create_server` keeps Nagle's delay, and so
    do the connections its listener accepts; uvloop sets the option on every TCP stream
    (its test_tcp `test_create_server_1`, `test_create_connection_open_con_sock`), and so do
    we. Other protocols over SOCK_STREAM (SCTP) are left alone.
    """
    # The C members, not socket.socket's properties, which build an enum each (two
    # Python calls per connection).
    try:
        family, stype = _family(sock), _type(sock)
    except TypeError:  # not a socket object (a test's mock of one)
        family, stype = sock.family, sock.type
    if family in _INET and stype == socket.SOCK_STREAM and sock.proto in (0, socket.IPPROTO_TCP):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_open = StreamTransportCore._open
_family = _socket.socket.family.__get__
_type = _socket.socket.type.__get__
_INET = (int(socket.AF_INET), int(socket.AF_INET6))


class SocketTransport(transports._FlowControlMixin):  # type: ignore[name-defined,misc]
    """A stream transport over a connected TCP or Unix socket.

    A `_FlowControlMixin` as asyncio's own stream transports are (sendfile's fallback
    requires it), with the mixin's state kept in the Rust core.
    """

    _extra: dict[str, Any]
    # Set by the native start (src/transports/stream/setup.rs).
    _core: StreamTransportCore
    _sock_fd: int
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        protocol: Any,
        waiter: Any = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        context: Any = None,
    ) -> None:
        # Transport.__init__'s one line (BaseTransport's slot), then the rest of asyncio's
        # _SelectorSocketTransport.__init__ in Rust (src/transports/stream/setup.rs): the
        # extra info, the core, the server's attach, the fd's registration, the
        # callbacks scheduled.
        self._extra = {} if extra is None else extra
        _open(self, loop, sock, protocol, waiter, server, context)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = self._extra
        if name == "socket" and "socket" not in extra:
            # An accepted connection's socket, made on first request (asyncio's
            # TransportSocket over the socket object, closed once the connection is lost).
            sock = self._core._socket_extra()
            if sock is None:
                return default
            extra["socket"] = trsock.TransportSocket(sock)
        return extra.get(name, default)

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        if not self._core._has_sock:
            info.append("closed")
        elif self.is_closing():
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        loop = self._core._loop
        if loop is not None and not loop.is_closed():
            events = loop._fd_events(self._sock_fd)
            info.append("read=polling" if events & 1 else "read=idle")
            state = "polling" if events & 2 else "idle"
            info.append(f"write=<{state}, bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Any = warnings.warn) -> None:
        core = self.__dict__.get("_core")
        if core is not None and core._has_sock:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            core._release_sock()

    @property
    def _server(self) -> Any:
        core = self.__dict__.get("_core")
        return None if core is None else core._server

    @property
    def _sock(self) -> socket.socket | None:
        return self._core._sock  # type: ignore[no-any-return]

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
    def _paused(self) -> bool:
        return self._core._paused  # type: ignore[no-any-return]

    @property
    def _eof(self) -> bool:
        return self._core._eof  # type: ignore[no-any-return]

    @property
    def _protocol_paused(self) -> bool:
        return self._core._protocol_paused  # type: ignore[no-any-return]

    # The Transport API. The hot methods are the core's own, bound on first use
    # (`CoreMethod`), so that a call runs no Python code of ours.
    write = CoreMethod("write")
    writelines = CoreMethod("writelines")
    def write_eof(self) -> None:
        self._core.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self._core.close()

    def abort(self) -> None:
        self._core.abort()

    is_closing = CoreMethod("is_closing")
    is_reading = CoreMethod("is_reading")
    pause_reading = CoreMethod("pause_reading")
    resume_reading = CoreMethod("resume_reading")
    def set_protocol(self, protocol: Any) -> None:
        self._core.set_protocol(protocol)

    def get_protocol(self) -> Any:
        return self._core.get_protocol()

    get_write_buffer_size = CoreMethod("get_write_buffer_size")
    def get_write_buffer_limits(self) -> tuple[Any, Any]:
        return self._core.get_write_buffer_limits()  # type: ignore[no-any-return]

    def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None:
        self._core.set_write_buffer_limits(high, low)

    def _force_close(self, exc: BaseException | None) -> None:
        self._core._force_close(exc)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        self._core._fatal_error(exc, message)

    def _make_empty_waiter(self) -> Any:
        return self._core._make_empty_waiter()

    def _reset_empty_waiter(self) -> None:
        self._core._reset_empty_waiter()
