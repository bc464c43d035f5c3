//! The low-level socket coroutines: `loop.sock_recv`, `sock_recv_into`, `sock_recvfrom`,
//! `sock_recvfrom_into`, `sock_sendall`, `sock_sendto`, `sock_accept` and the connect step
//! of `sock_connect`, with the semantics of asyncio's selector loop (selector_events.py).
//!
//! Each call returns a `SockCall`: a coroutine as asyncio sees it (`send`, `throw`,
//! `close`, `__await__`, so `await`, `create_task` and `gather` take it) that runs no
//! Python frame of ours. Resumed the first time, it tries the operation at once, as
//! asyncio does; only when the socket would block does it create a future and watch the
//! fd, with itself as the I/O callback and as the future's done callback (which stops
//! the watch if the future was cancelled).
//!
//! On a plain non-blocking `socket.socket` the syscalls are made here, on the socket's fd;
//! with any other socket object (a subclass, a socket with a timeout) its own methods are
//! called, exactly as asyncio calls them.

use std::cell::Cell;
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::libc;
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{
    PyBlockingIOError, PyInterruptedError, PyOSError, PyRuntimeError, PyStopIteration, PyTypeError,
    PyValueError,
};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyFloat, PyInt, PyMemoryView, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::{self, os_error};
use crate::gil_cell::GilCell;
use crate::loop_core::fds::Dir;
use crate::loop_core::LoopCore;

static SOCKET_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SSL_SOCKET_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Reads of at least this size are made straight into a new bytes object; smaller ones
/// go through the thread's reusable buffer and are copied out.
const BIG_READ: usize = 16 * 1024;
/// The largest read made straight into a bytes object: below glibc's default mmap
/// threshold (128 KiB), so the allocation comes from the heap.
const DIRECT_MAX: usize = 120 * 1024;
/// The reusable buffer's size (asyncio's transports read up to 256 KiB at once).
pub(crate) const READ_BUF_SIZE: usize = 256 * 1024;

thread_local! {
    // One read buffer per loop thread, shared by every transport and socket call.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_BUF_SIZE]);
    // Whether the last read on this thread was big: the next one then goes straight
    // into a bytes object sized for the request, saving the copy.
    static LAST_READ_BIG: Cell<bool> = const { Cell::new(false) };
}

unsafe extern "C" {
    // CPython's exported `_PyBytes_Resize` (pyo3-ffi keeps its binding crate-private).
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> i32;
}

/// `recv(fd, at most n)` into a new bytes object: `Ok(None)` when the socket would block
/// (or the call was interrupted), `Err(errno)` on failure.
///
/// Small reads go through the thread's reusable buffer and are copied out. After a big
/// read, the next one asks the kernel how much is queued (FIONREAD) and receives it
/// straight into a bytes object of that size: no copy, and no over-sized allocation to
/// shrink (a 256 KiB malloc per read is served by mmap and page-faulted each time).
pub(crate) fn recv_bytes(
    py: Python<'_>,
    fd: RawFd,
    n: usize,
) -> PyResult<Result<Option<Bound<'_, PyBytes>>, Errno>> {
    let queued = if (n >= BIG_READ && LAST_READ_BIG.get()) || n > READ_BUF_SIZE {
        let mut avail: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int to the pointer we pass.
        let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut avail) };
        usize::try_from(avail).ok().filter(|_| r == 0)
    } else {
        None
    };
    let got = match queued {
        Some(avail) if avail >= BIG_READ && avail.min(n) <= DIRECT_MAX => {
            recv_direct(py, fd, avail.min(n))?
        }
        // More than the shared buffer holds (FIONREAD gives a datagram's whole size, so
        // none is cut short): into a bytes object of that size, as socket.recv would.
        Some(avail) if avail > READ_BUF_SIZE && n > READ_BUF_SIZE => {
            recv_direct(py, fd, avail.min(n))?
        }
        _ => READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let cap = n.min(buf.len());
            // SAFETY: `buf` is a live, writable allocation of at least `cap` bytes.
            let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), cap, 0) };
            match usize::try_from(r) {
                Ok(k) => Ok(Some(PyBytes::new(py, &buf[..k]))),
                Err(_) => Err(Errno::last()),
            }
        }),
    };
    let got = match got {
        Ok(b) => b,
        Err(Errno::EAGAIN | Errno::EINTR) => return Ok(Ok(None)),
        Err(e) => return Ok(Err(e)),
    };
    if let Some(b) = &got {
        LAST_READ_BIG.set(b.as_bytes().len() >= BIG_READ);
    }
    Ok(Ok(got))
}

fn recv_direct(
    py: Python<'_>,
    fd: RawFd,
    n: usize,
) -> PyResult<Result<Option<Bound<'_, PyBytes>>, Errno>> {
    let len =
        ffi::Py_ssize_t::try_from(n).map_err(|_| PyValueError::new_err("buffer size too large"))?;
    // SAFETY: with a NULL source, PyBytes_FromStringAndSize allocates an uninitialised
    // bytes object of `len` bytes (or returns NULL with an exception set); the GIL is held.
    let mut obj = unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), len) };
    if obj.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `obj` is a fresh bytes object of `len` bytes that nothing else references
    // yet; the kernel writes at most `n` bytes into it.
    let r = unsafe { libc::recv(fd, ffi::PyBytes_AsString(obj).cast(), n, 0) };
    let Ok(k) = usize::try_from(r) else {
        let err = Errno::last();
        // SAFETY: we own the only reference.
        unsafe { ffi::Py_DecRef(obj) };
        return Ok(Err(err));
    };
    // SAFETY: `obj` has a reference count of one (ours): _PyBytes_Resize may move it and
    // updates `obj`, or frees it, sets NULL and raises.
    if k < n && unsafe { _PyBytes_Resize(&mut obj, k as ffi::Py_ssize_t) } != 0 {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `obj` is a valid bytes object whose one reference we hand over.
    let bytes = unsafe { Bound::from_owned_ptr(py, obj).cast_into_unchecked::<PyBytes>() };
    Ok(Ok(Some(bytes)))
}

/// recv(2) straight into `buf` if it is a writable C-contiguous buffer (None otherwise).
pub(crate) fn recv_into_buffer(fd: RawFd, buf: &Bound<'_, PyAny>) -> Option<Result<usize, Errno>> {
    let view = PyUntypedBuffer::get(buf).ok()?;
    if view.readonly() || !view.is_c_contiguous() {
        return None;
    }
    // SAFETY: a held, writable, C-contiguous view: `len_bytes()` writable bytes at
    // `buf_ptr()`, pinned while `view` lives.
    let r = unsafe { libc::recv(fd, view.buf_ptr(), view.len_bytes(), 0) };
    Some(usize::try_from(r).map_err(|_| Errno::last()))
}

/// The operation a `SockCall` performs (`LoopCore`'s `sock_*` methods build one).
pub(crate) enum Op {
    Recv(Py<PyAny>),
    RecvInto(Py<PyAny>),
    RecvFrom(Py<PyAny>),
    RecvFromInto(Py<PyAny>, Py<PyAny>),
    /// The data (a memoryview once waiting, which pins a bytearray as asyncio's does)
    /// and how much of it was sent.
    SendAll(Py<PyAny>, usize),
    SendTo(Py<PyAny>, Py<PyAny>),
    /// The address, and whether `connect()` was called (then completion is SO_ERROR).
    Connect(Py<PyAny>, bool),
    Accept,
}

impl Op {
    /// The loop method that made the call (for reprs and asyncio's task names).
    fn name(&self) -> &'static str {
        match self {
            Op::Recv(_) => "sock_recv",
            Op::RecvInto(_) => "sock_recv_into",
            Op::RecvFrom(_) => "sock_recvfrom",
            Op::RecvFromInto(..) => "sock_recvfrom_into",
            Op::SendAll(..) => "sock_sendall",
            Op::SendTo(..) => "sock_sendto",
            Op::Connect(..) => "sock_connect",
            Op::Accept => "sock_accept",
        }
    }

    fn dir(&self) -> Dir {
        match self {
            Op::SendAll(..) | Op::SendTo(..) | Op::Connect(..) => Dir::Write,
            _ => Dir::Read,
        }
    }

    fn objects(&self) -> impl Iterator<Item = &Py<PyAny>> {
        let (a, b) = match self {
            Op::Recv(a) | Op::RecvInto(a) | Op::RecvFrom(a) | Op::SendAll(a, _) => (Some(a), None),
            Op::Connect(a, _) => (Some(a), None),
            Op::RecvFromInto(a, b) | Op::SendTo(a, b) => (Some(a), Some(b)),
            Op::Accept => (None, None),
        };
        a.into_iter().chain(b)
    }
}

enum Stage {
    Start,
    /// Waiting for the fd; the future the awaiting task waits on.
    Waiting(Py<PyAny>),
    Done,
}

struct CallState {
    loop_: Option<Py<LoopCore>>,
    sock: Option<Py<PyAny>>,
    op: Option<Op>,
    stage: Stage,
    /// What the call waits for, fixed at creation (the op is released when it ends).
    dir: Dir,
    fd: RawFd,
    /// Plain non-blocking `socket.socket`: syscalls on the fd, not the socket's methods.
    native: bool,
}

/// A pending `loop.sock_*()` call: a coroutine to asyncio, an I/O callback to the loop.
#[pyclass(name = "SockCall", module = "ferroloop._core", frozen)]
pub struct SockCall {
    name: &'static str,
    st: GilCell<CallState>,
}

enum Attempt<'py> {
    Done(Bound<'py, PyAny>),
    WouldBlock,
}

/// BlockingIOError and InterruptedError mean "try again when the fd is ready".
fn would_block<'py>(py: Python<'py>, r: PyResult<Bound<'py, PyAny>>) -> PyResult<Attempt<'py>> {
    match r {
        Ok(v) => Ok(Attempt::Done(v)),
        Err(e)
            if e.is_instance_of::<PyBlockingIOError>(py)
                || e.is_instance_of::<PyInterruptedError>(py) =>
        {
            Ok(Attempt::WouldBlock)
        }
        Err(e) => Err(e),
    }
}

impl SockCall {
    /// A call of `op` on `sock`; nothing runs until it is awaited.
    pub(crate) fn create(
        lp: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        op: Op,
    ) -> PyResult<Py<SockCall>> {
        Py::new(
            lp.py(),
            SockCall {
                name: op.name(),
                st: GilCell::new(CallState {
                    loop_: Some(lp.clone().unbind()),
                    sock: Some(sock.clone().unbind()),
                    dir: op.dir(),
                    op: Some(op),
                    stage: Stage::Start,
                    fd: -1,
                    native: false,
                }),
            },
        )
    }

    fn parts<'py>(&self, py: Python<'py>) -> Option<(Bound<'py, LoopCore>, Bound<'py, PyAny>)> {
        let st = self.st.borrow(py);
        Some((
            st.loop_.as_ref()?.bind(py).clone(),
            st.sock.as_ref()?.bind(py).clone(),
        ))
    }

    /// Tries the operation once. Releases no borrow across Python calls: the op's
    /// objects are cloned out first.
    fn attempt<'py>(slf: &Bound<'py, Self>, sock: &Bound<'py, PyAny>) -> PyResult<Attempt<'py>> {
        let py = slf.py();
        let (op, fd, native) = {
            let st = slf.get().st.borrow(py);
            let op = match &st.op {
                Some(Op::Recv(n)) => Op::Recv(n.clone_ref(py)),
                Some(Op::RecvInto(b)) => Op::RecvInto(b.clone_ref(py)),
                Some(Op::RecvFrom(n)) => Op::RecvFrom(n.clone_ref(py)),
                Some(Op::RecvFromInto(b, n)) => Op::RecvFromInto(b.clone_ref(py), n.clone_ref(py)),
                Some(Op::SendAll(d, pos)) => Op::SendAll(d.clone_ref(py), *pos),
                Some(Op::SendTo(d, a)) => Op::SendTo(d.clone_ref(py), a.clone_ref(py)),
                Some(Op::Connect(a, started)) => Op::Connect(a.clone_ref(py), *started),
                Some(Op::Accept) => Op::Accept,
                None => return Ok(Attempt::WouldBlock),
            };
            (op, st.fd, st.native)
        };
        match op {
            Op::Recv(n) => {
                let n = n.bind(py);
                match n.extract::<usize>() {
                    Ok(size) if native => match recv_bytes(py, fd, size)? {
                        Ok(Some(b)) => Ok(Attempt::Done(b.into_any())),
                        Ok(None) => Ok(Attempt::WouldBlock),
                        Err(e) => Err(os_error(e)),
                    },
                    _ => would_block(py, sock.call_method1(pyo3::intern!(py, "recv"), (n,))),
                }
            }
            Op::RecvInto(buf) => {
                let buf = buf.bind(py);
                if native {
                    match recv_into_buffer(fd, buf) {
                        Some(Ok(k)) => return Ok(Attempt::Done(PyInt::new(py, k).into_any())),
                        Some(Err(Errno::EAGAIN | Errno::EINTR)) => return Ok(Attempt::WouldBlock),
                        Some(Err(e)) => return Err(os_error(e)),
                        None => {}
                    }
                }
                // Anything else: the socket's own method (and its TypeError, if any).
                would_block(
                    py,
                    sock.call_method1(pyo3::intern!(py, "recv_into"), (buf,)),
                )
            }
            Op::RecvFrom(n) => {
                would_block(py, sock.call_method1(pyo3::intern!(py, "recvfrom"), (n,)))
            }
            Op::RecvFromInto(buf, n) => would_block(
                py,
                sock.call_method1(pyo3::intern!(py, "recvfrom_into"), (buf, n)),
            ),
            Op::SendTo(data, addr) => would_block(
                py,
                sock.call_method1(pyo3::intern!(py, "sendto"), (data, 0, addr)),
            ),
            Op::Accept => match would_block(py, sock.call_method0(pyo3::intern!(py, "accept")))? {
                Attempt::Done(pair) => {
                    let conn = pair.get_item(0)?;
                    conn.call_method1(pyo3::intern!(py, "setblocking"), (false,))?;
                    Ok(Attempt::Done(pair))
                }
                Attempt::WouldBlock => Ok(Attempt::WouldBlock),
            },
            Op::Connect(addr, false) => {
                let r = would_block(
                    py,
                    sock.call_method1(pyo3::intern!(py, "connect"), (&addr,)),
                );
                if let Some(Op::Connect(_, started)) = &mut slf.get().st.borrow_mut(py).op {
                    *started = true;
                }
                match r? {
                    Attempt::Done(_) => Ok(Attempt::Done(py.None().into_bound(py))),
                    Attempt::WouldBlock => Ok(Attempt::WouldBlock),
                }
            }
            Op::Connect(addr, true) => {
                let err = sock.call_method1(
                    pyo3::intern!(py, "getsockopt"),
                    (libc::SOL_SOCKET, libc::SO_ERROR),
                );
                match would_block(py, err)? {
                    Attempt::WouldBlock => Ok(Attempt::WouldBlock),
                    Attempt::Done(err) => {
                        let err: i32 = err.extract()?;
                        if err != 0 {
                            let msg = format!("Connect call failed {}", addr.bind(py).str()?);
                            return Err(PyOSError::new_err((err, msg)));
                        }
                        Ok(Attempt::Done(py.None().into_bound(py)))
                    }
                }
            }
            Op::SendAll(data, pos) => Self::send_some(slf, sock, data.bind(py), pos, fd, native),
        }
    }

    /// One `send` of what is left of a `sock_sendall`; done when nothing is left.
    fn send_some<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        data: &Bound<'py, PyAny>,
        pos: usize,
        fd: RawFd,
        native: bool,
    ) -> PyResult<Attempt<'py>> {
        let py = slf.py();
        let (sent, total) = if let (true, Ok(bytes)) = (native, data.cast::<PyBytes>()) {
            let b = bytes.as_bytes();
            (send_native(fd, &b[pos.min(b.len())..])?, b.len())
        } else {
            let view = PyUntypedBuffer::get(data)?;
            let total = view.len_bytes();
            if native && view.is_c_contiguous() {
                let all = crate::pyapi::buffer_bytes(&view);
                (send_native(fd, &all[pos.min(total)..])?, total)
            } else {
                // The socket's own send, on a byte-wise memoryview slice.
                let bytes_view =
                    PyMemoryView::from(data)?.call_method1(pyo3::intern!(py, "cast"), ("B",))?;
                let rest = bytes_view.get_item(pyo3::types::PySlice::new(
                    py,
                    pos as isize,
                    isize::MAX,
                    1,
                ))?;
                let sent =
                    match would_block(py, sock.call_method1(pyo3::intern!(py, "send"), (rest,)))? {
                        Attempt::Done(n) => n.extract::<usize>()?,
                        Attempt::WouldBlock => 0,
                    };
                (sent, total)
            }
        };
        let pos = pos + sent;
        if pos >= total {
            return Ok(Attempt::Done(py.None().into_bound(py)));
        }
        if let Some(Op::SendAll(_, p)) = &mut slf.get().st.borrow_mut(py).op {
            *p = pos;
        }
        Ok(Attempt::WouldBlock)
    }

    /// Starts the call (the first `send()`): asyncio's checks, one try, then the wait.
    fn start<'py>(slf: &Bound<'py, Self>) -> PyResult<Attempt<'py>> {
        let py = slf.py();
        let Some((lp, sock)) = slf.get().parts(py) else {
            return Err(PyRuntimeError::new_err(
                "cannot reuse already awaited coroutine",
            ));
        };
        let plain = sock.get_type().is(&crate::pyapi::cached_attr(
            py,
            &SOCKET_TYPE,
            "socket",
            "socket",
        )?);
        if !plain {
            if let Ok(ssl_socket) =
                crate::pyapi::cached_attr(py, &SSL_SOCKET_TYPE, "ssl", "SSLSocket")
            {
                if sock.is_instance(&ssl_socket)? {
                    return Err(PyTypeError::new_err("Socket cannot be of type SSLSocket"));
                }
            }
        }
        let timeout = sock.call_method0(pyo3::intern!(py, "gettimeout"))?;
        let nonblocking = timeout.cast::<PyFloat>().is_ok_and(|t| t.value() == 0.0)
            || (!timeout.is_none() && timeout.eq(0)?);
        if lp.get().debug(py) && !nonblocking {
            return Err(PyValueError::new_err("the socket must be non-blocking"));
        }
        let fd = sock
            .call_method0(pyo3::intern!(py, "fileno"))?
            .extract::<RawFd>()?;
        let recvfrom_into = {
            let mut st = slf.get().st.borrow_mut(py);
            st.fd = fd;
            st.native = plain && nonblocking;
            match &st.op {
                Some(Op::RecvFromInto(buf, n)) => Some((buf.clone_ref(py), n.clone_ref(py))),
                _ => None,
            }
        };
        if let Some((buf, nbytes)) = recvfrom_into {
            // asyncio: `if not nbytes: nbytes = len(buf)`.
            if !nbytes.bind(py).is_truthy()? {
                let len = PyInt::new(py, buf.bind(py).len()?).into_any().unbind();
                if let Some(Op::RecvFromInto(_, n)) = &mut slf.get().st.borrow_mut(py).op {
                    *n = len;
                }
            }
        }
        match Self::attempt(slf, &sock)? {
            Attempt::Done(v) => Ok(Attempt::Done(v)),
            Attempt::WouldBlock => {
                Self::wait(slf, &lp, fd)?;
                Ok(Attempt::WouldBlock)
            }
        }
    }

    /// Would block: a future to wait on, and the fd watched with this call as callback.
    fn wait(slf: &Bound<'_, Self>, lp: &Bound<'_, LoopCore>, fd: RawFd) -> PyResult<()> {
        let py = slf.py();
        let fut = LoopCore::create_future(lp)?;
        ensure_fd_no_transport(lp, fd)?;
        let dir = {
            let mut st = slf.get().st.borrow_mut(py);
            let dir = st.dir;
            if let Some(Op::SendAll(data, _)) = &mut st.op {
                // Pin the caller's buffer while we wait, as asyncio's memoryview does.
                if !data.bind(py).is_instance_of::<PyBytes>() {
                    let d = data.clone_ref(py);
                    drop(st);
                    let view = PyMemoryView::from(d.bind(py))?.into_any().unbind();
                    if let Some(Op::SendAll(data, _)) = &mut slf.get().st.borrow_mut(py).op {
                        *data = view;
                    }
                }
            }
            dir
        };
        LoopCore::add_io_fd(lp, fd, slf.as_any(), &PyTuple::empty(py), dir)?;
        // A bound method, not the call itself: in debug mode the future's call_soon
        // refuses coroutines as callbacks.
        let done = slf.getattr(pyo3::intern!(py, "_done"))?;
        fut.call_method1(pyo3::intern!(py, "add_done_callback"), (done,))?;
        fut.setattr(pyo3::intern!(py, "_asyncio_future_blocking"), true)?;
        slf.get().st.borrow_mut(py).stage = Stage::Waiting(fut.unbind());
        Ok(())
    }

    /// The fd is ready: try again; on an outcome, stop watching and complete the future.
    fn on_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let fut = match &slf.get().st.borrow(py).stage {
            Stage::Waiting(f) => Some(f.clone_ref(py).into_bound(py)),
            // Closed or thrown into while waiting: nobody wants the outcome any more.
            _ => None,
        };
        let Some(fut) = fut else {
            return Self::unwatch(slf);
        };
        if fut.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        let Some((_, sock)) = slf.get().parts(py) else {
            return Ok(());
        };
        let outcome = match Self::attempt(slf, &sock) {
            Ok(Attempt::WouldBlock) => return Self::rearm(slf),
            Ok(Attempt::Done(v)) => Ok(v),
            Err(e) if errors::propagates(py, &e) => {
                Self::rearm(slf)?;
                return Err(e);
            }
            Err(e) => Err(e),
        };
        match (&outcome, Self::parks(slf)) {
            // More reads are likely on this socket: keep its registration, disabled.
            (Ok(_), Some((lp, fd))) => LoopCore::park_reader(lp.bind(py), fd, slf.as_any())?,
            _ => Self::unwatch(slf)?,
        }
        match outcome {
            Ok(v) => fut.call_method1(pyo3::intern!(py, "set_result"), (v,))?,
            Err(e) => fut.call_method1(pyo3::intern!(py, "set_exception"), (e.into_value(py),))?,
        };
        Ok(())
    }

    /// The loop and fd, if this call's registration may be parked: a reading call.
    fn parks(slf: &Bound<'_, Self>) -> Option<(Py<LoopCore>, RawFd)> {
        let py = slf.py();
        let st = slf.get().st.borrow(py);
        if st.dir != Dir::Read {
            return None;
        }
        st.loop_.as_ref().map(|l| (l.clone_ref(py), st.fd))
    }

    /// Woke with nothing to do: wait again (a one-shot registration needs re-arming).
    fn rearm(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let Some((lp, fd)) = Self::parks(slf) else {
            return Ok(());
        };
        LoopCore::rearm_reader(lp.bind(py), fd, slf.as_any())
    }

    fn unwatch(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (lp, fd, dir) = {
            let st = slf.get().st.borrow(py);
            let Some(lp) = st.loop_.as_ref() else {
                return Ok(());
            };
            (lp.clone_ref(py), st.fd, st.dir)
        };
        LoopCore::remove_io_owned_by(lp.bind(py), fd, dir, slf.as_any())
    }

    /// Ends the call, releasing what it holds but the loop and fd (a watch may still
    /// have to be removed).
    fn finish(&self, py: Python<'_>) {
        let released = {
            let mut st = self.st.borrow_mut(py);
            (
                std::mem::replace(&mut st.stage, Stage::Done),
                st.op.take(),
                st.sock.take(),
            )
        };
        drop(released);
    }

    /// Ends the call from outside (`throw`, `close`): a pending wait stops watching.
    fn abandon(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let waiting = matches!(slf.get().st.borrow(py).stage, Stage::Waiting(_));
        slf.get().finish(py);
        if waiting {
            Self::unwatch(slf)?;
        }
        Ok(())
    }

    fn stop_iteration(v: Bound<'_, PyAny>) -> PyErr {
        if v.is_none() {
            PyStopIteration::new_err(())
        } else {
            PyStopIteration::new_err((v.unbind(),))
        }
    }
}

fn send_native(fd: RawFd, data: &[u8]) -> PyResult<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    // SAFETY: `data` is a readable slice; MSG_NOSIGNAL turns SIGPIPE into EPIPE.
    let r = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    match usize::try_from(r) {
        Ok(n) => Ok(n),
        Err(_) => match Errno::last() {
            Errno::EAGAIN | Errno::EINTR => Ok(0),
            e => Err(os_error(e)),
        },
    }
}

/// asyncio's `_ensure_fd_no_transport`, with a C-level lookup first: only an fd that a
/// transport is registered for needs asyncio's own check.
fn ensure_fd_no_transport(lp: &Bound<'_, LoopCore>, fd: RawFd) -> PyResult<()> {
    let py = lp.py();
    let known = lp
        .getattr(pyo3::intern!(py, "_transports"))
        .and_then(|t| t.getattr(pyo3::intern!(py, "data")))
        .and_then(|d| d.contains(fd))
        .unwrap_or(true);
    if known {
        lp.call_method1(pyo3::intern!(py, "_ensure_fd_no_transport"), (fd,))?;
    }
    Ok(())
}

#[pymethods]
impl SockCall {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// For `yield from` in generator-based coroutines, as native coroutines allow there.
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::send(slf, &slf.py().None().into_bound(slf.py()))
    }

    /// Resumes the call; `value` is ignored, as a future's iterator ignores it.
    fn send<'py>(slf: &Bound<'py, Self>, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let _ = value;
        let py = slf.py();
        let waiting = match &slf.get().st.borrow(py).stage {
            Stage::Start => None,
            Stage::Waiting(f) => Some(f.clone_ref(py).into_bound(py)),
            Stage::Done => {
                return Err(PyRuntimeError::new_err(
                    "cannot reuse already awaited coroutine",
                ))
            }
        };
        match waiting {
            None => match Self::start(slf) {
                Ok(Attempt::Done(v)) => {
                    slf.get().finish(py);
                    Err(Self::stop_iteration(v))
                }
                Ok(Attempt::WouldBlock) => match &slf.get().st.borrow(py).stage {
                    Stage::Waiting(f) => Ok(f.clone_ref(py).into_bound(py)),
                    _ => Err(PyRuntimeError::new_err("socket call lost its future")),
                },
                Err(e) => {
                    slf.get().finish(py);
                    Err(e)
                }
            },
            Some(fut) => {
                if !fut.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
                    return Err(PyRuntimeError::new_err("await wasn't used with future"));
                }
                slf.get().finish(py);
                Err(Self::stop_iteration(
                    fut.call_method0(pyo3::intern!(py, "result"))?,
                ))
            }
        }
    }

    /// Raises `typ` (or `typ(val)`) in the call: it ends, as a coroutine awaiting a
    /// future ends when an exception is thrown into it.
    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        slf: &Bound<'_, Self>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        Self::abandon(slf)?;
        let exc = if typ.is_instance_of::<pyo3::exceptions::PyBaseException>() {
            typ.clone()
        } else {
            match val.filter(|v| !v.is_none()) {
                Some(v) if v.is_instance(typ)? => v.clone(),
                Some(v) if v.is_instance_of::<PyTuple>() => typ.call1(v.cast::<PyTuple>()?)?,
                Some(v) => typ.call1((v,))?,
                None => typ.call0()?,
            }
        };
        if let Some(tb) = tb.filter(|t| !t.is_none()) {
            exc.setattr("__traceback__", tb)?;
        }
        Err(PyErr::from_value(exc))
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::abandon(slf)
    }

    /// The I/O callback: the fd is ready.
    fn __call__(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::on_ready(slf)
    }

    /// The future's done callback: done or cancelled, stop watching (unless someone
    /// else watches the fd by now).
    fn _done(slf: &Bound<'_, Self>, _fut: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::unwatch(slf)
    }

    #[getter]
    fn __name__(&self) -> &'static str {
        self.name
    }

    #[getter]
    fn __qualname__(&self) -> String {
        format!("Loop.{}", self.name)
    }

    #[getter]
    fn cr_await(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        match &self.st.borrow(py).stage {
            Stage::Waiting(f) => Some(f.clone_ref(py)),
            _ => None,
        }
    }

    #[getter]
    fn cr_running(&self) -> bool {
        false
    }

    #[getter]
    fn cr_frame(&self) -> Option<Py<PyAny>> {
        None
    }

    #[getter]
    fn cr_code(&self) -> Option<Py<PyAny>> {
        None
    }

    fn __repr__(&self) -> String {
        format!("<ferroloop socket call Loop.{}>", self.name)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(st) = self.st.try_borrow_for_gc(&visit) else {
            return Ok(());
        };
        if let Some(l) = &st.loop_ {
            visit.call(l)?;
        }
        if let Some(s) = &st.sock {
            visit.call(s)?;
        }
        if let Stage::Waiting(f) = &st.stage {
            visit.call(f)?;
        }
        for obj in st.op.iter().flat_map(Op::objects) {
            visit.call(obj)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            self.finish(py);
            let lp = self.st.borrow_mut(py).loop_.take();
            drop(lp);
        });
    }
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SockCall>()
}
