"""`ReadPipeTransport` and `WritePipeTransport`: ferroloop's pipe transports (pipes, FIFOs,
character devices, ptys), asyncio transports whose work is done by the Rust
`ReadPipeTransportCore`/`WritePipeTransportCore` with the semantics of asyncio's
`_UnixReadPipeTransport`/`_UnixWritePipeTransport`.

Both take asyncio's constructor arguments, plus `context` (the `contextvars.Context` the
protocol's callbacks run in; None, asyncio's way for pipes on every version: a copy of
the current one per callback)::

    ReadPipeTransport(loop, pipe, protocol, waiter=None, extra=None, context=None)
    WritePipeTransport(loop, pipe, protocol, waiter=None, extra=None, context=None)

`pipe` is a file object (its `fileno()` is used; it is closed with the transport). They
check the file, make it non-blocking and schedule `protocol.connection_made(transport)`,
the start of reading (or of watching for the reader's departure) and `waiter`'s result,
as asyncio's do. The loop's `_make_read_pipe_transport`/`_make_write_pipe_transport`
make them, for `connect_read_pipe`/`connect_write_pipe` and subprocess pipes.
"""

from __future__ import annotations

import os
import stat
import sys
import warnings
from asyncio import futures, transports
from typing import Any

from . import _core

# Bound per instance, straight to the Rust core.
_READ_DIRECT = ("is_closing", "is_reading") if sys.version_info >= (3, 11) else ("is_closing",)


def _check_file(pipe: Any, message: str) -> tuple[int, int]:
    """The pipe's fd and mode; ValueError(message) if it is not a FIFO, socket or
    character device."""
    fileno = pipe.fileno()
    mode = os.fstat(fileno).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        raise ValueError(message)
    return fileno, mode


def _repr(transport: Any, fileno: int, event: int, bufsize: int | None) -> str:
    info = [transport.__class__.__name__]
    core = transport.__dict__.get("_core")
    pipe = core._pipe if core is not None else None
    if pipe is None:
        info.append("closed")
    elif core._closing:
        info.append("closing")
    info.append(f"fd={fileno}")
    loop = core._loop if core is not None else None
    if pipe is not None and loop is not None and not loop.is_closed():
        info.append("polling" if loop._fd_events(fileno) & event else "idle")
        if bufsize is not None:
            info.append(f"bufsize={bufsize}")
    elif pipe is not None:
        info.append("open")
    else:
        info.append("closed")
    return "<{}>".format(" ".join(info))


class ReadPipeTransport(transports.ReadTransport):
    """The read end of a pipe, FIFO, character device or pty."""

    max_size = 256 * 1024  # asyncio's: the most one read asks for

    _extra: dict[str, Any]

    def __init__(
        self,
        loop: Any,
        pipe: Any,
        protocol: Any,
        waiter: Any = None,
        extra: dict[str, Any] | None = None,
        context: Any = None,
    ) -> None:
        super().__init__(extra)
        self._extra["pipe"] = pipe
        fileno, _ = _check_file(pipe, "Pipe transport is for pipes/sockets only.")
        os.set_blocking(fileno, False)
        self._fileno = fileno
        core = _core.ReadPipeTransportCore(loop, pipe, protocol, self, context)
        self._core = core
        for name in _READ_DIRECT:
            setattr(self, name, getattr(core, name))
        loop.call_soon(protocol.connection_made, self, context=context)
        # only start reading when connection_made() has been called
        loop.call_soon(core._start_reading, context=context)
        if waiter is not None:
            loop.call_soon(
                futures._set_result_unless_cancelled,  # type: ignore[attr-defined]
                waiter,
                None,
                context=context,
            )

    def __repr__(self) -> str:
        return _repr(self, self.__dict__.get("_fileno", -1), 1, None)

    def __del__(self, _warn: Any = warnings.warn) -> None:
        core = self.__dict__.get("_core")
        if core is not None and core._pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            core._pipe.close()

    @property
    def _pipe(self) -> Any:
        return self._core._pipe

    @_pipe.setter
    def _pipe(self, pipe: Any) -> None:
        self._core._pipe = pipe

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
    def _paused(self) -> bool:
        return self._core._paused  # type: ignore[no-any-return]

    def _read_ready(self) -> None:
        self._core._read_ready()

    def pause_reading(self) -> None:
        self._core.pause_reading()

    def resume_reading(self) -> None:
        self._core.resume_reading()

    if sys.version_info >= (3, 11):
        # asyncio 3.10's read pipe has no is_reading() (ReadTransport's
        # NotImplementedError).

        def is_reading(self) -> bool:
            return self._core.is_reading()  # type: ignore[no-any-return]

    def set_protocol(self, protocol: Any) -> None:
        self._core.set_protocol(protocol)

    def get_protocol(self) -> Any:
        return self._core.get_protocol()

    def is_closing(self) -> bool:
        return self._core.is_closing()  # type: ignore[no-any-return]

    def close(self) -> None:
        self._core.close()

    def _fatal_error(
        self, exc: BaseException, message: str = "Fatal error on pipe transport"
    ) -> None:
        self._core._fatal_error(exc, message)

    def _close(self, exc: BaseException | None) -> None:
        self._core._close(exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        self._core._call_connection_lost(exc)


class WritePipeTransport(transports._FlowControlMixin, transports.WriteTransport):  # type: ignore[name-defined,misc]
    """The write end of a pipe, FIFO, character device or pty.

    A `_FlowControlMixin` as asyncio's own, with the mixin's state kept in the Rust core.
    """

    _extra: dict[str, Any]

    def __init__(
        self,
        loop: Any,
        pipe: Any,
        protocol: Any,
        waiter: Any = None,
        extra: dict[str, Any] | None = None,
        context: Any = None,
    ) -> None:
        # WriteTransport.__init__, not the mixin's: flow-control state lives in the core.
        transports.WriteTransport.__init__(self, extra)
        self._extra["pipe"] = pipe
        fileno, mode = _check_file(
            pipe, "Pipe transport is only for pipes, sockets and character devices"
        )
        os.set_blocking(fileno, False)
        self._fileno = fileno
        core = _core.WritePipeTransportCore(loop, pipe, protocol, self, context)
        self._core = core
        for name in ("write", "get_write_buffer_size", "is_closing"):
            setattr(self, name, getattr(core, name))
        loop.call_soon(protocol.connection_made, self, context=context)
        # The write end of a FIFO or a socket polls readable once the reader is gone
        # (asyncio's reader trick; not for character devices, nor AIX/macOS named FIFOs,
        # which are not Linux).
        if stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
            loop.call_soon(core._watch_peer, context=context)
        if waiter is not None:
            loop.call_soon(
                futures._set_result_unless_cancelled,  # type: ignore[attr-defined]
                waiter,
                None,
                context=context,
            )

    def __repr__(self) -> str:
        core = self.__dict__.get("_core")
        bufsize = core.get_write_buffer_size() if core is not None else 0
        return _repr(self, self.__dict__.get("_fileno", -1), 2, bufsize)

    def __del__(self, _warn: Any = warnings.warn) -> None:
        core = self.__dict__.get("_core")
        if core is not None and core._pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            core._pipe.close()

    @property
    def _pipe(self) -> Any:
        return self._core._pipe

    @_pipe.setter
    def _pipe(self, pipe: Any) -> None:
        self._core._pipe = pipe

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

    def write(self, data: Any) -> None:
        self._core.write(data)

    def get_write_buffer_size(self) -> int:
        return self._core.get_write_buffer_size()  # type: ignore[no-any-return]

    def get_write_buffer_limits(self) -> tuple[Any, Any]:
        return self._core.get_write_buffer_limits()  # type: ignore[no-any-return]

    def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None:
        self._core.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._core.write_eof()

    def set_protocol(self, protocol: Any) -> None:
        self._core.set_protocol(protocol)

    def get_protocol(self) -> Any:
        return self._core.get_protocol()

    def is_closing(self) -> bool:
        return self._core.is_closing()  # type: ignore[no-any-return]

    def close(self) -> None:
        self._core.close()

    def abort(self) -> None:
        self._core.abort()

    def _read_ready(self) -> None:
        self._core._read_ready()

    def _write_ready(self) -> None:
        self._core._write_ready()

    def _fatal_error(
        self, exc: BaseException, message: str = "Fatal error on pipe transport"
    ) -> None:
        self._core._fatal_error(exc, message)

    def _close(self, exc: BaseException | None = None) -> None:
        self._core._close(exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        self._core._call_connection_lost(exc)
