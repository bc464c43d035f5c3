//! Watching fds: `add_reader`/`add_writer` and their removal with selectors' lookup
//! rules and asyncio's check that no transport uses the fd, the socket calls' one-shot
//! registrations, and the count of waiting socket calls whose sockets the loop checks
//! for a close().

use std::os::fd::RawFd;

use pyo3::exceptions::{PyAttributeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple};

use super::deadline::When;
use super::fds::{self, Dir, Fds};
use super::handles::Handle;
use super::{LoopCore, SOCK_CHECK_INTERVAL};
use crate::clock;
use crate::errors::{closed_error, fd_overflow, fileobj_to_fd, os_error, repr};
use crate::poller::Poller;
use crate::sock_ops::SockCall;

impl LoopCore {
    /// The fd `fileobj` names, as selectors finds it: by its number or, when that fails
    /// (a closed socket's `fileno()` is -1), by the registration made with the object
    /// itself. `Ok(None)`: a number too big for any registration. When found by the
    /// object, the ValueError its number gave comes along.
    pub(super) fn lookup_fd(
        &self,
        py: Python<'_>,
        fileobj: &Bound<'_, PyAny>,
    ) -> PyResult<(Option<RawFd>, Option<PyErr>)> {
        match fileobj_to_fd(fileobj) {
            Ok(fd) => Ok((fd, None)),
            Err(e) if e.is_instance_of::<PyValueError>(py) => {
                match self.st.borrow(py).fds.find_fileobj(fileobj) {
                    Some(fd) => Ok((Some(fd), Some(e))),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) fn add_io(
        slf: &Bound<'_, Self>,
        fileobj: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        dir: Dir,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed(py)?;
        let fd = match this.lookup_fd(py, fileobj)? {
            (None, _) => return Err(fd_overflow()),
            (Some(fd), None) => fd,
            // Found by the object (a closed socket): selectors replaces a watcher
            // there without a system call, but a new direction makes it modify the
            // closed fd's registration, which fails with EBADF and drops it.
            (Some(fd), Some(_)) => {
                if !this.st.borrow(py).fds.get(fd).is_some_and(|e| e.has(dir)) {
                    Self::forget_fd(slf, fd)?;
                    return Err(os_error(nix::errno::Errno::EBADF));
                }
                let state = Self::new_handle(slf, callback, args, context, None)?;
                let handle = Self::handle_for(slf, state)?;
                let old = this
                    .st
                    .borrow_mut(py)
                    .fds
                    .replace(fd, dir, handle.clone_ref(py));
                if let Some(old) = old {
                    Handle::do_cancel(old.bind(py))?;
                }
                return Ok(handle);
            }
        };
        let fileobj = Some(fileobj.clone().unbind());
        Self::watch(slf, fd, callback, args, dir, false, fileobj, context)
    }

    /// Drops every watcher of `fd` (cancelled) and its registration.
    pub(super) fn forget_fd(slf: &Bound<'_, Self>, fd: RawFd) -> PyResult<()> {
        let py = slf.py();
        for dir in [Dir::Read, Dir::Write] {
            let (old, fileobj) = {
                let mut st = slf.get().st.borrow_mut(py);
                let Some(poller) = st.poller.clone() else {
                    return Ok(());
                };
                st.fds.remove(&poller, fd, dir, None).map_err(os_error)?
            };
            drop(fileobj);
            if let Some(old) = old {
                Handle::do_cancel(old.bind(py))?;
            }
        }
        Ok(())
    }

    /// Watches `fd` for `dir` with a new handle for `callback(*args)`, for a socket
    /// call (see `Fds`).
    pub(crate) fn add_io_fd(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        dir: Dir,
    ) -> PyResult<Py<Handle>> {
        Self::watch(slf, fd, callback, args, dir, true, None, None)
    }

    /// Watches `fd` for `dir` with a new handle for `callback(*args)`; the handle it
    /// replaces, if any, is cancelled (asyncio's `_add_reader`/`_add_writer`). `context`:
    /// the one the callback runs in, a copy of the current one if None.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn watch(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        dir: Dir,
        sock_call: bool,
        fileobj: Option<Py<PyAny>>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        slf.get().check_closed(py)?;
        let state = Self::new_handle(slf, callback, args, context, None)?;
        let handle = Self::handle_for(slf, state)?;
        let (old, old_fileobj) = {
            let mut st = slf.get().st.borrow_mut(py);
            let poller = st.poller.clone().ok_or_else(closed_error)?;
            st.fds
                .add(&poller, fd, dir, handle.clone_ref(py), sock_call, fileobj)
                .map_err(os_error)?
        };
        drop(old_fileobj);
        if let Some(old) = old {
            Handle::do_cancel(old.bind(py))?;
        }
        Ok(handle)
    }

    /// Whether the watcher of `fd` for `dir` calls `owner`.
    pub(super) fn watched_by(
        &self,
        py: Python<'_>,
        fd: RawFd,
        dir: Dir,
        owner: &Bound<'_, PyAny>,
    ) -> bool {
        self.st.borrow(py).fds.get(fd).is_some_and(|e| {
            let slot = match dir {
                Dir::Read => &e.reader,
                Dir::Write => &e.writer,
            };
            slot.as_ref()
                .is_some_and(|h| h.get().callback_is(py, owner))
        })
    }

    /// `fd` is being closed by the transport that owns it: forget its parked
    /// registration (see `Fds::forget_parked`).
    pub(crate) fn forget_parked(&self, py: Python<'_>, fd: RawFd) {
        let gone = self.st.borrow_mut(py).fds.forget_parked(fd);
        drop(gone);
    }

    /// A socket call finished reading: its reader goes, its one-shot registration stays
    /// parked for the next call (see `Fds`). Nothing if `owner` no longer reads `fd`.
    pub(crate) fn park_reader(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        owner: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        Self::drop_watcher_of(slf, fd, Dir::Read, owner, |fds, poller| {
            fds.park_reader(poller, fd)
        })
    }

    /// Takes `owner`'s watcher of `fd` for `dir` out of the registry with `take` (which
    /// updates the poller), then cancels it. Nothing if the watcher there is someone
    /// else's by now.
    pub(super) fn drop_watcher_of(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        dir: Dir,
        owner: &Bound<'_, PyAny>,
        take: impl FnOnce(&mut Fds, &Poller) -> nix::Result<fds::Released>,
    ) -> PyResult<()> {
        let py = slf.py();
        if !slf.get().watched_by(py, fd, dir, owner) {
            return Ok(());
        }
        let (old, fileobj) = {
            let mut st = slf.get().st.borrow_mut(py);
            let Some(poller) = st.poller.clone() else {
                return Ok(());
            };
            take(&mut st.fds, &poller).map_err(os_error)?
        };
        drop(fileobj);
        if let Some(old) = old {
            Handle::do_cancel(old.bind(py))?;
        }
        Ok(())
    }

    /// A socket call woke for nothing (spurious readiness): re-arm its one-shot read.
    pub(crate) fn rearm_reader(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        owner: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        if !slf.get().watched_by(py, fd, Dir::Read, owner) {
            return Ok(());
        }
        let mut st = slf.get().st.borrow_mut(py);
        let Some(poller) = st.poller.clone() else {
            return Ok(());
        };
        st.fds.rearm(&poller, fd).map_err(os_error)
    }

    /// Stops watching `fd` for `dir` if the watcher there calls `owner` (so an operation
    /// that finished, or was cancelled, never removes a watcher installed after it).
    pub(crate) fn remove_io_owned_by(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        dir: Dir,
        owner: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        Self::drop_watcher_of(slf, fd, dir, owner, |fds, poller| {
            fds.remove(poller, fd, dir, None)
        })
    }

    /// A socket call starts waiting: the first one schedules the check of their sockets.
    pub(crate) fn sock_call_waits(slf: &Bound<'_, Self>) -> PyResult<()> {
        let arm = {
            let mut st = slf.get().st.borrow_mut(slf.py());
            st.sock_waiters += 1;
            !st.sock_check_armed && !st.closed
        };
        if arm {
            Self::arm_sock_check(slf)?;
        }
        Ok(())
    }

    pub(crate) fn sock_call_ends(&self, py: Python<'_>) {
        let mut st = self.st.borrow_mut(py);
        st.sock_waiters = st.sock_waiters.saturating_sub(1);
    }

    pub(super) fn arm_sock_check(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let check = slf.getattr(pyo3::intern!(py, "_check_sock_calls"))?;
        let when = When::Computed(clock::monotonic() + SOCK_CHECK_INTERVAL);
        // Not a user's call: no debug-mode checks (a socket call made from another
        // thread passes asyncio's, which only call_soon and the timers make).
        Self::schedule_at(slf, when, &check, &PyTuple::empty(py), None, None)?;
        slf.get().st.borrow_mut(py).sock_check_armed = true;
        Ok(())
    }

    /// The socket calls waiting on this loop's fds.
    pub(super) fn waiting_sock_calls(&self, py: Python<'_>) -> Vec<Py<SockCall>> {
        let st = self.st.borrow(py);
        st.fds
            .iter()
            .filter_map(|h| h.get().callback_of::<SockCall>(py))
            .collect()
    }

    pub(crate) fn remove_io(
        slf: &Bound<'_, Self>,
        fileobj: &Bound<'_, PyAny>,
        dir: Dir,
    ) -> PyResult<bool> {
        let py = slf.py();
        if slf.get().st.borrow(py).closed {
            return Ok(false);
        }
        let (Some(fd), _) = slf.get().lookup_fd(py, fileobj)? else {
            return Ok(false);
        };
        let (old, old_fileobj) = {
            let mut st = slf.get().st.borrow_mut(py);
            let Some(poller) = st.poller.clone() else {
                return Ok(false);
            };
            let named = Some(fileobj.clone().unbind());
            st.fds.remove(&poller, fd, dir, named).map_err(os_error)?
        };
        drop(old_fileobj);
        match old {
            Some(old) => {
                Handle::do_cancel(old.bind(py))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// asyncio's `_ensure_fd_no_transport`: a RuntimeError for an fd that a transport
    /// still uses (registry.rs).
    pub(crate) fn ensure_fd_no_transport(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let fileno = if fd.is_instance_of::<PyInt>() {
            fd.clone()
        } else {
            // selectors' _fileobj_to_fd conversion, as asyncio repeats it here.
            let invalid = |e: PyErr| {
                if e.is_instance_of::<PyAttributeError>(py)
                    || e.is_instance_of::<PyTypeError>(py)
                    || e.is_instance_of::<PyValueError>(py)
                {
                    PyValueError::new_err(format!("Invalid file object: {}", repr(fd)))
                } else {
                    e
                }
            };
            let n = fd
                .call_method0(pyo3::intern!(py, "fileno"))
                .map_err(invalid)?;
            py.get_type::<PyInt>().call1((n,)).map_err(invalid)?
        };
        // An int no fd can be has no transport (asyncio's dict lookup misses too).
        let Ok(fileno) = fileno.extract::<RawFd>() else {
            return Ok(());
        };
        slf.get().refuse_fd_of_transport(py, fileno, || repr(fd))?;
        Ok(())
    }
}
