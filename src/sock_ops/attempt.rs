//! The operations of the socket calls, one try each: the syscall on the fd for a plain
//! non-blocking socket, the socket's own method otherwise, as asyncio calls it.

use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::libc;
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBlockingIOError, PyBufferError, PyInterruptedError, PyOSError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyMemoryView, PyTuple};

use super::connect::{connect, connect_result, SockAddr};
use super::SockCall;
use crate::errors::os_error;
use crate::loop_core::fds::Dir;
use crate::syscalls::accept::{accept_socket, converted_family, socket_kind};
use crate::syscalls::{recv_bytes, recv_into_buffer, send_native};

/// Reads asked for more than this go through `socket.recv`, which allocates the whole
/// size as asyncio's call does (so `sock_recv(s, 2**62)` raises MemoryError there too);
/// smaller ones are sized by what is queued.
const NATIVE_RECV_MAX: usize = 1 << 30;

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
    /// The address, whether `connect()` was called (then completion is SO_ERROR), and
    /// the sockaddr when the fast path made one (`connect.rs`).
    Connect(Py<PyAny>, bool, Option<SockAddr>),
    Accept,
}

impl Op {
    /// The loop method that made the call (for reprs and asyncio's task names).
    pub(super) fn name(&self) -> &'static str {
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

    pub(super) fn dir(&self) -> Dir {
        match self {
            Op::SendAll(..) | Op::SendTo(..) | Op::Connect(..) => Dir::Write,
            _ => Dir::Read,
        }
    }

    pub(super) fn objects(&self) -> impl Iterator<Item = &Py<PyAny>> {
        let (a, b) = match self {
            Op::Recv(a) | Op::RecvInto(a) | Op::RecvFrom(a) | Op::SendAll(a, _) => (Some(a), None),
            Op::Connect(a, ..) => (Some(a), None),
            Op::RecvFromInto(a, b) | Op::SendTo(a, b) => (Some(a), Some(b)),
            Op::Accept => (None, None),
        };
        a.into_iter().chain(b)
    }
}

pub(super) enum Attempt<'py> {
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
    /// Tries the operation once. Releases no borrow across Python calls: the op's
    /// objects are cloned out first.
    pub(super) fn attempt<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
    ) -> PyResult<Attempt<'py>> {
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
                Some(Op::Connect(a, started, sa)) => Op::Connect(a.clone_ref(py), *started, *sa),
                Some(Op::Accept) => Op::Accept,
                None => return Ok(Attempt::WouldBlock),
            };
            (op, st.fd, st.native)
        };
        match op {
            Op::Recv(n) => {
                let n = n.bind(py);
                match n.extract::<usize>() {
                    // socket.recv(0) returns b'' without a system call, data or not.
                    Ok(0) => Ok(Attempt::Done(PyBytes::new(py, b"").into_any())),
                    Ok(size) if native && size <= NATIVE_RECV_MAX => {
                        match recv_bytes(py, fd, size)? {
                            Ok(Some(b)) => Ok(Attempt::Done(b.into_any())),
                            Ok(None) => Ok(Attempt::WouldBlock),
                            Err(e) => Err(os_error(e)),
                        }
                    }
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
            Op::Accept if native => {
                let kind = socket_kind(sock)?;
                if !converted_family(kind.0) {
                    return Self::accept_python(sock);
                }
                match accept_socket(py, fd, kind)? {
                    Ok(Some((conn, addr))) => {
                        Ok(Attempt::Done(PyTuple::new(py, [conn, addr])?.into_any()))
                    }
                    Ok(None) => Ok(Attempt::WouldBlock),
                    Err(e) => Err(os_error(e)),
                }
            }
            Op::Accept => Self::accept_python(sock),
            Op::Connect(_, false, Some(sa)) if native => {
                let r = connect(fd, &sa);
                Self::connect_started(slf);
                match r {
                    Ok(true) => Ok(Attempt::Done(py.None().into_bound(py))),
                    Ok(false) => Ok(Attempt::WouldBlock),
                    Err(e) => Err(os_error(e)),
                }
            }
            Op::Connect(addr, false, _) => {
                let r = would_block(
                    py,
                    sock.call_method1(pyo3::intern!(py, "connect"), (&addr,)),
                );
                Self::connect_started(slf);
                match r? {
                    Attempt::Done(_) => Ok(Attempt::Done(py.None().into_bound(py))),
                    Attempt::WouldBlock => Ok(Attempt::WouldBlock),
                }
            }
            Op::Connect(addr, true, sa) => {
                let err = if sa.is_some() && native {
                    connect_result(fd).map_err(os_error)?
                } else {
                    let err = sock.call_method1(
                        pyo3::intern!(py, "getsockopt"),
                        (libc::SOL_SOCKET, libc::SO_ERROR),
                    );
                    match would_block(py, err)? {
                        Attempt::WouldBlock => return Ok(Attempt::WouldBlock),
                        Attempt::Done(err) => err.extract()?,
                    }
                };
                if err != 0 {
                    let msg = format!("Connect call failed {}", addr.bind(py).str()?);
                    return Err(PyOSError::new_err((err, msg)));
                }
                Ok(Attempt::Done(py.None().into_bound(py)))
            }
            Op::SendAll(data, pos) => Self::send_some(slf, sock, data.bind(py), pos, fd, native),
        }
    }

    /// asyncio's own calls: `sock.accept()`, then `conn.setblocking(False)`.
    fn accept_python<'py>(sock: &Bound<'py, PyAny>) -> PyResult<Attempt<'py>> {
        let py = sock.py();
        match would_block(py, sock.call_method0(pyo3::intern!(py, "accept")))? {
            Attempt::Done(pair) => {
                let conn = pair.get_item(0)?;
                conn.call_method1(pyo3::intern!(py, "setblocking"), (false,))?;
                Ok(Attempt::Done(pair))
            }
            Attempt::WouldBlock => Ok(Attempt::WouldBlock),
        }
    }

    /// After the first connect(): completion is told by SO_ERROR.
    fn connect_started(slf: &Bound<'_, Self>) {
        if let Some(Op::Connect(_, started, _)) = &mut slf.get().st.borrow_mut(slf.py()).op {
            *started = true;
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
            if !view.is_c_contiguous() {
                // socket.send() takes C-contiguous buffers only; asyncio's first send raises.
                return Err(PyBufferError::new_err(
                    "memoryview: underlying buffer is not C-contiguous",
                ));
            }
            if native {
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
}
