"""Stream servers: `Server` (asyncio's `asyncio.Server` API of each interpreter) over the
Rust `ServerCore`, and `create_server`/`create_unix_server` over the Rust accept loop.

Listening sockets are made as asyncio makes them (`base_events.create_server`,
`unix_events.create_unix_server`); once serving, each readiness event of a listening
socket runs the Rust `Listener` (src/server/accept.rs), which accepts with accept4 and
makes each connection's protocol and stream transport at once, without asyncio's task
per connection. TLS connections go through `accept_tls` below, as asyncio's task.
"""

from __future__ import annotations

import collections.abc
import errno
import itertools
import os
import socket
import stat
import sys
from asyncio import constants, events, exceptions, tasks
from asyncio.log import logger
from typing import Any

from . import _core

try:
    import ssl as _ssl
except ImportError:  # pragma: no cover - CPython without ssl
    _ssl = None  # type: ignore[assignment]

_PY311 = sys.version_info >= (3, 11)
_PY312 = sys.version_info >= (3, 12)
_PY313 = sys.version_info >= (3, 13)
_PY314 = sys.version_info >= (3, 14)
_PY315 = sys.version_info >= (3, 15)
_HAS_IPv6 = hasattr(socket, "AF_INET6")
_SSL_SHUTDOWN_TIMEOUT = getattr(constants, "SSL_SHUTDOWN_TIMEOUT", None)


class Server(_core.ServerCore, events.AbstractServer):
    """A stream server: asyncio's `Server` API, on ferroloop's native accept loop."""

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} sockets={self.sockets!r}>"

    async def start_serving(self) -> None:
        self._start_serving()
        # Skip one loop iteration so that all 'loop.add_reader' go through (asyncio's).
        await tasks.sleep(0)

    async def serve_forever(self) -> None:
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except exceptions.CancelledError:
            try:
                self.close()
                if sys.version_info >= (3, 14):
                    # gh-123720 (3.14): cancelling serve_forever() closes the clients too.
                    self.close_clients()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def wait_closed(self) -> None:
        """Wait until the server is closed and (3.12+) all its connections are done."""
        waiter = self._closed_waiter()
        if waiter is not None:
            await waiter


def _check_ssl_socket(sock: Any) -> None:
    if _ssl is not None and isinstance(sock, _ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


def _set_reuseport(sock: socket.socket) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError(
            "reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented."
        ) from None


def accept_tls(
    loop: Any,
    protocol_factory: Any,
    conn: socket.socket,
    extra: dict[str, Any],
    sslcontext: Any,
    server: Any,
    ssl_handshake_timeout: Any,
    ssl_shutdown_timeout: Any,
    context: Any,
) -> None:
    """A TLS connection the accept loop took: its handshake runs in a task, as asyncio's
    `_accept_connection2` does (3.15: in the connection's context)."""
    coro = _accept_tls(
        loop, protocol_factory, conn, extra, sslcontext, server,
        ssl_handshake_timeout, ssl_shutdown_timeout, context,
    )  # fmt: skip
    if context is None:
        loop.create_task(coro)
    else:
        loop.create_task(coro, context=context)


async def _accept_tls(
    loop: Any,
    protocol_factory: Any,
    conn: socket.socket,
    extra: dict[str, Any],
    sslcontext: Any,
    server: Any,
    ssl_handshake_timeout: Any,
    ssl_shutdown_timeout: Any,
    context: Any,
) -> None:
    protocol = None
    transport = None
    try:
        protocol = protocol_factory()
        waiter = loop.create_future()
        kwargs: dict[str, Any] = {}
        if _PY311:
            kwargs["ssl_shutdown_timeout"] = ssl_shutdown_timeout
        if context is not None:
            kwargs["context"] = context
        transport = loop._make_ssl_transport(
            conn, protocol, sslcontext, waiter=waiter, server_side=True, extra=extra,
            server=server, ssl_handshake_timeout=ssl_handshake_timeout, **kwargs,
        )  # fmt: skip
        try:
            await waiter
        except BaseException:
            transport.close()
            # gh-109534: the exception in the waiter would keep the protocol alive.
            waiter = None
            raise
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        if loop._debug:
            report: dict[str, Any] = {
                "message": "Error on transport creation for incoming connection",
                "exception": exc,
            }
            if protocol is not None:
                report["protocol"] = protocol
            if transport is not None:
                report["transport"] = transport
            loop.call_exception_handler(report)


class ServerMethods:
    """`Loop`'s servers: asyncio's `create_server` and `create_unix_server` (each
    interpreter's keywords and checks), serving through the Rust accept loop."""

    _debug: bool
    _unix_server_sockets: dict[Any, int]

    if sys.version_info >= (3, 13):

        async def create_server(
            self,
            protocol_factory: Any,
            host: Any = None,
            port: Any = None,
            *,
            family: int = socket.AF_UNSPEC,
            flags: int = socket.AI_PASSIVE,
            sock: Any = None,
            backlog: int = 100,
            ssl: Any = None,
            reuse_address: Any = None,
            reuse_port: Any = None,
            keep_alive: Any = None,
            ssl_handshake_timeout: Any = None,
            ssl_shutdown_timeout: Any = None,
            start_serving: bool = True,
        ) -> Server:
            """Create a TCP server (asyncio's `loop.create_server`)."""
            return await self._create_server(
                protocol_factory, host, port, family, flags, sock, backlog, ssl,
                reuse_address, reuse_port, keep_alive, ssl_handshake_timeout,
                ssl_shutdown_timeout, start_serving,
            )  # fmt: skip

    elif sys.version_info >= (3, 11):

        async def create_server(
            self,
            protocol_factory: Any,
            host: Any = None,
            port: Any = None,
            *,
            family: int = socket.AF_UNSPEC,
            flags: int = socket.AI_PASSIVE,
            sock: Any = None,
            backlog: int = 100,
            ssl: Any = None,
            reuse_address: Any = None,
            reuse_port: Any = None,
            ssl_handshake_timeout: Any = None,
            ssl_shutdown_timeout: Any = None,
            start_serving: bool = True,
        ) -> Server:
            """Create a TCP server (asyncio's `loop.create_server`)."""
            return await self._create_server(
                protocol_factory, host, port, family, flags, sock, backlog, ssl,
                reuse_address, reuse_port, None, ssl_handshake_timeout,
                ssl_shutdown_timeout, start_serving,
            )  # fmt: skip

    else:

        async def create_server(
            self,
            protocol_factory: Any,
            host: Any = None,
            port: Any = None,
            *,
            family: int = socket.AF_UNSPEC,
            flags: int = socket.AI_PASSIVE,
            sock: Any = None,
            backlog: int = 100,
            ssl: Any = None,
            reuse_address: Any = None,
            reuse_port: Any = None,
            ssl_handshake_timeout: Any = None,
            start_serving: bool = True,
        ) -> Server:
            """Create a TCP server (asyncio's `loop.create_server`)."""
            return await self._create_server(
                protocol_factory, host, port, family, flags, sock, backlog, ssl,
                reuse_address, reuse_port, None, ssl_handshake_timeout, None, start_serving,
            )  # fmt: skip

    async def _create_server(
        self,
        protocol_factory: Any,
        host: Any,
        port: Any,
        family: int,
        flags: int,
        sock: Any,
        backlog: int,
        ssl: Any,
        reuse_address: Any,
        reuse_port: Any,
        keep_alive: Any,
        ssl_handshake_timeout: Any,
        ssl_shutdown_timeout: Any,
        start_serving: bool,
    ) -> Server:
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and ssl is None:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and ssl is None:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if sock is not None:
            _check_ssl_socket(sock)
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            if reuse_address is None:
                reuse_address = os.name == "posix" and sys.platform != "cygwin"
            sockets = self._bind_server_sockets(
                await self._server_addrinfos(host, port, family, flags),
                reuse_address, reuse_port, keep_alive,
            )  # fmt: skip
        else:
            if sock is None:
                raise ValueError("Neither host/port nor sock were specified")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")
            sockets = [sock]
        for sock in sockets:
            sock.setblocking(False)
        server = Server(
            self, sockets, protocol_factory, ssl, backlog, ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )  # fmt: skip
        if start_serving:
            server._start_serving()
            # Skip one loop iteration so that all 'loop.add_reader' go through.
            await tasks.sleep(0)
        if self._debug:
            logger.info("%r is serving", server)
        return server

    async def _server_addrinfos(self, host: Any, port: Any, family: int, flags: int) -> set[Any]:
        """Every address to listen on, once each (several hosts, or names that resolve
        to the same address, bind once)."""
        hosts: collections.abc.Iterable[Any]
        if host == "":
            hosts = [None]
        elif isinstance(host, str) or not isinstance(host, collections.abc.Iterable):
            hosts = [host]
        else:
            hosts = host
        fs = [
            self._create_server_getaddrinfo(h, port, family=family, flags=flags)  # type: ignore[attr-defined]
            for h in hosts
        ]
        infos = await tasks.gather(*fs)
        return set(itertools.chain.from_iterable(infos))

    def _bind_server_sockets(
        self, infos: set[Any], reuse_address: Any, reuse_port: Any, keep_alive: Any
    ) -> list[socket.socket]:
        sockets: list[socket.socket] = []
        completed = False
        try:
            for af, socktype, proto, _canonname, sa in infos:
                try:
                    sock = socket.socket(af, socktype, proto)
                except OSError:
                    # Assume it's a bad family/type/protocol combination.
                    if self._debug:
                        logger.warning(
                            "create_server() failed to create socket.socket(%r, %r, %r)",
                            af, socktype, proto, exc_info=True,
                        )  # fmt: skip
                    continue
                sockets.append(sock)
                if reuse_address:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
                # Since Linux 6.12.9 SO_REUSEPORT is refused for other families (gh-128916).
                if reuse_port and af in (socket.AF_INET, socket.AF_INET6):
                    _set_reuseport(sock)
                if keep_alive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
                # No IPv4/IPv6 dual stack (Linux's default): one socket, one family.
                if _HAS_IPv6 and af == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
                try:
                    sock.bind(sa)
                except OSError as err:
                    if not _PY313:
                        raise OSError(
                            err.errno,
                            f"error while attempting to bind on address {sa!r}: "
                            # bind()'s OSError has its strerror (typeshed: `str | None`).
                            f"{err.strerror.lower()}",  # type: ignore[union-attr]
                        ) from None
                    msg = f"error while attempting to bind on address {sa!r}: {str(err).lower()}"
                    if err.errno == errno.EADDRNOTAVAIL:
                        # 3.13+: assume the family is not enabled (bpo-30945).
                        sockets.pop()
                        sock.close()
                        if self._debug:
                            logger.warning(msg)
                        continue
                    raise OSError(err.errno, msg) from None
            if _PY313 and not sockets:
                raise OSError(
                    f"could not bind on any address out of {[info[4] for info in infos]!r}"
                )
            completed = True
        finally:
            if not completed:
                for sock in sockets:
                    sock.close()
        return sockets

    if sys.version_info >= (3, 13):

        async def create_unix_server(
            self,
            protocol_factory: Any,
            path: Any = None,
            *,
            sock: Any = None,
            backlog: int = 100,
            ssl: Any = None,
            ssl_handshake_timeout: Any = None,
            ssl_shutdown_timeout: Any = None,
            start_serving: bool = True,
            cleanup_socket: bool = True,
        ) -> Server:
            """Create a Unix server (asyncio's `loop.create_unix_server`)."""
            return await self._create_unix_server(
                protocol_factory, path, sock, backlog, ssl, ssl_handshake_timeout,
                ssl_shutdown_timeout, start_serving, cleanup_socket,
            )  # fmt: skip

    elif sys.version_info >= (3, 11):

        async def create_unix_server(
            self,
            protocol_factory: Any,
            path: Any = None,
            *,
            sock: Any = None,
            backlog: int = 100,
            ssl: Any = None,
            ssl_handshake_timeout: Any = None,
            ssl_shutdown_timeout: Any = None,
            start_serving: bool = True,
        ) -> Server:
            """Create a Unix server (asyncio's `loop.create_unix_server`)."""
            return await self._create_unix_server(
                protocol_factory, path, sock, backlog, ssl, ssl_handshake_timeout,
                ssl_shutdown_timeout, start_serving, False,
            )  # fmt: skip

    else:

        async def create_unix_server(
            self,
            protocol_factory: Any,
            path: Any = None,
            *,
            sock: Any = None,
            backlog: int = 100,
            ssl: Any = None,
            ssl_handshake_timeout: Any = None,
            start_serving: bool = True,
        ) -> Server:
            """Create a Unix server (asyncio's `loop.create_unix_server`)."""
            return await self._create_unix_server(
                protocol_factory, path, sock, backlog, ssl, ssl_handshake_timeout, None,
                start_serving, False,
            )  # fmt: skip

    async def _create_unix_server(
        self,
        protocol_factory: Any,
        path: Any,
        sock: Any,
        backlog: int,
        ssl: Any,
        ssl_handshake_timeout: Any,
        ssl_shutdown_timeout: Any,
        start_serving: bool,
        cleanup_socket: bool,
    ) -> Server:
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # Not for an abstract socket (str and bytes paths are both supported).
            if path[0] not in (0, "\x00"):
                try:
                    if stat.S_ISSOCK(os.stat(path).st_mode):
                        os.remove(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    # Directory may have permissions only to create socket.
                    logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    # Say which address is in use.
                    msg = f"Address {path!r} is already in use"
                    raise OSError(errno.EADDRINUSE, msg) from None
                raise
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("path was not specified, and no sock specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
        if cleanup_socket:
            # 3.13+ (gh-111246): the socket file is removed when the server closes.
            path = sock.getsockname()
            if path[0] not in (0, "\x00"):
                try:
                    self._unix_server_sockets[sock] = os.stat(path).st_ino
                except FileNotFoundError:
                    pass
        sock.setblocking(False)
        server = Server(
            self, [sock], protocol_factory, ssl, backlog, ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )  # fmt: skip
        if start_serving:
            server._start_serving()
            # Skip one loop iteration so that all 'loop.add_reader' go through.
            await tasks.sleep(0)
        return server

    def _start_serving(
        self,
        protocol_factory: Any,
        sock: socket.socket,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        ssl_handshake_timeout: Any = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: Any = _SSL_SHUTDOWN_TIMEOUT,
        context: Any = None,
    ) -> None:
        """Accept connections on `sock` (the native accept loop, src/server/accept.rs)."""
        # A mixin of Loop: `self` is the loop, a LoopCore.
        listener = _core.Listener(
            self,  # type: ignore[arg-type]
            sock, protocol_factory, sslcontext, server, backlog,
            ssl_handshake_timeout, ssl_shutdown_timeout, context,
        )  # fmt: skip
        self._add_reader(sock.fileno(), listener)  # type: ignore[attr-defined]

    def _stop_serving(self, sock: socket.socket) -> None:
        """Stop accepting on `sock` and close it; on 3.13+ a Unix server's socket file is
        removed unless it was replaced meanwhile."""
        path = sock.getsockname() if sock in self._unix_server_sockets else None
        self._remove_reader(sock.fileno())  # type: ignore[attr-defined]
        sock.close()
        if path is not None:
            prev_ino = self._unix_server_sockets.pop(sock)
            try:
                if os.stat(path).st_ino == prev_ino:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)

