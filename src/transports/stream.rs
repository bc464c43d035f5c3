//! `StreamTransportCore`: the native half of ferroloop's TCP and Unix stream transports,
//! with the semantics of asyncio's `_SelectorSocketTransport` (selector_events.py).
//!
//! The Python class `ferroloop._transports.SocketTransport` (an `asyncio.Transport`) owns
//! one of these and hands its bound methods out directly, so `transport.write(...)` is a
//! call into Rust. Reads and writes happen here; protocol callbacks are called from the
//! loop's run step, through the handles of the fd registry.

use std::os::fd::{AsRawFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags, Shutdown};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyInt, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::os_error;
use crate::gil_cell::GilCell;
use crate::loop_core::fds::Dir;
use crate::loop_core::stats::{TransportIo, TransportKind};
use crate::loop_core::LoopCore;
use crate::pyapi;
use crate::transports::tls::SslProtocol;

mod close;
mod coalesce;
mod flow;
mod lazy_sock;
mod read;
mod setup;
mod tls_read;
#[cfg(feature = "uring")]
mod uring;
mod write;

use write::bytes_like;

pub(crate) use lazy_sock::{AcceptedSocket, RawSock};

/// asyncio's `_SelectorTransport.max_size`: the most one read asks for.
const MAX_READ: usize = 256 * 1024;
/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;
/// Linux's limit on buffers per sendmsg(2).
const IOV_MAX: usize = 1024;
/// asyncio's default high-water mark; the low one is a quarter of it.
const DEFAULT_HIGH_WATER: usize = 64 * 1024;

struct StreamState {
    loop_: Option<Py<LoopCore>>,
    /// The socket object, once there is one (see `raw`).
    sock: Option<Py<PyAny>>,
    /// An accepted connection's fd, until its socket object is asked for (lazy_sock.rs).
    raw: Option<RawSock>,
    /// The family, type and protocol of a connection that started without its socket
    /// object (to make a closed one, asked for after the connection is lost).
    lazy_kind: Option<(i32, i32, i32)>,
    /// The Python transport object that protocols see.
    owner: Option<Py<PyAny>>,
    /// The server that accepted the connection, until it is detached from.
    server: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    buffered: bool,
    /// The protocol is ferroloop's TLS layer, which is handed each read natively.
    tls: Option<Py<SslProtocol>>,
    protocol_connected: bool,
    /// Pending output; `head` bytes at its front are already sent.
    wbuf: Vec<u8>,
    head: usize,
    /// `wbuf` holds writes of the running callback, not yet tried, and the transport is
    /// on its loop's flush list (no write watcher); see coalesce.rs.
    deferred: bool,
    conn_lost: u32,
    closing: bool,
    paused: bool,
    eof: bool,
    protocol_paused: bool,
    /// The water marks as compared with the buffer's size (a float mark's floor).
    high_water: usize,
    low_water: usize,
    /// The marks as `set_write_buffer_limits` got them, which asyncio's
    /// `get_write_buffer_limits()` returns (None: the defaults).
    limits: Option<(Py<PyAny>, Py<PyAny>)>,
    empty_waiter: Option<Py<PyAny>>,
    /// The context protocol callbacks run in (3.15: captured when the connection was
    /// made); None: each callback gets a copy of the current one, as before 3.15.
    context: Option<Py<PyAny>>,
}

impl StreamState {
    fn pending(&self) -> usize {
        self.wbuf.len() - self.head
    }

    fn consume(&mut self, n: usize) {
        self.head += n;
        if self.head == self.wbuf.len() {
            self.wbuf.clear();
            self.head = 0;
        } else if self.head > 64 * 1024 && self.head * 2 > self.wbuf.len() {
            self.wbuf.drain(..self.head);
            self.head = 0;
        }
    }
}

#[pyclass(
    name = "StreamTransportCore",
    module = "ferroloop._core",
    frozen,
    weakref
)]
pub struct StreamTransport {
    fd: RawFd,
    st: GilCell<StreamState>,
    /// Counted open in the loop's statistics until the connection is lost.
    io: TransportIo,
}

/// TCP or Unix, from the socket's address family.
fn kind_of(fd: RawFd) -> TransportKind {
    match socket::getsockname::<socket::SockaddrStorage>(fd)
        .map(|a| socket::SockaddrLike::family(&a))
    {
        Ok(Some(socket::AddressFamily::Unix)) => TransportKind::Unix,
        _ => TransportKind::Tcp,
    }
}

static BUFFERED_PROTOCOL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn tls_of(protocol: &Bound<'_, PyAny>) -> Option<Py<SslProtocol>> {
    protocol
        .cast::<SslProtocol>()
        .ok()
        .map(|t| t.clone().unbind())
}

fn is_buffered_protocol(protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = protocol.py();
    let cls = pyapi::cached_attr(py, &BUFFERED_PROTOCOL, "asyncio", "BufferedProtocol")?;
    protocol.is_instance(&cls)
}

impl StreamTransport {
    fn loop_of<'py>(&self, py: Python<'py>) -> Option<Bound<'py, LoopCore>> {
        self.st
            .borrow(py)
            .loop_
            .as_ref()
            .map(|l| l.bind(py).clone())
    }

    fn owner(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st.borrow(py).owner.as_ref().map(|o| o.clone_ref(py))
    }

    fn protocol<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.st
            .borrow(py)
            .protocol
            .as_ref()
            .map(|p| p.bind(py).clone())
    }

    fn fd_obj<'py>(&self, py: Python<'py>) -> Bound<'py, PyInt> {
        PyInt::new(py, self.fd)
    }

    fn remove_io(&self, py: Python<'_>, dir: Dir) -> PyResult<()> {
        if let Some(lp) = self.loop_of(py) {
            LoopCore::remove_io(&lp, self.fd_obj(py).as_any(), dir)?;
        }
        Ok(())
    }

    fn add_io(slf: &Bound<'_, Self>, dir: Dir) -> PyResult<()> {
        let py = slf.py();
        let Some(lp) = slf.get().loop_of(py) else {
            return Ok(());
        };
        let cb = match dir {
            Dir::Read => slf.getattr(pyo3::intern!(py, "_read_ready"))?,
            Dir::Write => slf.getattr(pyo3::intern!(py, "_write_ready"))?,
        };
        let context = slf.get().context(py);
        LoopCore::add_io(
            &lp,
            slf.get().fd_obj(py).as_any(),
            &cb,
            &PyTuple::empty(py),
            dir,
            context.as_ref().map(|c| c.bind(py)),
        )?;
        Ok(())
    }

    fn call_soon(
        &self,
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
        arg: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if let Some(lp) = self.loop_of(py) {
            let args = match arg {
                Some(a) => PyTuple::new(py, [a])?,
                None => PyTuple::empty(py),
            };
            let context = self.context(py);
            LoopCore::call_soon(&lp, callback, &args, context.as_ref().map(|c| c.bind(py)))?;
        }
        Ok(())
    }

    fn context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st.borrow(py).context.as_ref().map(|c| c.clone_ref(py))
    }

    fn debug(&self, py: Python<'_>) -> bool {
        self.loop_of(py).is_some_and(|l| l.get().debug(py))
    }

    /// `is_closing()`, for the TLS layer above.
    pub(crate) fn closing(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).closing
    }

    /// The socket object, made from the fd first if the connection started without one.
    pub(crate) fn sock_object<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let raw = {
            let mut st = self.st.borrow_mut(py);
            if let Some(s) = &st.sock {
                return Ok(Some(s.bind(py).clone()));
            }
            st.raw.take()
        };
        let Some(raw) = raw else {
            return Ok(None);
        };
        let sock = raw.into_socket(py)?;
        self.st.borrow_mut(py).sock = Some(sock.clone().unbind());
        Ok(Some(sock))
    }

    /// Closes the transport's socket: the object's `close()`, or the fd itself if no
    /// object was made. Its parked registration is forgotten first (see
    /// `Fds::forget_parked`), so the fd number's next file costs one `epoll_ctl`.
    fn close_sock(
        py: Python<'_>,
        sock: Option<Py<PyAny>>,
        raw: Option<RawSock>,
        lp: Option<&Py<LoopCore>>,
        fd: RawFd,
        owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if sock.is_none() && raw.is_none() {
            return Ok(());
        }
        if let Some(lp) = lp {
            lp.get().forget_parked(py, fd);
            // No longer the fd's transport (asyncio keeps a closed one there until it is
            // collected, which its fd check ignores).
            lp.get().transport_remove(py, fd, owner);
        }
        drop(raw);
        if let Some(sock) = sock {
            sock.bind(py).call_method0(pyo3::intern!(py, "close"))?;
        }
        Ok(())
    }

    fn is_reading_now(&self, py: Python<'_>) -> bool {
        let st = self.st.borrow(py);
        !st.closing && !st.paused
    }
}

#[pymethods]
impl StreamTransport {
    #[new]
    #[pyo3(signature = (loop_, sock, protocol, owner, context=None))]
    fn new(
        loop_: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        owner: &Bound<'_, PyAny>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let lp = loop_
            .cast::<LoopCore>()
            .map_err(|_| PyTypeError::new_err("a ferroloop loop is required"))?;
        let py = loop_.py();
        let (fd, kind, sock, raw) = match sock.cast::<AcceptedSocket>() {
            Ok(accepted) => {
                let Some(raw) = accepted.get().take(py) else {
                    return Err(PyRuntimeError::new_err("the accepted socket is taken"));
                };
                raw.set_nodelay()?;
                let kind = if raw.family == nix::libc::AF_UNIX {
                    TransportKind::Unix
                } else {
                    TransportKind::Tcp
                };
                (raw.fd.as_raw_fd(), kind, None, Some(raw))
            }
            Err(_) => {
                let fd: RawFd = sock.call_method0("fileno")?.extract()?;
                (fd, kind_of(fd), Some(sock.clone().unbind()), None)
            }
        };
        Ok(StreamTransport {
            io: TransportIo::opened(&lp.get().stats, kind),
            fd,
            st: GilCell::new(StreamState {
                loop_: Some(lp.clone().unbind()),
                lazy_kind: raw.as_ref().map(RawSock::kind),
                raw,
                sock,
                owner: Some(owner.clone().unbind()),
                server: None,
                buffered: is_buffered_protocol(protocol)?,
                tls: tls_of(protocol),
                protocol: Some(protocol.clone().unbind()),
                protocol_connected: true,
                wbuf: Vec::new(),
                head: 0,
                deferred: false,
                conn_lost: 0,
                closing: false,
                paused: false,
                eof: false,
                protocol_paused: false,
                high_water: DEFAULT_HIGH_WATER,
                low_water: DEFAULT_HIGH_WATER / 4,
                limits: None,
                empty_waiter: None,
                context: context.filter(|c| !c.is_none()).map(|c| c.clone().unbind()),
            }),
        })
    }

    /// Starts watching the socket for reading (scheduled by the constructor, as asyncio).
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().is_reading_now(slf.py()) {
            Self::add_io(slf, Dir::Read)?;
        }
        Ok(())
    }

    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (lost, buffered, tls) = {
            let st = slf.get().st.borrow(py);
            (
                st.conn_lost > 0,
                st.buffered,
                st.tls.as_ref().map(|t| t.clone_ref(py)),
            )
        };
        if lost {
            return Ok(());
        }
        if let Some(tls) = tls {
            Self::read_tls(slf, tls.bind(py))
        } else if buffered {
            Self::read_get_buffer(slf)
        } else {
            Self::read_data_received(slf)
        }
    }

    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.st.borrow(py).conn_lost > 0 {
            return Ok(());
        }
        let result = {
            let st = this.st.borrow(py);
            socket::send(this.fd, &st.wbuf[st.head..], MsgFlags::MSG_NOSIGNAL)
        };
        match result {
            Ok(n) => {
                this.io.wrote(n);
                this.st.borrow_mut(py).consume(n);
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return Ok(()),
            Err(e) => {
                this.remove_io(py, Dir::Write)?;
                {
                    let mut st = this.st.borrow_mut(py);
                    st.wbuf.clear();
                    st.head = 0;
                }
                let err = os_error(e);
                let exc = err.clone_ref(py).into_value(py);
                Self::fatal_error(slf, err, "Fatal write error on socket transport")?;
                let waiter = this
                    .st
                    .borrow(py)
                    .empty_waiter
                    .as_ref()
                    .map(|w| w.clone_ref(py));
                if let Some(w) = waiter {
                    w.bind(py).call_method1("set_exception", (exc,))?;
                }
                return Ok(());
            }
        }
        // May write more, through the protocol's resume_writing().
        Self::maybe_resume_protocol(slf)?;
        let (empty, closing, eof, waiter) = {
            let st = this.st.borrow(py);
            (
                st.pending() == 0,
                st.closing,
                st.eof,
                st.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
            )
        };
        if empty {
            this.remove_io(py, Dir::Write)?;
            if let Some(w) = waiter {
                w.bind(py).call_method1("set_result", (py.None(),))?;
            }
            if closing {
                Self::_call_connection_lost(slf, py.None().into_bound(py))?;
            } else if eof {
                socket::shutdown(this.fd, Shutdown::Write).map_err(os_error)?;
            }
        }
        Ok(())
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(data) = bytes_like(data)? else {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {:?}",
                data.get_type().name()?.to_string()
            )));
        };
        Self::send_or_buffer(slf, std::slice::from_ref(&data))
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if pyapi::version(py) >= (3, 12, 0) {
            // asyncio 3.12+ (writelines through sendmsg): the state is checked first,
            // then a false argument (an empty list, None) writes nothing.
            {
                let st = slf.get().st.borrow(py);
                if st.eof {
                    return Err(PyRuntimeError::new_err(
                        "Cannot call writelines() after write_eof()",
                    ));
                }
                if st.empty_waiter.is_some() {
                    return Err(PyRuntimeError::new_err(
                        "unable to writelines; sendfile is in progress",
                    ));
                }
            }
            if !list_of_data.is_truthy()? {
                return Ok(());
            }
            // 3.14 (with gh-155888): a lost connection drops the data before looking at
            // it, so a wrong type raises nothing there.
            if pyapi::version(py) >= (3, 14, 0) && Self::dropped_after_loss(slf)? {
                return Ok(());
            }
        }
        let mut chunks = Vec::new();
        for (i, item) in list_of_data.try_iter()?.enumerate() {
            let item = item?;
            match bytes_like(&item)? {
                Some(d) => chunks.push(d),
                None => {
                    return Err(PyTypeError::new_err(format!(
                        "sequence item {i}: expected a bytes-like object, {} found",
                        item.get_type().name()?
                    )))
                }
            }
        }
        Self::send_or_buffer(slf, &chunks)
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        Self::flush_deferred(slf)?;
        let this = slf.get();
        let shut = {
            let mut st = this.st.borrow_mut(py);
            if st.closing || st.eof {
                return Ok(());
            }
            st.eof = true;
            st.pending() == 0
        };
        if shut {
            socket::shutdown(this.fd, Shutdown::Write).map_err(os_error)?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::start_close(slf)
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    fn _force_close(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::force_close(slf, Some(exc))
    }

    #[pyo3(signature = (exc, message="Fatal error on transport"))]
    fn _fatal_error(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        Self::fatal_error(slf, PyErr::from_value(exc.clone()), message)
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (protocol, connected) = {
            let st = this.st.borrow(py);
            (
                st.protocol.as_ref().map(|p| p.clone_ref(py)),
                st.protocol_connected,
            )
        };
        let result = match protocol {
            Some(p) if connected => p
                .bind(py)
                .call_method1("connection_lost", (&exc,))
                .map(drop),
            _ => Ok(()),
        };
        // Released whatever connection_lost did, as asyncio's `finally:`.
        this.io.closed();
        let (sock, raw, owner, waiter, _protocol, _loop) = {
            let mut st = this.st.borrow_mut(py);
            (
                st.sock.take(),
                st.raw.take(),
                st.owner.take(),
                st.empty_waiter.take(),
                (st.protocol.take(), st.tls.take()),
                st.loop_.take(),
            )
        };
        let owner = owner.map(|o| o.into_bound(py));
        Self::close_sock(py, sock, raw, _loop.as_ref(), this.fd, owner.as_ref())?;
        this.detach_server(py, owner.as_ref())?;
        if let Some(w) = waiter {
            let err = py
                .get_type::<pyo3::exceptions::PyConnectionError>()
                .call1(("Connection is closed by peer",))?;
            w.bind(py).call_method1("set_exception", (err,))?;
        }
        result
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).closing
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        self.is_reading_now(py)
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if !slf.get().is_reading_now(py) {
            return Ok(());
        }
        slf.get().st.borrow_mut(py).paused = true;
        slf.get().remove_io(py, Dir::Read)?;
        if slf.get().debug(py) {
            pyapi::asyncio_logger(py)?
                .call_method1("debug", ("%r pauses reading", slf.get().owner(py)))?;
        }
        Ok(())
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut st = slf.get().st.borrow_mut(py);
            if st.closing || !st.paused {
                return Ok(());
            }
            st.paused = false;
        }
        Self::add_io(slf, Dir::Read)?;
        if slf.get().debug(py) {
            pyapi::asyncio_logger(py)?
                .call_method1("debug", ("%r resumes reading", slf.get().owner(py)))?;
        }
        Ok(())
    }

    fn set_protocol(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        // Bytes written for the old protocol go out before anything of the new one's.
        Self::flush_deferred(slf)?;
        let buffered = is_buffered_protocol(protocol)?;
        let tls = tls_of(protocol);
        let old = {
            let mut st = slf.get().st.borrow_mut(py);
            st.buffered = buffered;
            let old_tls = std::mem::replace(&mut st.tls, tls);
            st.protocol_connected = true;
            (st.protocol.replace(protocol.clone().unbind()), old_tls)
        };
        drop(old);
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol(py).map(Bound::unbind)
    }

    fn get_write_buffer_size(slf: &Bound<'_, Self>) -> PyResult<usize> {
        // asyncio's size right after a small write on a writable socket is 0.
        Self::flush_deferred(slf)?;
        Ok(slf.get().st.borrow(slf.py()).pending())
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (Py<PyAny>, Py<PyAny>) {
        self.limits(py)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        Self::flush_deferred(slf)?;
        Self::set_limits(slf, high, low)
    }

    fn _make_empty_waiter(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if slf.get().st.borrow(py).empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        Self::flush_deferred(slf)?;
        let this = slf.get();
        let Some(lp) = this.loop_of(py) else {
            return Err(PyRuntimeError::new_err("transport is closed"));
        };
        let waiter = lp.call_method0("create_future")?.unbind();
        if this.st.borrow(py).pending() == 0 {
            waiter.bind(py).call_method1("set_result", (py.None(),))?;
        }
        this.st.borrow_mut(py).empty_waiter = Some(waiter.clone_ref(py));
        Ok(waiter)
    }

    fn _reset_empty_waiter(&self, py: Python<'_>) {
        let old = self.st.borrow_mut(py).empty_waiter.take();
        drop(old);
    }

    /// The socket, until the connection is lost (with what was written sent first: its
    /// taker, such as `sock_sendfile`, writes to it directly).
    #[getter]
    fn _sock(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        let py = slf.py();
        Self::flush_deferred(slf)?;
        Ok(slf.get().sock_object(py)?.map(Bound::unbind))
    }

    /// Whether the transport still holds its socket (without making its object).
    #[getter]
    fn _has_sock(&self, py: Python<'_>) -> bool {
        let st = self.st.borrow(py);
        st.sock.is_some() || st.raw.is_some()
    }

    /// The socket object for `get_extra_info('socket')`: made now if the connection
    /// started without one; a closed one if it is asked for after the connection was
    /// lost (what asyncio's transport would hold then). None if neither applies.
    fn _socket_extra(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        if let Some(s) = self.sock_object(py)? {
            return Ok(Some(s.unbind()));
        }
        let kind = self.st.borrow(py).lazy_kind;
        match kind {
            Some(k) => Ok(Some(RawSock::closed_socket(py, k)?.unbind())),
            None => Ok(None),
        }
    }

    /// Closes the socket and detaches from the server (a transport collected while
    /// open: its `__del__`).
    fn _release_sock(&self, py: Python<'_>) -> PyResult<()> {
        let (sock, raw, lp, owner) = {
            let mut st = self.st.borrow_mut(py);
            (
                st.sock.take(),
                st.raw.take(),
                st.loop_.as_ref().map(|l| l.clone_ref(py)),
                st.owner.as_ref().map(|o| o.clone_ref(py)),
            )
        };
        let owner = owner.map(|o| o.into_bound(py));
        Self::close_sock(py, sock, raw, lp.as_ref(), self.fd, owner.as_ref())?;
        self.detach_server(py, owner.as_ref())
    }

    /// Starts the `SocketTransport` `owner` (its `__init__`; setup.rs).
    #[staticmethod]
    #[pyo3(signature = (owner, loop_, sock, protocol, waiter=None, server=None, context=None))]
    fn _open(
        owner: &Bound<'_, PyAny>,
        loop_: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        waiter: Option<&Bound<'_, PyAny>>,
        server: Option<&Bound<'_, PyAny>>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        Self::open(owner, loop_, sock, protocol, waiter, server, context)
    }

    /// The server the connection is attached to (None once detached).
    #[getter]
    fn _server(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st.borrow(py).server.as_ref().map(|s| s.clone_ref(py))
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
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
    fn _paused(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).paused
    }

    #[getter]
    fn _eof(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).eof
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).protocol_paused
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        self.st.borrow(py).loop_.as_ref().map(|l| l.clone_ref(py))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(st) = self.st.try_borrow_for_gc(&visit) else {
            return Ok(());
        };
        for obj in [
            &st.sock,
            &st.owner,
            &st.server,
            &st.protocol,
            &st.empty_waiter,
            &st.context,
        ]
        .into_iter()
        .flatten()
        {
            visit.call(obj)?;
        }
        if let Some((low, high)) = &st.limits {
            visit.call(low)?;
            visit.call(high)?;
        }
        if let Some(l) = &st.loop_ {
            visit.call(l)?;
        }
        if let Some(t) = &st.tls {
            visit.call(t)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let taken = {
                let mut st = self.st.borrow_mut(py);
                (
                    (st.owner.take(), st.server.take()),
                    (st.protocol.take(), st.tls.take()),
                    st.empty_waiter.take(),
                    st.loop_.take(),
                    st.context.take(),
                    st.limits.take(),
                )
            };
            drop(taken);
        })
    }
}
