"""Unix-socket connections and sendfile(2): ferroloop's versions of what asyncio's selector
loop implements for them (unix_events.py, selector_events.py), over the Rust poller and
transports, so no function of the selector loops is bound to `Loop`.

Both are cold or kernel-bound paths (one `sendfile(2)` moves as much as the socket buffer
takes), so they stay Python; what they call (`sock_connect`, `add_writer`, the stream
transport) is native.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import sys
from asyncio import exceptions
from typing import Any

# 3.14 leaves the file position at the end offset whatever happened (unix_events'
# `_sock_sendfile_update_filepos(fileno, offset)`); before, only when bytes were sent.
_SEEK_ALWAYS = sys.version_info >= (3, 14)


class ConnectionMethods:
    """`create_unix_connection` and the native paths of `sock_sendfile`/`sendfile`."""

    _transport_add: Any
    _transport_remove: Any

    if sys.version_info >= (3, 11):

        async def create_unix_connection(
            self,
            protocol_factory: Any,
            path: Any = None,
            *,
            ssl: Any = None,
            sock: Any = None,
            server_hostname: Any = None,
            ssl_handshake_timeout: Any = None,
            ssl_shutdown_timeout: Any = None,
        ) -> Any:
            if not ssl and ssl_shutdown_timeout is not None:
                _check_plain(server_hostname, ssl_handshake_timeout)
                raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
            return await self._unix_connection(
                protocol_factory,
                path,
                ssl,
                sock,
                server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
            )

    else:

        async def create_unix_connection(  # type: ignore[misc]
            self,
            protocol_factory: Any,
            path: Any = None,
            *,
            ssl: Any = None,
            sock: Any = None,
            server_hostname: Any = None,
            ssl_handshake_timeout: Any = None,
        ) -> Any:
            return await self._unix_connection(
                protocol_factory,
                path,
                ssl,
                sock,
                server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
            )

    async def _unix_connection(
        self,
        protocol_factory: Any,
        path: Any,
        ssl: Any,
        sock: Any,
        server_hostname: Any,
        **tls: Any,
    ) -> Any:
        assert server_hostname is None or isinstance(server_hostname, str)
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            _check_plain(server_hostname, tls["ssl_handshake_timeout"])
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)  # type: ignore[attr-defined]
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("no path and sock were specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
            sock.setblocking(False)
        transport, protocol = await self._create_connection_transport(  # type: ignore[attr-defined]
            sock, protocol_factory, ssl, server_hostname, **tls
        )
        return transport, protocol

    async def _sock_sendfile_native(self, sock: Any, file: Any, offset: int, count: Any) -> int:
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise exceptions.SendfileNotAvailableError("not a regular file") from None
        try:
            fsize = os.fstat(fileno).st_size
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file") from None
        blocksize = count if count else fsize
        if not blocksize:
            return 0  # an empty file
        fut = self.create_future()  # type: ignore[attr-defined]
        self._sock_sendfile_native_impl(fut, None, sock, fileno, offset, count, blocksize, 0)
        return await fut  # type: ignore[no-any-return]

    def _sock_sendfile_native_impl(
        self,
        fut: Any,
        registered_fd: int | None,
        sock: Any,
        fileno: int,
        offset: int,
        count: Any,
        blocksize: int,
        total_sent: int,
    ) -> None:
        """One step of a `sock_sendfile` (the signature CPython's tests call):
        `sendfile(2)` while the socket takes bytes, then a writer watch until it is
        writable again. As asyncio: an error before the first byte is
        `SendfileNotAvailableError`, so the caller falls back to reads and sends; ENOTCONN
        mid-way is a ConnectionError; the file position ends after the bytes sent."""
        if registered_fd is not None:
            # One watch per wait: it is rare that a writable socket still says EAGAIN.
            self.remove_writer(registered_fd)  # type: ignore[attr-defined]
        if fut.cancelled():
            _update_filepos(fileno, offset, total_sent)
            return
        if count:
            blocksize = count - total_sent
            if blocksize <= 0:
                _update_filepos(fileno, offset, total_sent)
                fut.set_result(total_sent)
                return
        # On 32-bit platforms os.sendfile() takes at most 1 GiB.
        blocksize = min(blocksize, sys.maxsize // 2 + 1)
        fd = sock.fileno()
        try:
            sent = os.sendfile(fd, fileno, offset, blocksize)
        except (BlockingIOError, InterruptedError):
            pass  # wait until the socket is writable (below)
        except OSError as exc:
            if (
                registered_fd is not None
                and exc.errno == errno.ENOTCONN
                and type(exc) is not ConnectionError
            ):
                # The connection closed mid-way: the same error on every POSIX system.
                new_exc = ConnectionError("socket is not connected", errno.ENOTCONN)
                new_exc.__cause__ = exc
                exc = new_exc
            _update_filepos(fileno, offset, total_sent)
            if total_sent == 0:
                # Not a regular mmap(2)-able file, most often: the caller falls back.
                fut.set_exception(exceptions.SendfileNotAvailableError("os.sendfile call failed"))
            else:
                fut.set_exception(exc)
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            _update_filepos(fileno, offset, total_sent)
            fut.set_exception(exc)
            return
        else:
            if sent == 0:  # end of file
                _update_filepos(fileno, offset, total_sent)
                fut.set_result(total_sent)
                return
            offset += sent
            total_sent += sent
        if registered_fd is None:
            _remove_writer_on_cancel(self, fut, sock)
        self.add_writer(  # type: ignore[attr-defined]
            fd,
            self._sock_sendfile_native_impl,
            fut,
            fd,
            sock,
            fileno,
            offset,
            count,
            blocksize,
            total_sent,
        )

    async def _sendfile_native(self, transp: Any, file: Any, offset: int, count: Any) -> int:
        # The transport steps aside while the socket is written directly: reading paused,
        # its buffer drained first, and it is not the fd's transport meanwhile.
        self._transport_remove(transp._sock_fd)
        resume_reading = transp.is_reading()
        transp.pause_reading()
        await transp._make_empty_waiter()
        try:
            return await self.sock_sendfile(  # type: ignore[attr-defined,no-any-return]
                transp._sock, file, offset, count, fallback=False
            )
        finally:
            transp._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()
            self._transport_add(transp._sock_fd, transp)


def _check_plain(server_hostname: Any, ssl_handshake_timeout: Any) -> None:
    if server_hostname is not None:
        raise ValueError("server_hostname is only meaningful with ssl")
    if ssl_handshake_timeout is not None:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")


def _update_filepos(fileno: int, offset: int, total_sent: int) -> None:
    if _SEEK_ALWAYS or total_sent > 0:
        os.lseek(fileno, offset, os.SEEK_SET)


def _remove_writer_on_cancel(loop: Any, fut: Any, sock: Any) -> None:
    def cancelled(fut: Any) -> None:
        if fut.cancelled():
            fd = sock.fileno()
            if fd != -1:
                loop.remove_writer(fd)

    fut.add_done_callback(cancelled)
