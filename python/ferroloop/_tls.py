"""TLS on ferroloop: the Rust `_core.SSLProtocol` (asyncio 3.11+'s `sslproto` semantics,
driving the user's `ssl.SSLContext` through an `SSLObject` over two `MemoryBIO`s), the
application's transport over it, and the loop methods that make them:
`_make_ssl_transport` (create_connection, create_server, the Unix variants, with `ssl=`)
and `start_tls`.

The same implementation runs on every interpreter: asyncio 3.10's own older `sslproto`
(replaced in 3.11 by the one uvloop wrote) is not used on 3.10 either; there
`ssl_shutdown_timeout=` is refused where asyncio 3.10 refuses it, and the shutdown
timeout is 3.11's default.
"""

from __future__ import annotations

import sys
import warnings
from asyncio import constants, sslproto, streams
from typing import Any, Literal

from . import _core
from ._transports import SocketTransport

try:
    import ssl
except ImportError:  # pragma: no cover
    ssl = None  # type: ignore[assignment]

_HANDSHAKE_TIMEOUT = constants.SSL_HANDSHAKE_TIMEOUT
# asyncio 3.10 has no shutdown timeout: 3.11's default.
_SHUTDOWN_TIMEOUT = getattr(constants, "SSL_SHUTDOWN_TIMEOUT", 30.0)

# Bound per instance, straight to the Rust core: a `transport.write()` runs no Python.
_DIRECT = (
    ("write", "_app_write"),
    ("writelines", "_write_appdata"),
    ("is_closing", "_app_is_closing"),
    ("is_reading", "_app_is_reading"),
    ("get_write_buffer_size", "_get_write_buffer_size"),
)


class _SSLProtocolTransport(sslproto._SSLProtocolTransport):
    """The application's side of a TLS connection: asyncio's `_SSLProtocolTransport` API
    (and a subclass of it, for code that checks) over ferroloop's Rust TLS layer."""

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.FALLBACK
    # ferroloop's Rust TLS layer, set in __init__ and never None (typeshed declares
    # asyncio's own `SSLProtocol | None`, which 3.11+ sets to None on close).
    _ssl_protocol: _core.SSLProtocol  # type: ignore[assignment]

    def __init__(self, loop: Any, ssl_protocol: _core.SSLProtocol) -> None:
        self._loop = loop
        self._ssl_protocol = ssl_protocol
        for name, core_name in _DIRECT:
            setattr(self, name, getattr(ssl_protocol, core_name))

    @property
    def _closed(self) -> bool:
        core = self.__dict__.get("_ssl_protocol")
        return core is None or core._app_closed

    @_closed.setter
    def _closed(self, value: bool) -> None:
        self._ssl_protocol._app_closed = value

    def __del__(self, _warn: Any = warnings.warn) -> None:
        core = self.__dict__.get("_ssl_protocol")
        if core is not None and not core._app_closed:
            core._app_closed = True
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)

    def get_extra_info(self, name: Any, default: Any = None) -> Any:
        return self._ssl_protocol._get_extra_info(name, default)

    def set_protocol(self, protocol: Any) -> None:
        self._ssl_protocol._set_app_protocol(protocol)

    def get_protocol(self) -> Any:
        return self._ssl_protocol._app_protocol

    def is_closing(self) -> bool:
        core = self.__dict__.get("_ssl_protocol")
        return core is None or core._app_is_closing()

    def close(self) -> None:
        if not self._closed:
            self._ssl_protocol._app_close()
            return
        # As asyncio: a close() after the connection is gone (or a second one) lets go of
        # the TLS layer, so that a protocol keeping its transport keeps neither the
        # context nor the SSL object alive; the transport is unusable from here.
        self._ssl_protocol = None  # type: ignore[assignment]
        for name, _ in _DIRECT:
            self.__dict__.pop(name, None)

    def is_reading(self) -> bool:
        return self._ssl_protocol._app_is_reading()

    def pause_reading(self) -> None:
        self._ssl_protocol._pause_reading()

    def resume_reading(self) -> None:
        self._ssl_protocol._resume_reading()

    def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None:
        self._ssl_protocol._set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[Any, Any]:
        return self._ssl_protocol._get_write_buffer_limits()

    def get_write_buffer_size(self) -> int:
        return self._ssl_protocol._get_write_buffer_size()

    def set_read_buffer_limits(self, high: Any = None, low: Any = None) -> None:
        self._ssl_protocol._set_read_buffer_limits(high, low)

    def get_read_buffer_limits(self) -> tuple[Any, Any]:
        return self._ssl_protocol._get_read_buffer_limits()

    def get_read_buffer_size(self) -> int:
        return self._ssl_protocol._get_read_buffer_size()

    @property
    def _protocol_paused(self) -> bool:
        # sendfile's fallback looks at it.
        return self._ssl_protocol._app_writing_paused

    def write(self, data: Any) -> None:
        self._ssl_protocol._app_write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._ssl_protocol._write_appdata(list_of_data)

    def write_eof(self) -> None:
        raise NotImplementedError

    def can_write_eof(self) -> Literal[False]:
        return False

    def abort(self) -> None:
        self._ssl_protocol._app_force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        self._ssl_protocol._app_force_close(exc)

    def _test__append_write_backlog(self, data: Any) -> None:
        self._ssl_protocol._test__append_write_backlog(data)


def _create_transport_context(server_side: bool, server_hostname: Any) -> Any:
    if server_side:
        raise ValueError("Server side SSL needs a valid SSLContext")
    # A client may pass ssl=True for a default context, secure for clients.
    sslcontext = ssl.create_default_context()
    if not server_hostname:
        sslcontext.check_hostname = False
    return sslcontext


def new_ssl_protocol(
    loop: Any,
    app_protocol: Any,
    sslcontext: Any,
    waiter: Any,
    server_side: bool = False,
    server_hostname: Any = None,
    call_connection_made: bool = True,
    ssl_handshake_timeout: Any = None,
    ssl_shutdown_timeout: Any = None,
    context: Any = None,
) -> Any:
    """asyncio's `SSLProtocol(...)`, with its checks in its order; the Rust TLS layer
    with its application transport made."""
    if ssl is None:
        raise RuntimeError("stdlib ssl module not available")
    if ssl_handshake_timeout is None:
        ssl_handshake_timeout = _HANDSHAKE_TIMEOUT
    elif ssl_handshake_timeout <= 0:
        raise ValueError(
            f"ssl_handshake_timeout should be a positive number, got {ssl_handshake_timeout}"
        )
    if ssl_shutdown_timeout is None:
        ssl_shutdown_timeout = _SHUTDOWN_TIMEOUT
    elif ssl_shutdown_timeout <= 0:
        raise ValueError(
            f"ssl_shutdown_timeout should be a positive number, got {ssl_shutdown_timeout}"
        )
    if not sslcontext:
        sslcontext = _create_transport_context(server_side, server_hostname)
    hostname = server_hostname if server_hostname and not server_side else None
    core = _core.SSLProtocol(
        loop,
        app_protocol,
        sslcontext,
        waiter,
        server_side,
        hostname,
        call_connection_made,
        ssl_handshake_timeout,
        ssl_shutdown_timeout,
        context,
    )
    core._set_app_transport(_SSLProtocolTransport(loop, core))
    return core


def make_ssl_transport(
    self: Any,
    rawsock: Any,
    protocol: Any,
    sslcontext: Any,
    waiter: Any = None,
    *,
    server_side: bool = False,
    server_hostname: Any = None,
    extra: Any = None,
    server: Any = None,
    ssl_handshake_timeout: Any = _HANDSHAKE_TIMEOUT,
    ssl_shutdown_timeout: Any = _SHUTDOWN_TIMEOUT,
    context: Any = None,
) -> Any:
    """`Loop._make_ssl_transport`: the TLS layer over a new stream transport."""
    if sys.version_info >= (3, 12):  # asyncio 3.12+ refuses an fd that has a transport
        self._ensure_fd_no_transport(rawsock)
    ssl_protocol = new_ssl_protocol(
        self,
        protocol,
        sslcontext,
        waiter,
        server_side,
        server_hostname,
        ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout,
        context=context,
    )
    SocketTransport(self, rawsock, ssl_protocol, None, extra, server, context)
    return ssl_protocol._app_transport


async def _start_tls(
    loop: Any,
    transport: Any,
    protocol: Any,
    sslcontext: Any,
    server_side: bool,
    server_hostname: Any,
    ssl_handshake_timeout: Any,
    ssl_shutdown_timeout: Any,
) -> Any:
    if ssl is None:
        raise RuntimeError("Python ssl module is not available")
    if not isinstance(sslcontext, ssl.SSLContext):
        raise TypeError(
            f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}"
        )
    if not getattr(transport, "_start_tls_compatible", False):
        raise TypeError(f"transport {transport!r} is not supported by start_tls()")
    waiter = loop.create_future()
    ssl_protocol = new_ssl_protocol(
        loop,
        protocol,
        sslcontext,
        waiter,
        server_side,
        server_hostname,
        ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout,
        call_connection_made=False,
    )
    # Paused first, so that no read reaches the TLS layer before its connection_made().
    transport.pause_reading()
    # gh-142352 (CPython 3.13.12/3.14.3): what a stream's reader had buffered of the
    # client's first TLS bytes (sent right behind the plain-text request to upgrade) goes
    # to the TLS layer instead of being lost. On every version.
    if server_side and isinstance(protocol, streams.StreamReaderProtocol):
        reader = getattr(protocol, "_stream_reader", None)
        if reader is not None and reader._buffer:
            ssl_protocol._feed_incoming(reader._buffer)
            reader._buffer.clear()
    transport.set_protocol(ssl_protocol)
    conmade_cb = loop.call_soon(ssl_protocol.connection_made, transport)
    resume_cb = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        conmade_cb.cancel()
        resume_cb.cancel()
        # gh-159049: the failed waiter's exception would keep the TLS layer alive.
        del waiter
        raise
    return ssl_protocol._app_transport


if sys.version_info >= (3, 11):

    async def start_tls(
        self: Any,
        transport: Any,
        protocol: Any,
        sslcontext: Any,
        *,
        server_side: bool = False,
        server_hostname: Any = None,
        ssl_handshake_timeout: Any = None,
        ssl_shutdown_timeout: Any = None,
    ) -> Any:
        """Upgrade `transport` to TLS; return the new transport `protocol` uses now."""
        return await _start_tls(
            self,
            transport,
            protocol,
            sslcontext,
            server_side,
            server_hostname,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )

else:

    async def start_tls(  # type: ignore[misc]
        self: Any,
        transport: Any,
        protocol: Any,
        sslcontext: Any,
        *,
        server_side: bool = False,
        server_hostname: Any = None,
        ssl_handshake_timeout: Any = None,
    ) -> Any:
        """Upgrade `transport` to TLS (asyncio 3.10's signature: no shutdown timeout)."""
        return await _start_tls(
            self,
            transport,
            protocol,
            sslcontext,
            server_side,
            server_hostname,
            ssl_handshake_timeout,
            None,
        )
