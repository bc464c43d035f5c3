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

use std::os::fd::RawFd;

use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyFloat, PyInt, PyMemoryView, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors;
use crate::gil_cell::GilCell;
use crate::loop_core::fds::Dir;
use crate::loop_core::LoopCore;

mod attempt;
mod connect;
mod hold;

use attempt::Attempt;
pub(crate) use attempt::Op;
pub(crate) use connect::numeric_address;

static SOCKET_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SSL_SOCKET_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

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
    /// Waiting, and counted so by the loop (see `hold`).
    held: bool,
    /// The socket's `_io_refs` was raised by this call (see `hold`).
    io_ref: bool,
}

/// A pending `loop.sock_*()` call: a coroutine to asyncio, an I/O callback to the loop.
#[pyclass(name = "SockCall", module = "ferroloop._core", frozen)]
pub struct SockCall {
    name: &'static str,
    st: GilCell<CallState>,
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
                    held: false,
                    io_ref: false,
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
        Self::hold(slf, lp)
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
        slf.get().release(py)?;
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
    /// have to be removed). `release` must have run: the socket goes here.
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
        if waiting {
            Self::unwatch(slf)?;
        }
        let released = slf.get().release(py);
        slf.get().finish(py);
        released
    }

    fn stop_iteration(v: Bound<'_, PyAny>) -> PyErr {
        if v.is_none() {
            PyStopIteration::new_err(())
        } else {
            PyStopIteration::new_err((v.unbind(),))
        }
    }
}

/// asyncio's `_ensure_fd_no_transport` for the fd of a socket call.
fn ensure_fd_no_transport(lp: &Bound<'_, LoopCore>, fd: RawFd) -> PyResult<()> {
    lp.get()
        .refuse_fd_of_transport(lp.py(), fd, || fd.to_string())
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
                    let released = slf.get().release(py);
                    slf.get().finish(py);
                    released.and(Err(e))
                }
            },
            Some(fut) => {
                if !fut.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
                    return Err(PyRuntimeError::new_err("await wasn't used with future"));
                }
                slf.get().release(py)?;
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
        Self::unwatch(slf)?;
        slf.get().release(slf.py())
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
            if let Err(e) = self.release(py) {
                e.write_unraisable(py, None);
            }
            self.finish(py);
            let lp = self.st.borrow_mut(py).loop_.take();
            drop(lp);
        });
    }
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SockCall>()
}
