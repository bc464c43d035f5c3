//! `AcceptedSocket`: a connection a server accepted, held as its fd until its Python
//! `socket.socket` is asked for (`get_extra_info('socket')`, the transport's `_sock`).
//!
//! asyncio makes a `socket.socket` (and its `TransportSocket` wrapper) for every accepted
//! connection; most servers never look at it. The object is made the first time it is
//! wanted, from the fd, and owns the fd from then on; until then the fd is closed here,
//! exactly once, when the transport lets go of it (or when this object is dropped, so an
//! accepted connection whose transport is never made does not leak its fd).

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::libc;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::errors::os_error;
use crate::gil_cell::GilCell;
use crate::syscalls::accept::sockaddr_to_py;

static SOCKET_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// An accepted connection's fd with its listener's family, type and protocol.
pub(crate) struct RawSock {
    pub(crate) fd: OwnedFd,
    pub(crate) family: i32,
    stype: i32,
    proto: i32,
}

impl RawSock {
    pub(crate) fn new(fd: OwnedFd, (family, stype, proto): (i32, i32, i32)) -> Self {
        RawSock {
            fd,
            family,
            stype,
            proto,
        }
    }

    /// The `socket.socket` that `socket.accept()` and `setblocking(False)` would have
    /// given; it owns the fd from now on. SOCK_NONBLOCK in the type sets the object's
    /// timeout to 0 without a system call (the fd already is non-blocking, from accept4).
    pub(crate) fn into_socket(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let cls = SOCKET_TYPE.get_or_try_init(py, || {
            py.import("socket")?.getattr("socket").map(Bound::unbind)
        })?;
        let (family, stype, proto) = (self.family, self.stype, self.proto);
        // The object owns the fd once constructed. If construction fails (no memory),
        // whether the fd was taken is unknown: it is left open rather than risk closing
        // a number that may be reused meanwhile.
        let fd = self.fd.into_raw_fd();
        cls.bind(py)
            .call1((family, stype | libc::SOCK_NONBLOCK, proto, fd))
    }

    /// A closed `socket.socket` of this kind (what asyncio's transport holds after the
    /// connection is lost), for a socket first asked for then.
    pub(crate) fn closed_socket(
        py: Python<'_>,
        (family, stype, proto): (i32, i32, i32),
    ) -> PyResult<Bound<'_, PyAny>> {
        let cls = SOCKET_TYPE.get_or_try_init(py, || {
            py.import("socket")?.getattr("socket").map(Bound::unbind)
        })?;
        let sock = cls.bind(py).call1((family, stype, proto))?;
        sock.call_method0(pyo3::intern!(py, "close"))?;
        Ok(sock)
    }

    /// TCP_NODELAY, as `_transports._set_nodelay` sets it on a TCP stream socket (plain
    /// `socket.socket()`'s proto 0 included; other protocols over SOCK_STREAM untouched).
    pub(crate) fn set_nodelay(&self) -> PyResult<()> {
        let tcp = matches!(self.family, libc::AF_INET | libc::AF_INET6)
            && self.stype == libc::SOCK_STREAM
            && matches!(self.proto, 0 | libc::IPPROTO_TCP);
        if !tcp {
            return Ok(());
        }
        let on: libc::c_int = 1;
        // SAFETY: `on` is a readable c_int of the length given; the fd is ours.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(os_error(nix::errno::Errno::last()));
        }
        Ok(())
    }

    pub(crate) fn kind(&self) -> (i32, i32, i32) {
        (self.family, self.stype, self.proto)
    }
}

/// `getsockname()` of `fd` as CPython's socket module converts it.
pub(crate) fn sockname(py: Python<'_>, fd: RawFd) -> PyResult<Py<PyAny>> {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` is a writable sockaddr_storage of `len` bytes; the kernel writes at
    // most that much and the real length into `len`.
    let r = unsafe { libc::getsockname(fd, (&raw mut addr).cast(), &mut len) };
    if r < 0 {
        return Err(os_error(nix::errno::Errno::last()));
    }
    Ok(sockaddr_to_py(py, &addr, len as usize)?.map_or_else(|| py.None(), Bound::unbind))
}

/// A connection accepted natively, handed to the transport that serves it.
#[pyclass(name = "AcceptedSocket", module = "ferroloop._core", frozen)]
pub struct AcceptedSocket {
    fd: RawFd,
    raw: GilCell<Option<RawSock>>,
}

impl AcceptedSocket {
    pub(crate) fn new(raw: RawSock) -> Self {
        AcceptedSocket {
            fd: raw.fd.as_raw_fd(),
            raw: GilCell::new(Some(raw)),
        }
    }

    /// The fd, for the transport that takes it over (None if taken already).
    pub(crate) fn take(&self, py: Python<'_>) -> Option<RawSock> {
        self.raw.borrow_mut(py).take()
    }
}

#[pymethods]
impl AcceptedSocket {
    pub(crate) fn fileno(&self, py: Python<'_>) -> RawFd {
        if self.raw.borrow(py).is_some() {
            self.fd
        } else {
            -1
        }
    }

    /// `socket.getsockname()`, made natively.
    fn getsockname(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        sockname(py, self.fileno(py))
    }

    /// Closes the fd unless a transport took it (a connection whose set-up failed).
    fn close(&self, py: Python<'_>) {
        drop(self.take(py));
    }

    /// The `socket.socket` (it owns the fd from now on), for the paths that need one.
    fn _socket(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match self.take(py) {
            Some(raw) => Ok(Some(raw.into_socket(py)?.unbind())),
            None => Ok(None),
        }
    }
}
