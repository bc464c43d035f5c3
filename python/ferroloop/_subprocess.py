"""Child processes on 3.14+, where asyncio has no child-watcher API any more.

asyncio 3.14's Unix loop makes a private watcher in its `__init__` (`self._watcher`), which
ferroloop's loop does not run. ferroloop watches its children itself: a pidfd on the
poller (Linux 5.3+; no signal handler, no thread), else a thread per child that waits
with `waitid(WNOWAIT)` and lets the loop thread reap, so that `send_signal()` can never hit
a recycled pid. Up to 3.13 the public watcher API (`asyncio.set_child_watcher`) is asyncio's
own, and ferroloop runs asyncio's code for it.
"""

from __future__ import annotations

import os
import threading
from asyncio import tasks, unix_events
from asyncio.log import logger
from typing import Any


class ChildWatching:
    """`Loop`'s child watching (3.14+): the pidfds it owns are closed with the loop."""

    _child_pidfds: dict[int, int]

    async def _make_subprocess_transport(
        self: Any,
        protocol: Any,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        extra: Any = None,
        **kwargs: Any,
    ) -> Any:
        waiter = self.create_future()
        transp = unix_events._UnixSubprocessTransport(  # type: ignore[attr-defined]
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            waiter=waiter, extra=extra, **kwargs,
        )  # fmt: skip
        self._watch_child(transp.get_pid(), transp)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await tasks.shield(transp._wait())
            raise
        return transp

    def _watch_child(self: Any, pid: int, transp: Any) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            # No pidfd here (old kernel, seccomp): a thread waits instead.
            threading.Thread(
                target=_wait_in_thread,
                args=(self, pid, transp),
                name=f"ferroloop-waitpid-{pid}",
                daemon=True,
            ).start()
            return
        self._child_pidfds[pidfd] = pid
        self._add_reader(pidfd, self._child_exited, pid, pidfd, transp)

    def _child_exited(self: Any, pid: int, pidfd: int, transp: Any) -> None:
        self._remove_reader(pidfd)
        del self._child_pidfds[pidfd]
        os.close(pidfd)
        transp._process_exited(_reap(pid))

    def _close_child_watching(self) -> None:
        pidfds, self._child_pidfds = self._child_pidfds, {}
        for pidfd, pid in pidfds.items():
            os.close(pidfd)
            logger.warning("Loop %r that handles pid %r is closed", self, pid)
            # Reaped when it exits, so that no zombie is left behind.
            threading.Thread(target=_reap, args=(pid,), daemon=True).start()


def _reap(pid: int) -> int:
    """Reaps the exited child `pid`; its return code as `subprocess` gives it."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        # Reaped elsewhere (someone else called waitpid): asyncio reports 255.
        logger.warning(
            "child process pid %d exit status already read:  will report returncode 255",
            pid,
        )
        return 255
    return os.waitstatus_to_exitcode(status)


def _wait_in_thread(loop: Any, pid: int, transp: Any) -> None:
    try:
        # WNOWAIT: the child stays a zombie, so its pid cannot be reused before the loop
        # thread reaps it (send_signal() in between is safe).
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        pass
    try:
        loop.call_soon_threadsafe(_reap_and_notify, pid, transp)
    except RuntimeError:
        # The loop was closed meanwhile: reap here so that no zombie is left.
        _reap(pid)
        logger.warning("Loop %r that handles pid %r is closed", loop, pid)


def _reap_and_notify(pid: int, transp: Any) -> None:
    transp._process_exited(_reap(pid))
