//! `ReadPipeTransportCore`: the read end of a pipe, FIFO, character device or pty, as
//! asyncio's `_UnixReadPipeTransport`.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyOSError, PyTypeError};
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use super::{lose_connection, MAX_READ};
use crate::errors::{self, os_error};
use crate::gil_cell::GilCell;
use crate::loop_core::fds::Dir;
use crate::loop_core::stats::{TransportIo, TransportKind};
use crate::loop_core::LoopCore;
use crate::pyapi;
use crate::syscalls;
use crate::transports::base::{self, clone_opt, Links};

struct ReadPipeState {
    links: Links,
    closing: bool,
    paused: bool,
}

#[pyclass(
    name = "ReadPipeTransportCore",
    module = "ferroloop._core",
    frozen,
    weakref
)]
pub(crate) struct ReadPipeTransport {
    fd: RawFd,
    /// A pipe's capacity, which sizes its big reads (see `syscalls::read_bytes`).
    capacity: Option<usize>,
    /// Counted under `pipe` from creation until `_call_connection_lost`.
    io: TransportIo,
    st: GilCell<ReadPipeState>,
}

impl ReadPipeTransport {
    fn loop_of<'py>(&self, py: Python<'py>) -> Option<Bound<'py, LoopCore>> {
        self.st.borrow(py).links.loop_of(py)
    }

    fn owner(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        clone_opt(py, &self.st.borrow(py).links.owner)
    }

    fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        clone_opt(py, &self.st.borrow(py).links.protocol)
    }

    fn debug(&self, py: Python<'_>) -> bool {
        self.loop_of(py).is_some_and(|l| l.get().debug(py))
    }

    fn is_reading_now(&self, py: Python<'_>) -> bool {
        let st = self.st.borrow(py);
        !st.paused && !st.closing
    }

    fn watch(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let Some(lp) = slf.get().loop_of(py) else {
            return Ok(());
        };
        let cb = slf.getattr(pyo3::intern!(py, "_read_ready"))?;
        let context = clone_opt(py, &slf.get().st.borrow(py).links.context);
        base::watch(&lp, slf.get().fd, &cb, Dir::Read, context.as_ref())
    }

    fn unwatch(&self, py: Python<'_>) -> PyResult<()> {
        match self.loop_of(py) {
            Some(lp) => base::unwatch(&lp, self.fd, Dir::Read),
            None => Ok(()),
        }
    }

    fn call_soon(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &[&Bound<'_, PyAny>],
    ) -> PyResult<()> {
        let py = slf.py();
        let (lp, context) = {
            let st = slf.get().st.borrow(py);
            (st.links.loop_of(py), clone_opt(py, &st.links.context))
        };
        match lp {
            Some(lp) => base::call_soon(&lp, callback, args, context.as_ref()),
            None => Ok(()),
        }
    }

    /// asyncio's `_close`: stop reading, then `connection_lost(exc)` from the loop.
    fn close_with(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        slf.get().st.borrow_mut(py).closing = true;
        slf.get().unwatch(py)?;
        let cb = slf.getattr(pyo3::intern!(py, "_call_connection_lost"))?;
        Self::call_soon(slf, &cb, &[exc])
    }

    /// asyncio's `_fatal_error`: EIO (a pty whose other side closed) is expected and only
    /// logged in debug mode; anything else goes to the exception handler. Then closed.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if errors::propagates(py, &err) {
            return Err(err);
        }
        let exc = err.into_value(py).into_any();
        let exc = exc.bind(py);
        let eio = exc.is_instance_of::<PyOSError>()
            && exc.getattr("errno")?.extract::<i32>().ok() == Some(nix::libc::EIO);
        let this = slf.get();
        if let Some(lp) = this.loop_of(py) {
            if !eio {
                base::report(
                    &lp,
                    message,
                    exc,
                    this.owner(py).as_ref(),
                    this.protocol(py).as_ref(),
                )?;
            } else if this.debug(py) {
                base::log_debug_exc(py, this.owner(py).as_ref(), message, exc)?;
            }
        }
        Self::close_with(slf, exc)
    }

    fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.debug(py) {
            base::log(py, "info", ("%r was closed by peer", this.owner(py)))?;
        }
        this.st.borrow_mut(py).closing = true;
        this.unwatch(py)?;
        if let Some(protocol) = this.protocol(py) {
            let eof = protocol
                .bind(py)
                .getattr(pyo3::intern!(py, "eof_received"))?;
            Self::call_soon(slf, &eof, &[])?;
        }
        let cb = slf.getattr(pyo3::intern!(py, "_call_connection_lost"))?;
        Self::call_soon(slf, &cb, &[&py.None().into_bound(py)])
    }
}

#[pymethods]
impl ReadPipeTransport {
    #[new]
    #[pyo3(signature = (loop_, pipe, protocol, owner, context=None))]
    fn new(
        loop_: &Bound<'_, PyAny>,
        pipe: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        owner: &Bound<'_, PyAny>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let lp = loop_
            .cast::<LoopCore>()
            .map_err(|_| PyTypeError::new_err("a ferroloop loop is required"))?;
        let fd: RawFd = pipe.call_method0("fileno")?.extract()?;
        Ok(ReadPipeTransport {
            fd,
            capacity: syscalls::pipe_capacity(fd),
            io: TransportIo::opened(&lp.get().stats, TransportKind::Pipe),
            st: GilCell::new(ReadPipeState {
                links: Links::new(lp, pipe, owner, protocol, context),
                closing: false,
                paused: false,
            }),
        })
    }

    /// Starts watching the pipe (scheduled after `connection_made`, as asyncio's
    /// `_add_reader`: nothing if reading was paused or the transport closed meanwhile).
    /// asyncio 3.10 adds the reader even if `connection_made` paused reading (3.11 made
    /// it check); so do we there, though not for a transport already closing, whose pipe
    /// is about to be closed.
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let start = if pyapi::version(py) < (3, 11, 0) {
            !slf.get().st.borrow(py).closing
        } else {
            slf.get().is_reading_now(py)
        };
        if start {
            Self::watch(slf)?;
        }
        Ok(())
    }

    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let data = match syscalls::read_bytes(py, this.fd, MAX_READ, this.capacity)? {
            Ok(Some(data)) => {
                this.io.read(data.as_bytes().len());
                data
            }
            Ok(None) => return Ok(()),
            Err(e) => {
                return Self::fatal_error(slf, os_error(e), "Fatal read error on pipe transport")
            }
        };
        if data.as_bytes().is_empty() {
            return Self::on_eof(slf);
        }
        // A failing data_received() is the handle's error, as in asyncio (not fatal).
        match this.protocol(py) {
            Some(p) => p
                .bind(py)
                .call_method1(pyo3::intern!(py, "data_received"), (data,))
                .map(drop),
            None => Ok(()),
        }
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !this.is_reading_now(py) {
            return Ok(());
        }
        this.st.borrow_mut(py).paused = true;
        this.unwatch(py)?;
        if this.debug(py) {
            base::log(py, "debug", ("%r pauses reading", this.owner(py)))?;
        }
        Ok(())
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut st = this.st.borrow_mut(py);
            if st.closing || !st.paused {
                return Ok(());
            }
            st.paused = false;
        }
        Self::watch(slf)?;
        if this.debug(py) {
            base::log(py, "debug", ("%r resumes reading", this.owner(py)))?;
        }
        Ok(())
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        self.is_reading_now(py)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).closing
    }

    fn set_protocol(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) {
        let old = self
            .st
            .borrow_mut(py)
            .links
            .protocol
            .replace(protocol.clone().unbind());
        drop(old);
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol(py)
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().st.borrow(slf.py()).closing {
            return Ok(());
        }
        Self::close_with(slf, &slf.py().None().into_bound(slf.py()))
    }

    #[pyo3(signature = (exc, message="Fatal error on pipe transport"))]
    fn _fatal_error(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        Self::fatal_error(slf, PyErr::from_value(exc.clone()), message)
    }

    fn _close(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::close_with(slf, exc)
    }

    /// `protocol.connection_lost(exc)`, then the pipe closed and the transport's links
    /// released. Once only: asyncio's second call (a `_close()` after a close) fails
    /// with AttributeError on the released protocol.
    fn _call_connection_lost(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let (pipe, protocol) = {
            let st = self.st.borrow(py);
            if st.links.file.is_none() {
                return Ok(());
            }
            (
                clone_opt(py, &st.links.file),
                clone_opt(py, &st.links.protocol),
            )
        };
        let result = lose_connection(py, protocol, pipe, exc);
        // Whatever connection_lost did, as the stream transport.
        self.io.closed();
        let released = self.st.borrow_mut(py).links.release();
        drop(released);
        result
    }

    /// The pipe, until the connection is lost.
    #[getter]
    fn _pipe(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        clone_opt(py, &self.st.borrow(py).links.file)
    }

    /// Set to forget the pipe without closing it (CPython's tests do, as asyncio lets
    /// them: `transport._pipe = None` silences the unclosed-transport warning).
    #[setter(_pipe)]
    fn set_pipe(&self, py: Python<'_>, pipe: Option<Py<PyAny>>) {
        let old = std::mem::replace(&mut self.st.borrow_mut(py).links.file, pipe);
        drop(old);
    }

    #[getter]
    fn _fileno(&self) -> RawFd {
        self.fd
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).closing
    }

    #[getter]
    fn _paused(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).paused
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        self.loop_of(py).map(Bound::unbind)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self.st.try_borrow_for_gc(&visit) {
            Ok(st) => st.links.traverse(&visit),
            Err(_) => Ok(()),
        }
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let taken = self.st.borrow_mut(py).links.clear();
            drop(taken);
        })
    }
}
