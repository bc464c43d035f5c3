//! Watching a child's exit without a SIGCHLD handler: a pidfd on the loop's poller, or,
//! where pidfds are not available (old kernels, seccomp), a thread that waits for the
//! exit without reaping and lets the loop thread reap. Signals go through the pidfd, and
//! a child still running when the loop closes is reaped in the background: no zombie.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::libc;
use pyo3::exceptions::{PyProcessLookupError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

use super::{SubprocessCore, Watch};
use crate::errors::os_error;
use crate::loop_core::fds::Dir;
use crate::loop_core::LoopCore;
use crate::pyapi;
use crate::syscalls::process::{self, Child};

/// The loop attribute that maps the pids it watches to their transports' cores (so that
/// closing the loop can release them; see `Loop.close`).
const CHILDREN: &str = "_children";

/// The `os` module (its `pidfd_open` is looked up on each use).
static OS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

impl SubprocessCore {
    /// Starts watching child `pid`: its pidfd on the poller, else a waiting thread.
    pub(super) fn watch_exit(
        slf: &Bound<'_, Self>,
        lp: &Bound<'_, LoopCore>,
        pid: i32,
    ) -> PyResult<()> {
        let py = slf.py();
        lp.getattr(pyo3::intern!(py, CHILDREN))?
            .set_item(pid, slf)?;
        // os.pidfd_open, so that a program (or a test) that replaces it is obeyed.
        let pidfd = OS
            .get_or_try_init(py, || py.import("os").map(Bound::unbind))?
            .bind(py)
            .getattr(pyo3::intern!(py, "pidfd_open"))
            .and_then(|f| f.call1((pid,)))
            .and_then(|fd| fd.extract::<i32>());
        match pidfd {
            Ok(fd) => {
                // SAFETY: os.pidfd_open returned a new fd that nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                let ready = slf.getattr(pyo3::intern!(py, "_child_ready"))?;
                let raw = fd.as_raw_fd();
                {
                    let mut st = slf.get().st.borrow_mut(py);
                    st.watch = Watch::Pidfd(fd);
                    st.pidfd_ready = Some(ready.clone().unbind());
                }
                // One-shot, as a socket call's read: a pidfd reports its exit once, the
                // kernel then disables the registration, and `child_ready` drops it with
                // no system call (one epoll_ctl per child, not an ADD, a MOD that parks
                // and a failing MOD for the next child's pidfd of the same number).
                LoopCore::add_io_fd(lp, raw, &ready, &PyTuple::empty(py), Dir::Read)?;
            }
            Err(e)
                if e.is_instance_of::<pyo3::exceptions::PyOSError>(py)
                    || e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) =>
            {
                slf.get().st.borrow_mut(py).watch = Watch::Thread;
                Self::wait_in_thread(slf, lp, pid);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Without pidfds: a thread waits for the exit with `waitid(WNOWAIT)` (the child stays
    /// a zombie, so its pid cannot be reused before the loop thread reaps it), then wakes
    /// the loop; if the loop is closed by then, the thread reaps it itself.
    fn wait_in_thread(slf: &Bound<'_, Self>, lp: &Bound<'_, LoopCore>, pid: i32) {
        let core = slf.clone().unbind();
        let lp = lp.clone().unbind();
        let spawned = std::thread::Builder::new()
            .name(format!("ferroloop-waitpid-{pid}"))
            .spawn(move || {
                let _ = process::wait_exit_unreaped(pid);
                Python::attach(|py| {
                    let lp = lp.bind(py);
                    let notified = core
                        .bind(py)
                        .getattr("_child_ready")
                        .and_then(|ready| lp.call_method1("call_soon_threadsafe", (ready,)));
                    if notified.is_err() {
                        // The loop was closed meanwhile: reap here, no zombie.
                        let _ = process::reap_pid(pid);
                        let _ = loop_closed_warning(py, lp.as_any(), pid);
                    }
                })
            });
        if spawned.is_err() {
            // No thread either: the child is reaped when the loop closes.
            let py = slf.py();
            let _ = pyapi::asyncio_logger(py).and_then(|l| {
                l.call_method1("warning", ("cannot watch child process pid %d", pid))
            });
        }
    }

    /// Sends `signal` (asyncio's `send_signal`, with 3.13's check: nothing once the exit
    /// is known), through the pidfd when there is one.
    pub(super) fn signal(&self, py: Python<'_>, signal: &Bound<'_, PyAny>) -> PyResult<()> {
        let sig: libc::c_int = signal.extract()?;
        let (pid, pidfd) = {
            let st = self.st.borrow(py);
            if st.proc.is_none() {
                return Err(PyProcessLookupError::new_err(()));
            }
            if st.returncode.is_some() {
                return Ok(());
            }
            let pidfd = match &st.watch {
                Watch::Pidfd(fd) => Some(fd.as_raw_fd()),
                _ => None,
            };
            (st.pid.unwrap_or(0), pidfd)
        };
        let sent = match pidfd {
            Some(fd) => process::pidfd_send_signal(fd, sig),
            // Still our unreaped child (the exit is not known yet): its pid is ours.
            // SAFETY: kill(2) takes plain integers.
            None => match unsafe { libc::kill(pid, sig) } {
                0 => Ok(()),
                _ => Err(Errno::last()),
            },
        };
        match sent {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(os_error(e)),
        }
    }
}

impl SubprocessCore {
    /// The child exited (its pidfd is readable, or the waiting thread said so): reap it
    /// and report its return code.
    pub(super) fn child_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (lp, pid, proc) = {
            let st = slf.get().st.borrow(py);
            (
                st.loop_.as_ref().map(|l| l.clone_ref(py)),
                st.pid.unwrap_or(0),
                st.proc.as_ref().map(|p| p.clone_ref(py)),
            )
        };
        let reaped = match &slf.get().st.borrow(py).watch {
            Watch::Pidfd(fd) => process::reap_pidfd(fd.as_raw_fd()),
            Watch::Thread => process::reap_pid(pid),
            Watch::None => return Ok(()),
        };
        let returncode = match reaped {
            Ok(Child::Exited(code)) => code.into_pyobject(py)?.into_any(),
            // Not exited after all: keep watching (the one-shot registration re-armed).
            Ok(Child::Running) => return Self::rearm_pidfd(slf),
            Err(Errno::ECHILD) => {
                // Reaped elsewhere: by Popen itself (poll(), wait()), which kept the
                // status, or by someone else, whose status asyncio reports as 255.
                let known = match &proc {
                    Some(p) => p.bind(py).getattr("returncode")?,
                    None => py.None().into_bound(py),
                };
                if known.is_none() {
                    pyapi::asyncio_logger(py)?.call_method1(
                        "warning",
                        ("child process pid %d exit status already read:  will report returncode 255", pid),
                    )?;
                    255i32.into_pyobject(py)?.into_any()
                } else {
                    known
                }
            }
            Err(e) => return Err(os_error(e)),
        };
        let (watch, ready) = {
            let mut st = slf.get().st.borrow_mut(py);
            (
                std::mem::replace(&mut st.watch, Watch::None),
                st.pidfd_ready.take(),
            )
        };
        if let (Watch::Pidfd(fd), Some(lp), Some(ready)) = (&watch, &lp, &ready) {
            // The one-shot registration reported and is disabled: parked without a system
            // call, then forgotten, as the fd is closed below (see `Fds::forget_parked`).
            let lp = lp.bind(py);
            LoopCore::park_reader(lp, fd.as_raw_fd(), ready.bind(py))?;
            lp.get().forget_parked(py, fd.as_raw_fd());
        }
        drop((watch, ready));
        if let Some(lp) = &lp {
            let children = lp.bind(py).getattr(pyo3::intern!(py, CHILDREN))?;
            children.call_method1(pyo3::intern!(py, "pop"), (pid, py.None()))?;
        }
        Self::process_exited(slf, returncode)
    }

    /// A pidfd that woke with its child still running: its one-shot read re-armed.
    #[cold]
    fn rearm_pidfd(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (lp, fd, ready) = {
            let st = slf.get().st.borrow(py);
            let Watch::Pidfd(fd) = &st.watch else {
                return Ok(());
            };
            (
                st.loop_.as_ref().map(|l| l.clone_ref(py)),
                fd.as_raw_fd(),
                st.pidfd_ready.as_ref().map(|r| r.clone_ref(py)),
            )
        };
        match (lp, ready) {
            (Some(lp), Some(ready)) => LoopCore::rearm_reader(lp.bind(py), fd, ready.bind(py)),
            _ => Ok(()),
        }
    }

    /// The loop closes while the child runs: its pidfd is released, and the child is
    /// reaped in the background when it exits (asyncio's stock loop leaves a zombie).
    pub(super) fn loop_closed(&self, py: Python<'_>, lp: &Bound<'_, PyAny>) -> PyResult<()> {
        let (watch, ready, pid) = {
            let mut st = self.st.borrow_mut(py);
            let watch = std::mem::replace(&mut st.watch, Watch::None);
            (watch, st.pidfd_ready.take(), st.pid)
        };
        drop(ready);
        let Some(pid) = pid else {
            return Ok(());
        };
        if matches!(watch, Watch::None) {
            return Ok(());
        }
        if matches!(watch, Watch::Thread) {
            // The waiting thread of the fallback reaps (and warns) by itself.
            return Ok(());
        }
        drop(watch);
        loop_closed_warning(py, lp, pid)?;
        {
            let spawned = std::thread::Builder::new()
                .name(format!("ferroloop-reap-{pid}"))
                .spawn(move || {
                    let _ = process::wait_and_reap(pid);
                });
            if spawned.is_err() {
                return Err(PyRuntimeError::new_err(
                    "cannot start a thread to reap the child",
                ));
            }
        }
        Ok(())
    }
}

fn loop_closed_warning(py: Python<'_>, lp: &Bound<'_, PyAny>, pid: i32) -> PyResult<()> {
    pyapi::asyncio_logger(py)?.call_method1(
        "warning",
        ("Loop %r that handles pid %r is closed", lp, pid),
    )?;
    Ok(())
}
