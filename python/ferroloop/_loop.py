"""The `Loop` class: the Rust core plus asyncio's cold paths.

Hot paths (scheduling, timers, the poller, handle dispatch) live in `_core.LoopCore`.
Cold paths whose exact behaviour differs between CPython versions (run_until_complete,
executors, the exception handler, async-generator shutdown, DNS) are CPython's own
`BaseEventLoop` functions bound to this class, so each interpreter gets its own semantics.

The stream and pipe transports and the `sock_*` calls are Rust (`SocketTransport`,
`ReadPipeTransport`/`WritePipeTransport`, `LoopCore.sock_*`); the rest of networking and
subprocesses is asyncio's own selector-loop code over the Rust poller (see `_network.py`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import selectors
import socket
import sys
import threading
import warnings
import weakref
from asyncio import base_events, coroutines, events
from asyncio.log import logger
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _core, _observe
from ._connections import ConnectionMethods
from ._datagram import DatagramTransport
from ._network import bind_network_methods
from ._pipes import ReadPipeTransport, WritePipeTransport
from ._server import ServerMethods
from ._signals import SignalHandlers
from ._subprocess import Subprocesses
from ._tls import make_ssl_transport, start_tls
from ._transports import SocketTransport

_AI_NUMERICHOST = int(socket.AI_NUMERICHOST)

# Typed as Any: its functions are bound to Loop below, which mypy cannot follow.
_Base: Any = base_events.BaseEventLoop


def _is_numeric(host: Any, port: Any) -> bool:
    """Whether getaddrinfo(host, port) needs no name service (IP literal, numeric port)."""
    if isinstance(port, (str, bytes)):
        if not port.isdigit():
            return False
    elif port is not None and not isinstance(port, int):
        return False
    if host is None:
        return True
    if isinstance(host, bytes):
        try:
            host = host.decode("ascii")
        except UnicodeDecodeError:
            return False
    if not isinstance(host, str):
        return False
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


class _SelectorView:
    """The read-only part of a `selectors` selector, over the Rust fd registry."""

    def __init__(self, loop: Loop) -> None:
        self._loop = weakref.ref(loop)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        loop = self._loop()
        if loop is None or loop.is_closed():
            raise RuntimeError("Selector is closed")
        fd = loop._fd_of(fileobj)  # selectors' lookup, by the object for a closed socket
        events = loop._fd_events(fd) if fd >= 0 else 0
        if not events:
            raise KeyError(f"{fileobj!r} is not registered")
        return selectors.SelectorKey(fileobj, fd, events, None)


class Loop(  # type: ignore[misc]
    _core.LoopCore,
    SignalHandlers,
    ServerMethods,
    ConnectionMethods,
    Subprocesses,
    asyncio.AbstractEventLoop,
):
    """A ferroloop event loop: `asyncio.AbstractEventLoop` on a Rust core."""

    # asyncio's own implementations of the cold paths, so that each interpreter version
    # gets exactly its own semantics (they only use the attributes set in __init__ and
    # the private accessors the Rust core provides).
    __repr__ = _Base.__repr__
    run_until_complete = _Base.run_until_complete
    shutdown_asyncgens = _Base.shutdown_asyncgens
    _asyncgen_firstiter_hook = _Base._asyncgen_firstiter_hook
    _asyncgen_finalizer_hook = _Base._asyncgen_finalizer_hook
    run_in_executor = _Base.run_in_executor
    set_default_executor = _Base.set_default_executor
    shutdown_default_executor = _Base.shutdown_default_executor
    _do_shutdown = _Base._do_shutdown
    _check_default_executor = _Base._check_default_executor
    default_exception_handler = _Base.default_exception_handler
    call_exception_handler = _Base.call_exception_handler
    set_exception_handler = _Base.set_exception_handler
    get_exception_handler = _Base.get_exception_handler
    _check_closed = _Base._check_closed
    _check_running = _Base._check_running
    _check_callback = _Base._check_callback
    _check_thread = _Base._check_thread
    _set_coroutine_origin_tracking = _Base._set_coroutine_origin_tracking
    set_debug = _Base.set_debug
    getnameinfo = _Base.getnameinfo
    _getaddrinfo_debug = _Base._getaddrinfo_debug
    # TLS is ferroloop's own (_tls.py over the Rust TLS layer).
    _make_ssl_transport = make_ssl_transport
    start_tls = start_tls

    if TYPE_CHECKING:
        # Bound from asyncio's selector loop by bind_network_methods().
        _ensure_resolved: Callable[..., Any]

    def __init__(self) -> None:
        self._exception_handler = None
        self._default_executor = None
        self._executor_shutdown_called = False
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self.slow_callback_duration = 0.1
        self._selector_view = _SelectorView(self)
        # Read by asyncio's Unix-server code (3.13+: unlinks socket paths on close).
        self._unix_server_sockets: dict[Any, int] = {}
        self._init_signals()
        # The children ferroloop watches (pid -> transport core), released on close.
        self._children: dict[int, Any] = {}
        self.set_debug(coroutines._is_debug_mode())  # type: ignore[attr-defined]
        self._detectors: list[_observe.BlockingDetector] = []
        for hook in _observe.new_loop_hooks:
            hook(self)

    def run_forever(self) -> None:
        """Run the event loop until stop() is called."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            events._set_running_loop(self)
            self._run_forever_core()
        finally:
            self._stopping = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    async def getaddrinfo(
        self,
        host: Any,
        port: Any,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        """`socket.getaddrinfo` without blocking the loop, as asyncio's."""
        self._check_closed()  # asyncio's run_in_executor() checks, whatever the address
        if not self._debug and isinstance(flags, int) and _is_numeric(host, port):
            # Nothing to resolve: answer here rather than round-trip through a thread.
            # (Plain ints: IntFlag's | would mask a bad flags value into a good one.)
            return socket.getaddrinfo(
                host, port, family, type, proto, int(flags) | _AI_NUMERICHOST
            )
        return await _Base.getaddrinfo(  # type: ignore[no-any-return]
            self, host, port, family=family, type=type, proto=proto, flags=flags
        )

    async def _sock_connect_resolving(self, sock: socket.socket, address: Any) -> None:
        """`sock_connect` where the address may need resolving (asyncio's steps; the core's
        `sock_connect` takes the fast path of IP literals itself)."""
        base_events._check_ssl_socket(sock)  # type: ignore[attr-defined]
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        if sock.family == socket.AF_INET or (
            base_events._HAS_IPv6 and sock.family == socket.AF_INET6  # type: ignore[attr-defined]
        ):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto, loop=self
            )
            _, _, _, _, address = resolved[0]
        await self._sock_connect_resolved(sock, address)

    def _make_socket_transport(
        self,
        sock: socket.socket,
        protocol: Any,
        waiter: Any = None,
        *,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        context: Any = None,
    ) -> SocketTransport:
        if sys.version_info >= (3, 12):  # asyncio 3.12+ refuses an fd that has a transport
            self._ensure_fd_no_transport(sock)
        return SocketTransport(self, sock, protocol, waiter, extra, server, context)

    def _make_datagram_transport(
        self,
        sock: socket.socket,
        protocol: Any,
        address: Any = None,
        waiter: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> DatagramTransport:
        if sys.version_info >= (3, 12):  # asyncio 3.12+ refuses an fd that has a transport
            self._ensure_fd_no_transport(sock)
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    def _make_read_pipe_transport(
        self, pipe: Any, protocol: Any, waiter: Any = None, extra: dict[str, Any] | None = None
    ) -> ReadPipeTransport:
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(
        self, pipe: Any, protocol: Any, waiter: Any = None, extra: dict[str, Any] | None = None
    ) -> WritePipeTransport:
        return WritePipeTransport(self, pipe, protocol, waiter, extra)

    @property
    def _selector(self) -> _SelectorView | None:
        # asyncio's transports look at their loop's selector (in their repr); a closed
        # selector loop has none.
        return None if self.is_closed() else self._selector_view

    def close(self) -> None:
        """Close the loop: drop pending callbacks, release the poller, stop the executor."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self._debug:
            logger.debug("Close %r", self)
        _observe.loop_closed(self)
        self._close_core()
        self._close_signals()
        self._close_child_watching()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    def __del__(self, _warn: Any = warnings.warn, _finalizing: Any = sys.is_finalizing) -> None:
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if self.is_running():
                return
            if _finalizing():
                # Collected at interpreter exit, when module globals may already be None:
                # only the native core is released (its fds and queued callbacks).
                self._close_core()
            else:
                self.close()


bind_network_methods(Loop)
