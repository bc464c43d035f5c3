//! `WritePipeTransportCore`: the write end of a pipe, FIFO, character device or pty, as
//! asyncio's `_UnixWritePipeTransport`, with its flow control.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyAssertionError, PyOSError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use pyo3::{PyTraverseError, PyVisit};

use super::{lose_connection, LOG_THRESHOLD_FOR_CONNLOST_WRITES};
use crate::errors::{self, os_error};
use crate::gil_cell::GilCell;
use crate::loop_core::fds::Dir;
use crate::loop_core::stats::{TransportIo, TransportKind};
use crate::loop_core::LoopCore;
use crate::pyapi;
use crate::syscalls;
use crate::transports::base::{self, clone_opt, Links};
use crate::transports::flow::{self, WaterMarks};

struct WritePipeState {
    links: Links,
    /// Pending output; `head` bytes at its front are already written.
    wbuf: Vec<u8>,
    head: usize,
    conn_lost: u32,
    /// Set by close() and write_eof().
    closing: bool,
    protocol_paused: bool,
    marks: WaterMarks,
}

impl WritePipeState {
    fn pending(&self) -> usize {
        self.wbuf.len() - self.head
    }

    fn clear(&mut self) {
        self.wbuf.clear();
        self.head = 0;
    }

    fn consume(&mut self, n: usize) {
        self.head += n;
        if self.head == self.wbuf.len() {
            self.clear();
        } else if self.head > 64 * 1024 && self.head * 2 > self.wbuf.len() {
            self.wbuf.drain(..self.head);
            self.head = 0;
        }
    }
}

#[pyclass(
    name = "WritePipeTransportCore",
    module = "ferroloop._core",
    frozen,
    weakref
)]
pub(crate) struct WritePipeTransport {
    fd: RawFd,
    /// Counted under `pipe` from creation until `_call_connection_lost`.
    io: TransportIo,
    st: GilCell<WritePipeState>,
}

/// The bytes of `data`, borrowed through a buffer view (copied when not C-contiguous: a
/// strided memoryview is written as its bytes in order, as the stream transport does).
fn data_view(data: &Bound<'_, PyAny>) -> PyResult<Option<pyo3::buffer::PyUntypedBuffer>> {
    if !(data.is_instance_of::<PyBytes>()
        || data.is_instance_of::<PyByteArray>()
        || data.is_instance_of::<PyMemoryView>())
    {
        return Ok(None);
    }
    let view = pyo3::buffer::PyUntypedBuffer::get(data)?;
    if view.is_c_contiguous() {
        return Ok(Some(view));
    }
    let bytes = data.call_method0("tobytes")?;
    Ok(Some(pyo3::buffer::PyUntypedBuffer::get(&bytes)?))
}

impl WritePipeTransport {
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

    fn watch(slf: &Bound<'_, Self>, dir: Dir) -> PyResult<()> {
        let py = slf.py();
        let Some(lp) = slf.get().loop_of(py) else {
            return Ok(());
        };
        let cb = match dir {
            Dir::Read => slf.getattr(pyo3::intern!(py, "_read_ready"))?,
            Dir::Write => slf.getattr(pyo3::intern!(py, "_write_ready"))?,
        };
        let context = clone_opt(py, &slf.get().st.borrow(py).links.context);
        base::watch(&lp, slf.get().fd, &cb, dir, context.as_ref())
    }

    fn unwatch(&self, py: Python<'_>, dir: Dir) -> PyResult<()> {
        match self.loop_of(py) {
            Some(lp) => base::unwatch(&lp, self.fd, dir),
            None => Ok(()),
        }
    }

    fn schedule_connection_lost(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let (lp, context) = {
            let st = slf.get().st.borrow(py);
            (st.links.loop_of(py), clone_opt(py, &st.links.context))
        };
        let Some(lp) = lp else {
            return Ok(());
        };
        let cb = slf.getattr(pyo3::intern!(py, "_call_connection_lost"))?;
        base::call_soon(&lp, &cb, &[exc], context.as_ref())
    }

    /// asyncio's `_close`: drop the buffer, stop watching, `connection_lost(exc)` from the
    /// loop.
    fn close_with(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let had_buffer = {
            let mut st = this.st.borrow_mut(py);
            st.closing = true;
            let had = st.pending() > 0;
            st.clear();
            had
        };
        if had_buffer {
            this.unwatch(py, Dir::Write)?;
        }
        this.unwatch(py, Dir::Read)?;
        Self::schedule_connection_lost(slf, exc)
    }

    /// asyncio's `_fatal_error`: OSErrors (EPIPE…) are expected and logged in debug mode
    /// only; anything else goes to the exception handler. Then closed.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if errors::propagates(py, &err) {
            return Err(err);
        }
        let exc = err.into_value(py).into_any();
        let exc = exc.bind(py);
        let this = slf.get();
        if let Some(lp) = this.loop_of(py) {
            if !exc.is_instance_of::<PyOSError>() {
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

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let pause = {
            let mut st = slf.get().st.borrow_mut(py);
            let over = st.pending() > st.marks.high && !st.protocol_paused;
            if over {
                st.protocol_paused = true;
            }
            over
        };
        if pause {
            Self::notify_flow(slf, "pause_writing")?;
        }
        Ok(())
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let resume = {
            let mut st = slf.get().st.borrow_mut(py);
            let under = st.protocol_paused && st.pending() <= st.marks.low;
            if under {
                st.protocol_paused = false;
            }
            under
        };
        if resume {
            Self::notify_flow(slf, "resume_writing")?;
        }
        Ok(())
    }

    fn notify_flow(slf: &Bound<'_, Self>, method: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(protocol) = this.protocol(py) else {
            return Ok(());
        };
        if let Some(err) = flow::notify(protocol.bind(py), method)? {
            if let Some(lp) = this.loop_of(py) {
                let exc = err.into_value(py).into_any();
                let message = format!("protocol.{method}() failed");
                base::report(
                    &lp,
                    &message,
                    exc.bind(py),
                    this.owner(py).as_ref(),
                    Some(&protocol),
                )?;
            }
        }
        Ok(())
    }
}

#[pymethods]
impl WritePipeTransport {
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
        Ok(WritePipeTransport {
            fd,
            io: TransportIo::opened(&lp.get().stats, TransportKind::Pipe),
            st: GilCell::new(WritePipeState {
                links: Links::new(lp, pipe, owner, protocol, context),
                wbuf: Vec::new(),
                head: 0,
                conn_lost: 0,
                closing: false,
                protocol_paused: false,
                marks: WaterMarks::default(),
            }),
        })
    }

    /// Watches the pipe for reading: the write end of a FIFO or a socket polls readable
    /// (EPOLLERR, EPOLLHUP) once the reader has gone (asyncio's "reader trick"). Skipped
    /// once closing (asyncio adds it all the same, to a pipe about to be closed).
    fn _watch_peer(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().st.borrow(slf.py()).closing {
            return Ok(());
        }
        Self::watch(slf, Dir::Read)
    }

    /// The reader went away: closed, with BrokenPipeError if data was still buffered.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.debug(py) {
            base::log(py, "info", ("%r was closed by peer", this.owner(py)))?;
        }
        let exc = if this.st.borrow(py).pending() > 0 {
            py.get_type::<pyo3::exceptions::PyBrokenPipeError>()
                .call0()?
        } else {
            py.None().into_bound(py)
        };
        Self::close_with(slf, &exc)
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(view) = data_view(data)? else {
            // asyncio: `assert isinstance(data, (bytes, bytearray, memoryview)), repr(data)`.
            return Err(PyAssertionError::new_err(errors::repr(data)));
        };
        let bytes = pyapi::buffer_bytes(&view);
        if bytes.is_empty() {
            return Ok(());
        }
        let empty = {
            let mut st = this.st.borrow_mut(py);
            if st.conn_lost > 0 || st.closing {
                let warn = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
                st.conn_lost += 1;
                drop(st);
                if warn {
                    base::log(
                        py,
                        "warning",
                        ("pipe closed by peer or os.write(pipe, data) raised exception.",),
                    )?;
                }
                return Ok(());
            }
            st.pending() == 0
        };
        let mut sent = 0;
        if empty {
            match syscalls::write_native(this.fd, bytes) {
                Ok(n) => {
                    // 0: EAGAIN (or EINTR), a write that took nothing.
                    if n > 0 {
                        this.io.wrote(n);
                    }
                    sent = n;
                }
                Err(e) => {
                    drop(view);
                    this.st.borrow_mut(py).conn_lost += 1;
                    return Self::fatal_error(
                        slf,
                        os_error(e),
                        "Fatal write error on pipe transport",
                    );
                }
            }
            if sent == bytes.len() {
                return Ok(());
            }
            // Watched before buffered, as asyncio: on a closed loop the RuntimeError
            // leaves nothing behind.
            Self::watch(slf, Dir::Write)?;
        }
        this.st
            .borrow_mut(py)
            .wbuf
            .extend_from_slice(&bytes[sent..]);
        drop(view);
        Self::maybe_pause_protocol(slf)
    }

    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let result = {
            let st = this.st.borrow(py);
            if st.pending() == 0 {
                // Nothing to write (asyncio asserts there is): stop watching.
                drop(st);
                return this.unwatch(py, Dir::Write);
            }
            syscalls::write_native(this.fd, &st.wbuf[st.head..])
        };
        match result {
            Ok(0) => Ok(()),
            Ok(n) => {
                this.io.wrote(n);
                let flushed = {
                    let mut st = this.st.borrow_mut(py);
                    st.consume(n);
                    st.pending() == 0
                };
                if !flushed {
                    return Ok(());
                }
                this.unwatch(py, Dir::Write)?;
                // May write more, through the protocol's resume_writing().
                Self::maybe_resume_protocol(slf)?;
                if this.st.borrow(py).closing {
                    this.unwatch(py, Dir::Read)?;
                    Self::_call_connection_lost(slf, &py.None().into_bound(py))?;
                }
                Ok(())
            }
            Err(e) => {
                {
                    let mut st = this.st.borrow_mut(py);
                    st.clear();
                    st.conn_lost += 1;
                }
                // Removed here: `_fatal_error()` doesn't, the buffer being empty now.
                this.unwatch(py, Dir::Write)?;
                Self::fatal_error(slf, os_error(e), "Fatal write error on pipe transport")
            }
        }
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let flushed = {
            let mut st = this.st.borrow_mut(py);
            if st.closing {
                return Ok(());
            }
            if st.links.file.is_none() {
                // asyncio: `assert self._pipe`.
                return Err(PyAssertionError::new_err(()));
            }
            st.closing = true;
            st.pending() == 0
        };
        if flushed {
            this.unwatch(py, Dir::Read)?;
            Self::schedule_connection_lost(slf, &py.None().into_bound(py))?;
        }
        Ok(())
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let open = {
            let st = slf.get().st.borrow(slf.py());
            st.links.file.is_some() && !st.closing
        };
        if open {
            // write_eof is all what is needed to close the write end.
            Self::write_eof(slf)?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close_with(slf, &slf.py().None().into_bound(slf.py()))
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

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.st.borrow(py).pending()
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (Py<PyAny>, Py<PyAny>) {
        self.st.borrow(py).marks.get(py)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let marks = WaterMarks::parse(py, high, low)?;
        let old = std::mem::replace(&mut slf.get().st.borrow_mut(py).marks, marks);
        drop(old);
        Self::maybe_pause_protocol(slf)
    }

    #[pyo3(signature = (exc, message="Fatal error on pipe transport"))]
    fn _fatal_error(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        Self::fatal_error(slf, PyErr::from_value(exc.clone()), message)
    }

    #[pyo3(signature = (exc=None))]
    fn _close(slf: &Bound<'_, Self>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let none = slf.py().None().into_bound(slf.py());
        Self::close_with(slf, exc.unwrap_or(&none))
    }

    /// `protocol.connection_lost(exc)`, then the pipe closed and the transport's links
    /// released. Once only: asyncio's second call (an `abort()` after a close) fails
    /// with AttributeError on the released protocol.
    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let (pipe, protocol) = {
            let st = slf.get().st.borrow(py);
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
        slf.get().io.closed();
        let released = slf.get().st.borrow_mut(py).links.release();
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
    fn _conn_lost(&self, py: Python<'_>) -> u32 {
        self.st.borrow(py).conn_lost
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).closing
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).protocol_paused
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        self.loop_of(py).map(Bound::unbind)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(st) = self.st.try_borrow_for_gc(&visit) else {
            return Ok(());
        };
        st.links.traverse(&visit)?;
        st.marks.traverse(&visit)
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let taken = {
                let mut st = self.st.borrow_mut(py);
                (st.links.clear(), st.marks.given.take())
            };
            drop(taken);
        })
    }
}
