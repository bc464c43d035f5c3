"""The misuse matrix: every public method of the loop, its stream transports, its servers
and its handles, called with wrong arguments, on a closed loop, from inside a running
callback (re-entrancy) and from another thread in debug mode. `cases()` lists the cases;
run as a script (`python misuse_matrix.py asyncio|ferroloop`), this module is the worker
that runs the case ids it reads from stdin, one JSON line of outcome per case on stdout.

An outcome is `ok` (with the result's type when it is a plain value), `suspended` (a
coroutine's first step on a closed loop waits), or the exception's type, OSErrors with
their errno. tests/test_misuse_matrix.py runs the cases on both loops in subprocesses and
compares the outcomes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

LOCAL = "127.0.0.1"


def noop(*args: Any) -> None:
    pass


async def _coro() -> None:
    pass


def _client_tls() -> Any:
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Unhashable:
    __hash__ = None  # type: ignore[assignment]


# Wrong values tried in each argument position. Strings are left out where a host name is
# expected (each would be a DNS lookup).
BAD: dict[str, Callable[[], Any]] = {
    "None": lambda: None,
    "str": lambda: "x",
    "bytes": lambda: b"x",
    "float": lambda: 1.5,
    "neg": lambda: -1,
    "huge": lambda: 2**70,
    "nan": lambda: float("nan"),
    "inf": lambda: float("inf"),
    "true": lambda: True,
    "object": object,
    "list": lambda: [],
    "unhashable": Unhashable,
    "coro-func": lambda: _coro,
}
NO_STR = ("str",)


class Res:
    """The resources one case may use, made on demand and released after it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._close: list[Callable[[], Any]] = []
        self._dir: str | None = None

    def later(self, f: Callable[[], Any]) -> None:
        self._close.append(f)

    def release(self) -> None:
        for f in reversed(self._close):
            with contextlib.suppress(Exception):
                f()
        self._close.clear()

    def sockpair(self) -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        for s in (a, b):
            s.setblocking(False)
            self.later(s.close)
        return a, b

    def readable(self) -> socket.socket:
        a, b = self.sockpair()
        b.send(b"data")
        return a

    def listener(self, pending: bool = False) -> socket.socket:
        ls = socket.socket()
        self.later(ls.close)
        ls.bind((LOCAL, 0))
        ls.listen()
        ls.setblocking(False)
        if pending:
            c = socket.create_connection(ls.getsockname())
            self.later(c.close)
        return ls

    def new_sock(self) -> socket.socket:
        s = socket.socket()
        s.setblocking(False)
        self.later(s.close)
        return s

    def udp(self, data: bool = False) -> socket.socket:
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind((LOCAL, 0))
        a.setblocking(False)
        self.later(a.close)
        if data:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                b.sendto(b"data", a.getsockname())
        return a

    def path(self) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="flmis-", dir="/tmp")
            d = self._dir
            self.later(lambda: os.rmdir(d))
        p = os.path.join(self._dir, f"s{len(self._close)}")
        self.later(lambda: os.path.exists(p) and os.unlink(p))
        return p

    def file(self) -> Any:
        f = tempfile.TemporaryFile()
        f.write(b"data")
        f.seek(0)
        self.later(f.close)
        return f

    def pipe_writer(self) -> Any:
        r, w = os.pipe()
        self.later(lambda: os.close(r))
        f = os.fdopen(w, "wb", buffering=0)
        self.later(f.close)
        return f

    def pipe_reader(self) -> Any:
        r, w = os.pipe()
        self.later(lambda: os.close(w))
        f = os.fdopen(r, "rb", buffering=0)
        self.later(f.close)
        return f

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        ex = concurrent.futures.ThreadPoolExecutor(1)
        self.later(lambda: ex.shutdown(wait=True))
        return ex

    def connection(self, peer_closed: bool = False) -> tuple[Any, Any]:
        """A connected stream transport (and its protocol), with its peer socket kept
        (or closed, so that a TLS handshake over it fails at once)."""
        ls = self.listener()

        async def connect() -> Any:
            return await self.loop.create_connection(asyncio.Protocol, *ls.getsockname())

        tr, pr = self.loop.run_until_complete(connect())
        peer, _ = ls.accept()
        if peer_closed:
            peer.close()
        self.later(peer.close)
        self.later(lambda: tr._sock is not None and tr._sock.close())
        self.later(tr.abort)
        return tr, pr

    def server(self) -> Any:
        async def serve() -> Any:
            return await self.loop.create_server(asyncio.Protocol, LOCAL, 0)

        srv = self.loop.run_until_complete(serve())
        self.later(srv.close)
        return srv


# name -> (kind, valid arguments, bad values left out). kind: "sync", or "coro" for the
# methods whose result is awaited.
LOOP_METHODS: dict[str, tuple[str, Callable[[Res], list[Any]], tuple[str, ...]]] = {
    "call_soon": ("sync", lambda r: [noop], ()),
    "call_soon_threadsafe": ("sync", lambda r: [noop], ()),
    "call_later": ("sync", lambda r: [0, noop], ()),  # due at once: one iteration runs it
    "call_at": ("sync", lambda r: [r.loop.time(), noop], ()),
    "time": ("sync", lambda r: [], ()),
    "create_future": ("sync", lambda r: [], ()),
    "create_task": ("sync", lambda r: [_coro()], ()),
    "set_task_factory": ("sync", lambda r: [None], ()),
    "get_task_factory": ("sync", lambda r: [], ()),
    "run_in_executor": ("coro", lambda r: [None, noop], ()),
    "set_default_executor": ("sync", lambda r: [r.executor()], ()),
    "getaddrinfo": ("coro", lambda r: [LOCAL, 80], NO_STR),
    "getnameinfo": ("coro", lambda r: [(LOCAL, 80)], ()),
    "create_connection": (
        "coro",
        lambda r: [asyncio.Protocol, LOCAL, r.listener().getsockname()[1]],
        NO_STR,
    ),
    "create_server": ("coro", lambda r: [asyncio.Protocol, LOCAL, 0], NO_STR),
    "create_unix_connection": ("coro", lambda r: [asyncio.Protocol, r.path()], ()),
    "create_unix_server": ("coro", lambda r: [asyncio.Protocol, r.path()], ()),
    "create_datagram_endpoint": (
        "coro",
        lambda r: [asyncio.DatagramProtocol, (LOCAL, 0)],
        NO_STR,
    ),
    "connect_accepted_socket": ("coro", lambda r: [asyncio.Protocol, r.sockpair()[0]], ()),
    "connect_read_pipe": ("coro", lambda r: [asyncio.Protocol, r.pipe_reader()], ()),
    "connect_write_pipe": ("coro", lambda r: [asyncio.BaseProtocol, r.pipe_writer()], ()),
    # (Not a coroutine function as the protocol factory: asyncio's own subprocess code
    # then races the child's exit, on either loop.)
    "subprocess_exec": ("coro", lambda r: [asyncio.SubprocessProtocol, "true"], ("coro-func",)),
    "subprocess_shell": ("coro", lambda r: [asyncio.SubprocessProtocol, "true"], ("coro-func",)),
    "sendfile": ("coro", lambda r: [r.connection()[0], r.file()], ()),
    "start_tls": (
        "coro",
        lambda r: [r.connection(peer_closed=True)[0], asyncio.Protocol(), _client_tls()],
        (),
    ),
    "sock_recv": ("coro", lambda r: [r.readable(), 10], ()),
    "sock_recv_into": ("coro", lambda r: [r.readable(), bytearray(10)], ()),
    "sock_recvfrom": ("coro", lambda r: [r.udp(data=True), 10], ()),
    "sock_recvfrom_into": ("coro", lambda r: [r.udp(data=True), bytearray(10)], ()),
    "sock_sendall": ("coro", lambda r: [r.sockpair()[0], b"x"], ()),
    "sock_sendto": ("coro", lambda r: [r.udp(), b"x", r.udp().getsockname()], NO_STR),
    "sock_connect": ("coro", lambda r: [r.new_sock(), r.listener().getsockname()], NO_STR),
    "sock_accept": ("coro", lambda r: [r.listener(pending=True)], ()),
    "sock_sendfile": ("coro", lambda r: [r.sockpair()[0], r.file()], ()),
    "add_reader": ("sync", lambda r: [r.sockpair()[0], noop], ()),
    "add_writer": ("sync", lambda r: [r.sockpair()[0], noop], ()),
    "remove_reader": ("sync", lambda r: [r.sockpair()[0]], ()),
    "remove_writer": ("sync", lambda r: [r.sockpair()[0]], ()),
    "add_signal_handler": ("sync", lambda r: [signal.SIGUSR1, noop], ()),
    "remove_signal_handler": ("sync", lambda r: [signal.SIGUSR1], ()),
    "set_exception_handler": ("sync", lambda r: [None], ()),
    "get_exception_handler": ("sync", lambda r: [], ()),
    "call_exception_handler": ("sync", lambda r: [{"message": "misuse"}], ()),
    "default_exception_handler": ("sync", lambda r: [{"message": "misuse"}], ()),
    "get_debug": ("sync", lambda r: [], ()),
    "set_debug": ("sync", lambda r: [False], ()),
    "is_running": ("sync", lambda r: [], ()),
    "is_closed": ("sync", lambda r: [], ()),
    "stop": ("sync", lambda r: [], ()),
    "run_until_complete": ("sync", lambda r: [_coro()], ()),
    "run_forever": ("sync", lambda r: [], ()),
    "close": ("sync", lambda r: [], ()),
    "shutdown_asyncgens": ("coro", lambda r: [], ()),
    "shutdown_default_executor": ("coro", lambda r: [], ()),
}

TRANSPORT_METHODS: dict[str, Callable[[Res], list[Any]]] = {
    "write": lambda r: [b"x"],
    "writelines": lambda r: [[b"x", b"y"]],
    "write_eof": lambda r: [],
    "can_write_eof": lambda r: [],
    "close": lambda r: [],
    "abort": lambda r: [],
    "is_closing": lambda r: [],
    "pause_reading": lambda r: [],
    "resume_reading": lambda r: [],
    "is_reading": lambda r: [],
    "set_write_buffer_limits": lambda r: [1000, 10],
    "get_write_buffer_size": lambda r: [],
    "get_write_buffer_limits": lambda r: [],
    "get_extra_info": lambda r: ["peername", None],
    "set_protocol": lambda r: [asyncio.Protocol()],
    "get_protocol": lambda r: [],
}

SERVER_METHODS: dict[str, tuple[str, Callable[[Res], list[Any]]]] = {
    "close": ("sync", lambda r: []),
    "is_serving": ("sync", lambda r: []),
    "get_loop": ("sync", lambda r: []),
    "start_serving": ("coro", lambda r: []),
    "wait_closed": ("coro", lambda r: []),
}
if sys.version_info >= (3, 13):
    SERVER_METHODS["close_clients"] = ("sync", lambda r: [])
    SERVER_METHODS["abort_clients"] = ("sync", lambda r: [])

# Keyword arguments every call of a method gets (a TLS handshake over a peer that never
# answers gives up quickly rather than at the case's deadline).
DEFAULT_KWARGS: dict[str, dict[str, Any]] = {"start_tls": {"ssl_handshake_timeout": 0.05}}

# Keyword arguments tried with wrong values, per loop method.
LOOP_KEYWORDS: dict[str, tuple[str, ...]] = {
    "call_soon": ("context",),
    "call_soon_threadsafe": ("context",),
    "call_later": ("context",),
    "call_at": ("context",),
    "create_task": ("name", "context"),
    "run_in_executor": (),
    "create_server": ("backlog", "reuse_address", "start_serving"),
    "create_connection": ("happy_eyeballs_delay", "local_addr", "ssl"),
    "getaddrinfo": ("family", "type", "flags"),
}

HANDLE_METHODS = ["cancel", "cancelled", "when", "get_context", "_run", "__repr__"]

LOOP_CONTEXTS = ("open", "closed", "running", "thread-debug")


def _variants(nargs: int, left_out: tuple[str, ...], kws: tuple[str, ...] = ()) -> Iterator[str]:
    """`valid`, `arity+1`, `arity-1` (if any argument), `argN=BAD` for each position and
    `KW=BAD` for each keyword."""
    yield "valid"
    yield "arity+1"
    if nargs:
        yield "arity-1"
    for i in range(nargs):
        for bad in BAD:
            if bad not in left_out:
                yield f"arg{i}={bad}"
    for kw in kws:
        for bad in BAD:
            yield f"{kw}={bad}"


def cases() -> list[str]:
    """Every case id, in a fixed order."""
    out = []
    probe = Res(asyncio.new_event_loop())
    try:
        for name, (_, args, left_out) in LOOP_METHODS.items():
            if not hasattr(asyncio.SelectorEventLoop, name):
                continue  # not in this version's asyncio (test_misuse_matrix checks the API)
            valid = args(probe)
            n = len(valid)
            for a in valid:
                if asyncio.iscoroutine(a):
                    a.close()
            probe.release()
            for ctx in LOOP_CONTEXTS:
                # From another thread: what debug mode checks, for each method once.
                variants = ["valid", "arity+1"] if ctx == "thread-debug" else None
                kws = LOOP_KEYWORDS.get(name, ())
                for v in variants or _variants(n, left_out, kws):
                    out.append(f"loop.{name}[{v}]@{ctx}")
        for name, targs in TRANSPORT_METHODS.items():
            n = len(targs(probe))
            for ctx in ("open", "closing", "loop-closed"):
                for v in _variants(n, ()):
                    out.append(f"transport.{name}[{v}]@{ctx}")
        for name in SERVER_METHODS:
            for ctx in ("open", "closed", "loop-closed"):
                for v in ("valid", "arity+1"):
                    out.append(f"server.{name}[{v}]@{ctx}")
        for kind in ("Handle", "TimerHandle"):
            for name in HANDLE_METHODS:
                for ctx in ("open", "cancelled", "loop-closed"):
                    for v in ("valid", "arity+1"):
                        out.append(f"{kind}.{name}[{v}]@{ctx}")
    finally:
        probe.release()
        probe.loop.close()
    return out


def describe(result: Any) -> str:
    """`ok`, with the value of a bool, None or small int and the type of other plain
    values (floats are times, which differ from run to run)."""
    if result is None or isinstance(result, bool) or (type(result) is int and abs(result) < 2**16):
        return f"ok:{result!r}"
    if isinstance(result, (int, float, str, bytes, tuple, list, dict)):
        return f"ok:{type(result).__name__}"
    return "ok"


def describe_exc(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return f"{type(e).__name__}[{errno.errorcode.get(e.errno, e.errno)}]"
    return type(e).__name__


def make_args(variant: str, valid: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments of a variant."""
    if variant == "valid":
        return valid, {}
    if variant == "arity+1":
        return [*valid, object()], {}
    if variant == "arity-1":
        return valid[:-1], {}
    where, bad = variant.split("=")
    if not where.startswith("arg"):
        return valid, {where: BAD[bad]()}
    args = list(valid)
    args[int(where[3:])] = BAD[bad]()
    return args, {}


# --------------------------------------------------------------------------- the worker


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "asyncio":
        return asyncio.SelectorEventLoop()
    import ferroloop

    return ferroloop.new_event_loop()


def first_step(result: Any) -> str:
    """A coroutine's first step, for a loop that cannot run it (closed, or another
    thread's): its outcome, or `suspended` if it waits."""
    if not asyncio.iscoroutine(result) and not hasattr(result, "send"):
        return describe(result)
    try:
        result.send(None)
    except StopIteration as e:
        return describe(e.value)
    except BaseException as e:
        return describe_exc(e)
    finally:
        with contextlib.suppress(BaseException):
            result.close()
    return "suspended"


def one_iteration(loop: asyncio.AbstractEventLoop, res: Res) -> str:
    """Runs one iteration ended by a writable socket (so a timer's deadline is used for
    the poll timeout, as asyncio's run step uses it); what it raised and what reached
    the exception handler."""
    if loop.is_closed() or loop.is_running():
        return ""
    reported: list[str] = []
    loop.set_exception_handler(
        lambda lp, ctx: reported.append(type(ctx.get("exception")).__name__)
    )
    w = res.sockpair()[0]
    out = ""
    try:
        loop.add_writer(w, loop.stop)
        loop.run_forever()
    except BaseException as e:
        out = f"@run:{describe_exc(e)}"
    finally:
        with contextlib.suppress(Exception):
            loop.remove_writer(w)
    if reported:
        out += "+handler:" + ",".join(sorted(set(reported)))
    return out


# How long a case's awaitable may take; start_tls with a protocol that is not one waits
# forever on either loop (asyncio's TLS code never completes the call), so cut it short.
DEADLINE = 2.0
DEADLINES = {"start_tls": 0.25}


def awaited(loop: asyncio.AbstractEventLoop, result: Any, deadline: float = DEADLINE) -> str:
    async def wait() -> Any:
        return await asyncio.wait_for(result, deadline)

    try:
        return describe(loop.run_until_complete(wait()))
    except BaseException as e:
        return describe_exc(e)


def _target(loop: asyncio.AbstractEventLoop, res: Res, what: str, ctx: str) -> Any:
    if what == "transport":
        tr, _ = res.connection()
        if ctx == "closing":
            tr.close()
        return tr
    if what == "server":
        srv = res.server()
        if ctx == "closed":
            srv.close()
        return srv
    if what == "Handle":
        h = loop.call_soon(noop)
    else:
        h = loop.call_later(10, noop)
    if ctx == "cancelled":
        h.cancel()
    return h


def run_case(loop_name: str, case: str) -> str:
    head, ctx = case.rsplit("@", 1)
    target, rest = head.split(".", 1)
    name, variant = rest[:-1].split("[")
    loop = new_loop(loop_name)
    res = Res(loop)
    try:
        if target == "loop":
            return _loop_case(loop, res, name, variant, ctx)
        obj = _target(loop, res, target, ctx)
        if target == "transport":
            kind, valid = "sync", TRANSPORT_METHODS[name](res)
        elif target == "server":
            kind, valid = SERVER_METHODS[name][0], SERVER_METHODS[name][1](res)
        else:
            kind, valid = "sync", []
        if ctx == "loop-closed":
            loop.close()
        args, kwargs = make_args(variant, valid)
        try:
            result = getattr(obj, name)(*args, **kwargs)
        except BaseException as e:
            return describe_exc(e)
        if kind == "coro":
            return awaited(loop, result) if not loop.is_closed() else first_step(result)
        return describe(result) + one_iteration(loop, res)
    finally:
        res.release()
        if not loop.is_running():
            # (3.10 takes any default executor, which close() then fails to shut down.)
            with contextlib.suppress(Exception):
                loop.close()


def _loop_case(loop: Any, res: Res, name: str, variant: str, ctx: str) -> str:
    kind, valid_args, _ = LOOP_METHODS[name]
    args, kwargs = make_args(variant, valid_args(res))
    method = functools.partial(getattr(loop, name), **{**DEFAULT_KWARGS.get(name, {}), **kwargs})
    if ctx == "closed":
        loop.close()
    if ctx == "running":

        async def inside() -> Any:
            r = method(*args)
            return await asyncio.wait_for(r, DEADLINES.get(name, DEADLINE)) if kind == "coro" else r

        try:
            return describe(loop.run_until_complete(inside()))
        except BaseException as e:
            return describe_exc(e)
    if ctx == "thread-debug":
        return _from_another_thread(loop, method, args, kind)
    if name == "run_forever" and ctx == "open":
        loop.call_soon(loop.stop)
    try:
        result = method(*args)
    except BaseException as e:
        return describe_exc(e)
    if kind == "coro":
        if loop.is_closed():
            return first_step(result)
        return awaited(loop, result, DEADLINES.get(name, DEADLINE))
    return describe(result) + one_iteration(loop, res)


def _from_another_thread(loop: Any, method: Any, args: list[Any], kind: str) -> str:
    """The call from the main thread while the loop runs in another one, in debug mode.
    The loop's thread waits inside a callback meanwhile, so nothing races the call."""
    loop.set_debug(True)
    loop.slow_callback_duration = 100.0
    inside, resume = threading.Event(), threading.Event()

    def hold() -> None:
        inside.set()
        resume.wait(10)

    loop.call_soon(hold)
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    inside.wait(5)
    try:
        result = method(*args)
        return first_step(result) if kind == "coro" else describe(result)
    except BaseException as e:
        return describe_exc(e)
    finally:
        resume.set()
        with contextlib.suppress(Exception):
            loop.call_soon_threadsafe(loop.stop)
        t.join(5)


def main() -> None:
    loop_name = sys.argv[1]
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    # For the driver's own test: a case id to die (abort) or hang on.
    abort_on = os.environ.get("FERROLOOP_MISUSE_ABORT_ON")
    hang_on = os.environ.get("FERROLOOP_MISUSE_HANG_ON")
    for line in sys.stdin:
        case = line.strip()
        if case == abort_on:
            os.abort()
        if case == hang_on:
            threading.Event().wait()
        if case:
            try:
                outcome = run_case(loop_name, case)
            except BaseException as e:  # the case's own set-up failed
                outcome = f"setup:{describe_exc(e)}"
            print(json.dumps([case, outcome]), flush=True)


if __name__ == "__main__":
    main()
