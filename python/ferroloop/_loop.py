"""The `Loop` class: the Rust core plus asyncio's cold paths.

Hot paths (scheduling, timers, the poller, handle dispatch) live in `_core.LoopCore`.
Cold paths whose exact behaviour differs between CPython versions (run_until_complete,
executors, the exception handler, async-generator shutdown, DNS) are CPython's own
`BaseEventLoop` functions bound to this class, so each interpreter gets its own semantics.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import warnings
import weakref
from asyncio import base_events, coroutines, events
from asyncio.log import logger
from typing import Any, NoReturn

from . import _core
from ._signals import SignalHandlers

# Typed as Any: its functions are bound to Loop below, which mypy cannot follow.
_Base: Any = base_events.BaseEventLoop

def _not_implemented(name: str) -> Any:
    def method(self: Loop, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(f"ferroloop: loop.{name}() is not implemented yet")

    method.__name__ = method.__qualname__ = name
    return method


class Loop(_core.LoopCore, SignalHandlers, asyncio.AbstractEventLoop):  # type: ignore[misc]
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
    getaddrinfo = _Base.getaddrinfo
    getnameinfo = _Base.getnameinfo
    _getaddrinfo_debug = _Base._getaddrinfo_debug

    # Methods of later milestones: they exist, and say plainly that they are not built yet.
    create_connection = _not_implemented("create_connection")
    create_server = _not_implemented("create_server")
    create_unix_connection = _not_implemented("create_unix_connection")
    create_unix_server = _not_implemented("create_unix_server")
    create_datagram_endpoint = _not_implemented("create_datagram_endpoint")
    connect_accepted_socket = _not_implemented("connect_accepted_socket")
    sendfile = _not_implemented("sendfile")
    sock_sendfile = _not_implemented("sock_sendfile")
    start_tls = _not_implemented("start_tls")
    sock_recv = _not_implemented("sock_recv")
    sock_recv_into = _not_implemented("sock_recv_into")
    sock_recvfrom = _not_implemented("sock_recvfrom")
    sock_recvfrom_into = _not_implemented("sock_recvfrom_into")
    sock_sendall = _not_implemented("sock_sendall")
    sock_sendto = _not_implemented("sock_sendto")
    sock_connect = _not_implemented("sock_connect")
    sock_accept = _not_implemented("sock_accept")
    connect_read_pipe = _not_implemented("connect_read_pipe")
    connect_write_pipe = _not_implemented("connect_write_pipe")
    subprocess_shell = _not_implemented("subprocess_shell")
    subprocess_exec = _not_implemented("subprocess_exec")

    def __init__(self) -> None:
        self._exception_handler = None
        self._default_executor = None
        self._executor_shutdown_called = False
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self.slow_callback_duration = 0.1
        self._init_signals()
        self.set_debug(coroutines._is_debug_mode())  # type: ignore[attr-defined]

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

    def close(self) -> None:
        """Close the loop: drop pending callbacks, release the poller, stop the executor."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self._debug:
            logger.debug("Close %r", self)
        self._close_core()
        self._close_signals()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()


