"""Child processes: `SubprocessTransport`, an `asyncio.SubprocessTransport` over the Rust
`SubprocessTransportCore` (src/subprocess.rs), and the loop's `_make_subprocess_transport`.

The child is started with `subprocess.Popen`, as asyncio starts it: every Popen keyword
works on every version, and CPython's `_posixsubprocess` spawns with vfork (or
posix_spawn) where it can. The core does the rest: the pipes (on the loop's pipe
transports), the protocol's callbacks in asyncio's order, and the exit, watched with a
pidfd on the poller (no SIGCHLD handler, no thread per child), or where pidfds are not
available a thread per child that waits with `waitid(WNOWAIT)` and lets the loop thread
reap, so that `send_signal()` can never hit a recycled pid. Closing the loop releases the
pidfds and still reaps the children.

Child watchers (3.10–3.13's public `asyncio.set_child_watcher()`): asyncio's defaults,
`ThreadedChildWatcher` and `PidfdChildWatcher`, do what ferroloop's own watching does, and
are left unused; a watcher the program chose otherwise (`SafeChildWatcher`,
`FastChildWatcher`, `MultiLoopChildWatcher`, its own) is used exactly as asyncio uses it.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from asyncio import events, tasks, transports
from asyncio.log import logger
from collections.abc import Awaitable
from typing import Any

from . import _core

# 3.14 removed the child-watcher API.
_HAS_WATCHERS = sys.version_info < (3, 14)
if _HAS_WATCHERS:
    from asyncio import unix_events

    _DEFAULT_WATCHERS: tuple[type, ...] = (
        unix_events.ThreadedChildWatcher,  # type: ignore[attr-defined]
        unix_events.PidfdChildWatcher,  # type: ignore[attr-defined]
    )
    _GET_CHILD_WATCHER = events.get_child_watcher  # type: ignore[attr-defined]
    _POLICY_GET_CHILD_WATCHER = unix_events._UnixDefaultEventLoopPolicy.get_child_watcher  # type: ignore[attr-defined]


def _chosen_child_watcher() -> Any:
    """The child watcher the program set, if it is one ferroloop must honour (3.10–3.13):
    None when there is none or it is one of asyncio's defaults."""
    if not _HAS_WATCHERS:
        return None
    # asyncio's own policy (ferroloop's derives from it), neither replaced: its watcher is
    # read directly. get_child_watcher() would warn (filtered) on every call, a fifth of
    # a spawn's cost, and create a default watcher when none is set, which is None here.
    if events.get_child_watcher is _GET_CHILD_WATCHER:  # type: ignore[attr-defined]
        policy = events.get_event_loop_policy()
        method = getattr(policy.get_child_watcher, "__func__", None)
        if method is _POLICY_GET_CHILD_WATCHER and "_watcher" in vars(policy):
            watcher = policy._watcher  # type: ignore[attr-defined]
            if watcher is None or type(watcher) in _DEFAULT_WATCHERS:
                return None
            return watcher
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            watcher = events.get_child_watcher()  # type: ignore[attr-defined]
    except NotImplementedError:
        # A policy without watchers (not asyncio's Unix one).
        return None
    if type(watcher) in _DEFAULT_WATCHERS:
        return None
    return watcher


class SubprocessTransport(transports.SubprocessTransport):
    """A child process with its pipes (asyncio's `BaseSubprocessTransport` semantics)."""

    _extra: dict[str, Any]

    def __init__(
        self,
        loop: Any,
        protocol: Any,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        waiter: Any,
        extra: Any,
        watch: bool,
        popen_kwargs: dict[str, Any],
    ) -> None:
        super().__init__(extra)
        pipe = subprocess.PIPE
        self._core = core = _core.SubprocessTransportCore(
            loop, protocol, self, stdin == pipe, stdout == pipe, stderr == pipe
        )
        try:
            proc = subprocess.Popen(
                args, shell=shell, stdin=stdin, stdout=stdout, stderr=stderr,
                universal_newlines=False, bufsize=bufsize, **popen_kwargs,
            )  # fmt: skip
        except BaseException:
            self.close()
            raise
        self._extra["subprocess"] = proc
        if loop.get_debug():
            program = args if isinstance(args, (bytes, str)) else args[0]
            logger.debug("process %r created: pid %s", program, proc.pid)
        # A loop whose connect_read_pipe/connect_write_pipe were replaced (tests patch
        # them on the instance) gets asyncio's task, which calls them.
        own_pipes = "connect_read_pipe" not in vars(loop) and "connect_write_pipe" not in vars(loop)
        core._start(proc, waiter, watch, own_pipes)
        if not own_pipes:
            loop.create_task(self._connect_pipes(loop, proc, waiter))

    async def _connect_pipes(self, loop: Any, proc: Any, waiter: Any) -> None:
        """asyncio's `_connect_pipes`, through the loop's `connect_*_pipe` methods."""
        core = self._core
        try:
            for fd, pipe in ((0, proc.stdin), (1, proc.stdout), (2, proc.stderr)):
                if pipe is None:
                    continue
                connect = loop.connect_write_pipe if fd == 0 else loop.connect_read_pipe
                proto = core._new_pipe_proto(fd)
                await connect(lambda proto=proto: proto, pipe)
                core._pipe_connected(fd, proto)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            core._pipes_failed(proc, waiter, exc)
        else:
            core._connected(waiter)

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        core = self.__dict__.get("_core")
        if core is None:
            return f"<{info[0]} not started>"
        if core._closed:
            info.append("closed")
        pid, returncode = core.get_pid(), core.get_returncode()
        if pid is not None:
            info.append(f"pid={pid}")
        if returncode is not None:
            info.append(f"returncode={returncode}")
        elif pid is not None:
            info.append("running")
        else:
            info.append("not started")
        pipes = core._pipes
        stdin, stdout, stderr = pipes.get(0), pipes.get(1), pipes.get(2)
        if stdin is not None:
            info.append(f"stdin={stdin.pipe}")
        if stdout is not None and stderr is stdout:
            info.append(f"stdout=stderr={stdout.pipe}")
        else:
            if stdout is not None:
                info.append(f"stdout={stdout.pipe}")
            if stderr is not None:
                info.append(f"stderr={stderr.pipe}")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Any = warnings.warn) -> None:
        core = self.__dict__.get("_core")
        if core is not None and not core._closed:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            core.close()

    @property
    def _closed(self) -> bool:
        return self._core._closed

    @property
    def _proc(self) -> subprocess.Popen[bytes] | None:
        return self._core._proc

    @property
    def _loop(self) -> Any:
        return self._core._loop

    @property
    def _protocol(self) -> Any:
        return self._core.get_protocol()

    @property
    def _pid(self) -> int | None:
        return self._core.get_pid()

    @property
    def _returncode(self) -> int | None:
        return self._core.get_returncode()

    @property
    def _pipes(self) -> dict[int, _core.SubprocessPipeProto | None]:
        return self._core._pipes

    # None only before the child is started (as typeshed's BaseSubprocessTransport,
    # which overrides SubprocessTransport's `-> int` the same way).
    def get_pid(self) -> int | None:  # type: ignore[override]
        return self._core.get_pid()

    def get_returncode(self) -> int | None:
        return self._core.get_returncode()

    def get_pipe_transport(self, fd: int) -> Any:
        return self._core.get_pipe_transport(fd)

    def send_signal(self, signal: int) -> None:
        self._core.send_signal(signal)

    def terminate(self) -> None:
        self._core.terminate()

    def kill(self) -> None:
        self._core.kill()

    def close(self) -> None:
        self._core.close()

    def is_closing(self) -> bool:
        return self._core.is_closing()

    def get_protocol(self) -> Any:
        return self._core.get_protocol()

    def set_protocol(self, protocol: Any) -> None:
        self._core.set_protocol(protocol)

    def _process_exited(self, returncode: int) -> None:
        self._core._process_exited(returncode)

    def _wait(self) -> Awaitable[int]:
        """An awaitable of the return code, once the process exits: a future of its own,
        not a coroutine (a frame and a try/finally less per `wait()`); a cancelled one is
        dropped from the core's list at the next call."""
        waiter = self._core._exit_waiter()
        if waiter is None:
            # No waiter: the exit is known, so the return code is not None.
            return _known(self._core.get_returncode())  # type: ignore[arg-type]
        return waiter


async def _known(returncode: int) -> int:
    return returncode


class Subprocesses:
    """`Loop`'s child processes: asyncio's `_make_subprocess_transport` (which
    `subprocess_exec`/`subprocess_shell` call), and releasing the children on close."""

    _children: dict[int, Any]
    create_future: Any

    async def _make_subprocess_transport(
        self,
        protocol: Any,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        extra: Any = None,
        **kwargs: Any,
    ) -> SubprocessTransport:
        watcher = _chosen_child_watcher()
        if watcher is None:
            waiter = self.create_future()
            transp = SubprocessTransport(
                self, protocol, args, shell, stdin, stdout, stderr, bufsize, waiter, extra,
                True, kwargs,
            )  # fmt: skip
            await self._wait_started(transp, waiter)
            return transp
        # The program's own child watcher, used as asyncio 3.10-3.13 use it (up to 3.11,
        # the object its `__enter__` returns).
        with watcher as entered:
            if sys.version_info < (3, 12):
                watcher = entered
            if not watcher.is_active():
                # Raised before the child is started, as asyncio does.
                raise RuntimeError(
                    "asyncio.get_child_watcher() is not activated, "
                    "subprocess support is not installed."
                )
            waiter = self.create_future()
            transp = SubprocessTransport(
                self, protocol, args, shell, stdin, stdout, stderr, bufsize, waiter, extra,
                False, kwargs,
            )  # fmt: skip
            watcher.add_child_handler(transp.get_pid(), self._child_watcher_callback, transp)
            await self._wait_started(transp, waiter)
        return transp

    async def _wait_started(self, transp: SubprocessTransport, waiter: Any) -> None:
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await tasks.shield(transp._wait())
            raise

    def _child_watcher_callback(self, pid: int, returncode: int, transp: Any) -> None:
        # A child watcher's callback, from any thread. asyncio up to 3.11 skips one more
        # iteration before reporting the exit.
        if sys.version_info < (3, 12):
            self.call_soon_threadsafe(self.call_soon, transp._process_exited, returncode)  # type: ignore[attr-defined]
        else:
            self.call_soon_threadsafe(transp._process_exited, returncode)  # type: ignore[attr-defined]

    def _close_child_watching(self) -> None:
        """The loop closes: children still running give back their pidfds, and are
        reaped in the background once they exit (no zombie)."""
        children, self._children = self._children, {}
        for core in children.values():
            core._loop_closed(self)
