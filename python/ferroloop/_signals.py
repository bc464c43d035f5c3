"""Unix signal handlers (`add_signal_handler`/`remove_signal_handler`), as asyncio has them.

Python's C-level handler writes each signal number into a socket (`signal.set_wakeup_fd`);
its other end is an ordinary reader on the Rust poller, which queues the registered callback
on the loop. Signals are rare, so this stays in Python.
"""

from __future__ import annotations

import contextvars
import errno
import inspect
import signal
import socket
import sys
import warnings
from asyncio import coroutines
from asyncio.log import logger
from collections.abc import Callable
from typing import Any


def _sighandler_noop(signum: int, frame: object) -> None:
    """The Python-level handler: the wakeup fd does the work."""


def _is_coroutine_function(func: Any) -> bool:
    if sys.version_info >= (3, 14):
        # asyncio.iscoroutinefunction warns from 3.14 on; inspect's is the same test
        # there (the generator-based @asyncio.coroutine it also knew is gone since 3.11).
        return inspect.iscoroutinefunction(func)
    return coroutines.iscoroutinefunction(func)


class SignalHandlers:
    """Mixin for `Loop`: signal handlers over a wakeup socket pair."""

    _signal_handlers: dict[int, tuple[Callable[..., object], tuple[Any, ...], contextvars.Context]]
    _signal_socks: tuple[socket.socket, socket.socket] | None

    def _init_signals(self) -> None:
        self._signal_handlers = {}
        self._signal_socks = None

    def add_signal_handler(self, sig: int, callback: Callable[..., object], *args: Any) -> None:
        """Call `callback(*args)` on the loop whenever signal `sig` arrives (main thread only)."""
        if coroutines.iscoroutine(callback) or _is_coroutine_function(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()  # type: ignore[attr-defined]
        socks = self._signal_socks
        if socks is None:
            socks = socket.socketpair()
            for s in socks:
                s.setblocking(False)
        try:
            # Raises ValueError outside the main thread: a loop running in another thread
            # cannot take signals.
            signal.set_wakeup_fd(socks[1].fileno())
        except (ValueError, OSError) as exc:
            if self._signal_socks is None:
                for s in socks:
                    s.close()
            raise RuntimeError(str(exc)) from None
        if self._signal_socks is None:
            self._signal_socks = socks
            self.add_reader(socks[0], self._read_signals)  # type: ignore[attr-defined]
        self._signal_handlers[sig] = (callback, args, contextvars.copy_context())
        try:
            signal.signal(sig, _sighandler_noop)
            # SA_RESTART: fewer EINTRs in blocking calls of other code.
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    logger.info("set_wakeup_fd(-1) failed: %s", nexc)
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught") from None
            raise

    def remove_signal_handler(self, sig: int) -> bool:
        """Remove the handler of `sig`; True if there was one."""
        self._check_signal(sig)
        if self._signal_handlers.pop(sig, None) is None:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught") from None
            raise
        if not self._signal_handlers:
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                logger.info("set_wakeup_fd(-1) failed: %s", exc)
        return True

    def _check_signal(self, sig: object) -> None:
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def _read_signals(self) -> None:
        socks = self._signal_socks
        if socks is None:
            return
        while True:
            try:
                data = socks[0].recv(4096)
            except InterruptedError:
                continue
            except BlockingIOError:
                return
            if not data:
                return
            for signum in data:
                entry = self._signal_handlers.get(signum)
                if entry is not None:
                    callback, args, context = entry
                    self.call_soon(callback, *args, context=context)  # type: ignore[attr-defined]

    def _close_signals(self) -> None:
        """On loop close: restore default handlers and release the socket pair."""
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(
                f"Closing the loop {self!r} on interpreter shutdown stage, "
                "skipping signal handlers removal",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
            self._signal_handlers.clear()
        socks, self._signal_socks = self._signal_socks, None
        if socks is not None:
            for s in socks:
                s.close()
