//! `DatagramTransportCore`: the native half of ferroloop's UDP and Unix datagram
//! transport, with the semantics of asyncio's `_SelectorDatagramTransport`
//! (selector_events.py).
//!
//! The Python class `ferroloop._datagram.DatagramTransport` owns one and binds `sendto`
//! straight to it. Reads (`read.rs`) take several datagrams per readiness event into
//! reused buffers, recvmmsg(2)'s for IP sockets and the thread's read buffer for Unix ones
//! (asyncio's `recvfrom(256 KiB)` allocates, and glibc maps and unmaps, 256 KiB per
//! datagram); `sendto` (`write.rs`) tries the syscall at once and buffers only when the
//! socket would block. Addresses are converted natively for IPv4,
//! IPv6 and Unix sockets (`addr.rs`); a socket subclass, another family, or an address
//! the socket module has to resolve goes through the socket object's own methods, as in
//! asyncio.

mod addr;
mod defer;
mod read;
mod write;

use std::collections::VecDeque;
use std::os::fd::RawFd;

use nix::libc;
use pyo3::exceptions::{PyOSError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::{PyTraverseError, PyVisit};

use crate::errors;
use crate::gil_cell::GilCell;
use crate::loop_core::fds::Dir;
use crate::loop_core::stats::{TransportIo, TransportKind};
use crate::loop_core::LoopCore;
use crate::pyapi;
use crate::transports::base::{self, clone_opt, Links};
use crate::transports::flow::WaterMarks;
use addr::AddrCache;
use defer::Outgoing;

/// asyncio's `_SelectorTransport.max_size`: the most one read asks for.
const MAX_READ: usize = 256 * 1024;
/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

struct DatagramState {
    links: Links,
    /// The remote address given at creation (`remote_addr=`), to which `sendto(data)`
    /// sends and which `sendto(data, addr)` must match.
    address: Option<Py<PyAny>>,
    /// Buffered datagrams and their destinations (None when connected), and asyncio's
    /// count of them: their bytes plus, from 3.13, 8 per datagram.
    buffer: VecDeque<(Py<PyBytes>, Py<PyAny>)>,
    buffer_size: usize,
    conn_lost: u32,
    closing: bool,
    paused: bool,
    protocol_paused: bool,
    protocol_connected: bool,
    marks: WaterMarks,
    addrs: AddrCache,
    /// Datagrams read but not yet delivered: the rest of a batch when the protocol
    /// paused reading (or failed) part-way through it.
    pending: VecDeque<(Py<PyAny>, Py<PyAny>)>,
    /// Whether `sendto()` defers its sends (`defer.rs`): while a burst of datagrams is
    /// delivered. And what it deferred, in order.
    deferring: bool,
    out: VecDeque<Outgoing>,
    /// Whether consecutive deferred datagrams to one peer leave as one UDP GSO message
    /// (`syscalls/batch_send.rs`); None until first asked.
    gso: Option<bool>,
}

#[pyclass(
    name = "DatagramTransportCore",
    module = "ferroloop._core",
    frozen,
    weakref
)]
pub(crate) struct DatagramTransport {
    fd: RawFd,
    family: libc::c_int,
    /// An exact `socket.socket`: read and written with the syscalls here (a subclass is
    /// driven through its own methods).
    native: bool,
    /// asyncio 3.13+ counts 8 bytes of header per buffered datagram (gh-135444 made the
    /// count consistent); before, the data only.
    header: usize,
    /// asyncio 3.13+ sends empty datagrams (gh-113812); before, `sendto(b'')` is ignored.
    sends_empty: bool,
    /// Whether sends are `send()`s: asyncio's `self._extra['peername']` is true (or the
    /// socket is connected to an unnamed Unix socket, whose peer name is `''`).
    connected: bool,
    /// Counted under `udp` (Unix datagram sockets too) from creation until the
    /// connection is lost: one read or write per datagram.
    io: TransportIo,
    st: GilCell<DatagramState>,
}

impl DatagramTransport {
    fn loop_of<'py>(&self, py: Python<'py>) -> Option<Bound<'py, LoopCore>> {
        self.st.borrow(py).links.loop_of(py)
    }

    fn owner(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        clone_opt(py, &self.st.borrow(py).links.owner)
    }

    fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        clone_opt(py, &self.st.borrow(py).links.protocol)
    }

    fn sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        clone_opt(py, &self.st.borrow(py).links.file)
    }

    fn debug(&self, py: Python<'_>) -> bool {
        self.loop_of(py).is_some_and(|l| l.get().debug(py))
    }

    fn is_reading_now(&self, py: Python<'_>) -> bool {
        let st = self.st.borrow(py);
        !st.closing && !st.paused
    }

    fn watch(slf: &Bound<'_, Self>, dir: Dir) -> PyResult<()> {
        let py = slf.py();
        let Some(lp) = slf.get().loop_of(py) else {
            return Ok(());
        };
        let cb = match dir {
            Dir::Read => slf.getattr(pyo3::intern!(py, "_read_ready"))?,
            Dir::Write => slf.getattr(pyo3::intern!(py, "_sendto_ready"))?,
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

    /// asyncio's `_fatal_error`: OSErrors are expected (logged in debug mode), others go
    /// to the exception handler; then the transport is closed at once.
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
        Self::force_close(slf, exc)
    }

    fn force_close(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // What sendto() deferred was sent as far as the caller can tell (an exception
        // from error_received() meanwhile comes back once the transport is closed).
        let flushed = Self::flush_out(slf);
        let (had_buffer, was_closing, old) = {
            let mut st = this.st.borrow_mut(py);
            if st.conn_lost > 0 {
                return flushed;
            }
            let old = std::mem::take(&mut st.buffer);
            // asyncio before 3.15 leaves the count of a dropped buffer (gh-146507 reset
            // it); a transport with nothing buffered reports 0 here on every version.
            st.buffer_size = 0;
            let was_closing = std::mem::replace(&mut st.closing, true);
            st.conn_lost += 1;
            (!old.is_empty(), was_closing, old)
        };
        drop(old);
        if had_buffer {
            this.unwatch(py, Dir::Write)?;
        }
        if !was_closing {
            this.unwatch(py, Dir::Read)?;
        }
        Self::schedule_connection_lost(slf, exc)?;
        flushed
    }

    /// `protocol.connection_lost(exc)`, then the socket closed and the links released,
    /// whatever connection_lost did. Once only: asyncio's second call fails on the
    /// released socket.
    fn connection_lost(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let (sock, protocol, lp, owner) = {
            let st = self.st.borrow(py);
            if st.links.file.is_none() {
                return Ok(());
            }
            let protocol = st
                .protocol_connected
                .then(|| clone_opt(py, &st.links.protocol));
            (
                clone_opt(py, &st.links.file),
                protocol.flatten(),
                st.links.loop_.as_ref().map(|l| l.clone_ref(py)),
                clone_opt(py, &st.links.owner),
            )
        };
        // No longer the fd's transport once its socket closes below.
        if let Some(lp) = lp {
            let owner = owner.map(|o| o.into_bound(py));
            lp.get().transport_remove(py, self.fd, owner.as_ref());
        }
        let result = match protocol {
            Some(p) => p.bind(py).call_method1("connection_lost", (exc,)).map(drop),
            None => Ok(()),
        };
        let closed = match sock {
            Some(s) => s.bind(py).call_method0("close").map(drop),
            None => Ok(()),
        };
        // Whatever connection_lost did, as the stream transport.
        self.io.closed();
        let released = {
            let mut st = self.st.borrow_mut(py);
            (
                st.links.release(),
                st.addrs.take(),
                std::mem::take(&mut st.pending),
                std::mem::take(&mut st.out),
            )
        };
        drop(released);
        result.and(closed)
    }
}

#[pymethods]
impl DatagramTransport {
    #[new]
    #[pyo3(signature = (loop_, sock, protocol, owner, address, connected, native, context=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        loop_: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        owner: &Bound<'_, PyAny>,
        address: &Bound<'_, PyAny>,
        connected: bool,
        native: bool,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let py = sock.py();
        let lp = loop_
            .cast::<LoopCore>()
            .map_err(|_| PyTypeError::new_err("a ferroloop loop is required"))?;
        let fd: RawFd = sock.call_method0("fileno")?.extract()?;
        let family: libc::c_int = sock.getattr("family")?.extract()?;
        Ok(DatagramTransport {
            fd,
            family,
            native,
            header: if pyapi::version(py) >= (3, 13, 0) {
                8
            } else {
                0
            },
            sends_empty: pyapi::version(py) >= (3, 13, 0),
            connected,
            io: TransportIo::opened(&lp.get().stats, TransportKind::Udp),
            st: GilCell::new(DatagramState {
                links: Links::new(lp, sock, owner, protocol, context),
                address: (!address.is_none()).then(|| address.clone().unbind()),
                buffer: VecDeque::new(),
                buffer_size: 0,
                conn_lost: 0,
                closing: false,
                paused: false,
                protocol_paused: false,
                protocol_connected: true,
                marks: WaterMarks::default(),
                addrs: AddrCache::default(),
                pending: VecDeque::new(),
                deferring: false,
                out: VecDeque::new(),
                gso: None,
            }),
        })
    }

    /// Starts watching the socket (scheduled after `connection_made`, as asyncio's
    /// `_add_reader`: nothing if reading was paused or the transport closed meanwhile).
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().is_reading_now(slf.py()) {
            Self::watch(slf, Dir::Read)?;
        }
        Ok(())
    }

    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::read_ready(slf)
    }

    #[pyo3(signature = (data, addr=None))]
    fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        Self::send_datagram(slf, data, addr)
    }

    fn _sendto_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::drain(slf)
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // As in force_close: sent first, closed whatever error_received() raised.
        let sent = Self::flush_out(slf);
        let flushed = {
            let mut st = this.st.borrow_mut(py);
            if st.closing {
                return sent;
            }
            st.closing = true;
            let flushed = st.buffer.is_empty();
            if flushed {
                st.conn_lost += 1;
            }
            flushed
        };
        this.unwatch(py, Dir::Read)?;
        if flushed {
            this.unwatch(py, Dir::Write)?;
            Self::schedule_connection_lost(slf, &py.None().into_bound(py))?;
        }
        sent
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, &slf.py().None().into_bound(slf.py()))
    }

    fn _force_close(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::force_close(slf, exc)
    }

    #[pyo3(signature = (exc, message="Fatal error on transport"))]
    fn _fatal_error(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        Self::fatal_error(slf, PyErr::from_value(exc.clone()), message)
    }

    fn _call_connection_lost(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        self.connection_lost(py, exc)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).closing
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        self.is_reading_now(py)
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !this.is_reading_now(py) {
            return Ok(());
        }
        this.st.borrow_mut(py).paused = true;
        this.unwatch(py, Dir::Read)?;
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
        Self::watch(slf, Dir::Read)?;
        Self::deliver_pending_soon(slf)?;
        if this.debug(py) {
            base::log(py, "debug", ("%r resumes reading", this.owner(py)))?;
        }
        Ok(())
    }

    fn set_protocol(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        // A deferred send's error is the old protocol's.
        Self::flush_out(slf)?;
        let old = {
            let mut st = slf.get().st.borrow_mut(py);
            st.protocol_connected = true;
            st.links.protocol.replace(protocol.clone().unbind())
        };
        drop(old);
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol(py)
    }

    fn get_write_buffer_size(slf: &Bound<'_, Self>) -> PyResult<usize> {
        Self::flush_out(slf)?;
        Ok(slf.get().st.borrow(slf.py()).buffer_size)
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
        Self::flush_out(slf)?;
        let old = std::mem::replace(&mut slf.get().st.borrow_mut(py).marks, marks);
        drop(old);
        Self::maybe_pause_protocol(slf)
    }

    /// The socket, until the connection is lost (what was deferred sent first: the
    /// caller may send on it).
    #[getter]
    fn _sock(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Self::flush_out(slf)?;
        Ok(slf.get().sock(slf.py()))
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
        self.fd
    }

    #[getter]
    fn _address(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        clone_opt(py, &self.st.borrow(py).address)
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
    fn _paused(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).paused
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
        st.marks.traverse(&visit)?;
        st.addrs.traverse(&visit)?;
        if let Some(a) = &st.address {
            visit.call(a)?;
        }
        for (data, to) in &st.buffer {
            visit.call(data)?;
            visit.call(to)?;
        }
        for (data, from) in &st.pending {
            visit.call(data)?;
            visit.call(from)?;
        }
        for o in &st.out {
            o.traverse(&visit)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let taken = {
                let mut st = self.st.borrow_mut(py);
                (
                    st.links.clear(),
                    st.marks.given.take(),
                    st.addrs.take(),
                    st.address.take(),
                    std::mem::take(&mut st.buffer),
                    std::mem::take(&mut st.pending),
                    std::mem::take(&mut st.out),
                )
            };
            drop(taken);
        })
    }
}
