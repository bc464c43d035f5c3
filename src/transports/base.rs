//! What the datagram and pipe transports ask of their loop: watching their fd, queueing a
//! callback, reporting to the exception handler and logging, as asyncio's transports do
//! through `loop._add_reader`, `loop.call_soon` and `loop.call_exception_handler`.

use std::os::fd::RawFd;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyInt, PyTuple};

use crate::loop_core::fds::Dir;
use crate::loop_core::LoopCore;
use crate::pyapi;

/// `loop._add_reader(fd, callback)` / `_add_writer`: `callback()` runs in `context` (a copy
/// of the current one when None).
pub(crate) fn watch(
    lp: &Bound<'_, LoopCore>,
    fd: RawFd,
    callback: &Bound<'_, PyAny>,
    dir: Dir,
    context: Option<&Py<PyAny>>,
) -> PyResult<()> {
    let py = lp.py();
    LoopCore::add_io(
        lp,
        PyInt::new(py, fd).as_any(),
        callback,
        &PyTuple::empty(py),
        dir,
        context.map(|c| c.bind(py)),
    )?;
    Ok(())
}

/// `loop._remove_reader(fd)` / `_remove_writer`; nothing on a closed loop.
pub(crate) fn unwatch(lp: &Bound<'_, LoopCore>, fd: RawFd, dir: Dir) -> PyResult<()> {
    LoopCore::remove_io(lp, PyInt::new(lp.py(), fd).as_any(), dir)?;
    Ok(())
}

/// `loop.call_soon(callback, *args)` in `context` (a copy of the current one when None).
pub(crate) fn call_soon<'py>(
    lp: &Bound<'py, LoopCore>,
    callback: &Bound<'py, PyAny>,
    args: &[&Bound<'py, PyAny>],
    context: Option<&Py<PyAny>>,
) -> PyResult<()> {
    let py = lp.py();
    let args = PyTuple::new(py, args)?;
    LoopCore::call_soon(lp, callback, &args, context.map(|c| c.bind(py)))?;
    Ok(())
}

static SET_RESULT_UNLESS_CANCELLED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `loop.call_soon(futures._set_result_unless_cancelled, waiter, None)`: how asyncio's
/// transports wake the waiter of their creation, after the `connection_made` queued
/// before it (`context`: a copy of the current one when None).
pub(crate) fn wake_waiter_soon(
    lp: &Bound<'_, LoopCore>,
    waiter: &Bound<'_, PyAny>,
    context: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let py = lp.py();
    let set = pyapi::cached_attr(
        py,
        &SET_RESULT_UNLESS_CANCELLED,
        "asyncio.futures",
        "_set_result_unless_cancelled",
    )?;
    let args = PyTuple::new(py, [waiter.clone(), py.None().into_bound(py)])?;
    LoopCore::call_soon(lp, &set, &args, context)?;
    Ok(())
}

/// The loop's exception handler, with the context keys asyncio's transports give it.
pub(crate) fn report(
    lp: &Bound<'_, LoopCore>,
    message: &str,
    exc: &Bound<'_, PyAny>,
    transport: Option<&Py<PyAny>>,
    protocol: Option<&Py<PyAny>>,
) -> PyResult<()> {
    let py = lp.py();
    let ctx = PyDict::new(py);
    ctx.set_item("message", message)?;
    ctx.set_item("exception", exc)?;
    ctx.set_item("transport", transport)?;
    ctx.set_item("protocol", protocol)?;
    lp.call_method1("call_exception_handler", (ctx,))?;
    Ok(())
}

/// `logger.<level>(*args)` on asyncio's logger (only cold paths log).
pub(crate) fn log<'py>(
    py: Python<'py>,
    level: &str,
    args: impl pyo3::call::PyCallArgs<'py>,
) -> PyResult<()> {
    pyapi::asyncio_logger(py)?.call_method1(level, args)?;
    Ok(())
}

/// asyncio's `logger.debug("%r: %s", transport, message, exc_info=True)` for an expected
/// OSError that closes a transport in debug mode.
pub(crate) fn log_debug_exc(
    py: Python<'_>,
    transport: Option<&Py<PyAny>>,
    message: &str,
    exc: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let kw = PyDict::new(py);
    kw.set_item("exc_info", exc)?;
    pyapi::asyncio_logger(py)?.call_method("debug", ("%r: %s", transport, message), Some(&kw))?;
    Ok(())
}

/// A transport's references: its loop, its file (the socket or the pipe), the Python
/// transport object protocols see (`owner`), the protocol and the context its callbacks
/// run in (3.15: captured when the connection was made; None: a copy of the current one
/// per callback). All but the context go when the connection is lost.
pub(crate) struct Links {
    pub(crate) loop_: Option<Py<LoopCore>>,
    pub(crate) file: Option<Py<PyAny>>,
    pub(crate) owner: Option<Py<PyAny>>,
    pub(crate) protocol: Option<Py<PyAny>>,
    pub(crate) context: Option<Py<PyAny>>,
}

/// What `Links::release` hands back, dropped by the caller once no borrow is held.
pub(crate) type Released = (
    Option<Py<PyAny>>,
    Option<Py<PyAny>>,
    Option<Py<PyAny>>,
    Option<Py<LoopCore>>,
);

impl Links {
    pub(crate) fn new(
        lp: &Bound<'_, LoopCore>,
        file: &Bound<'_, PyAny>,
        owner: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> Self {
        Links {
            loop_: Some(lp.clone().unbind()),
            file: Some(file.clone().unbind()),
            owner: Some(owner.clone().unbind()),
            protocol: Some(protocol.clone().unbind()),
            context: context.filter(|c| !c.is_none()).map(|c| c.clone().unbind()),
        }
    }

    pub(crate) fn loop_of<'py>(&self, py: Python<'py>) -> Option<Bound<'py, LoopCore>> {
        self.loop_.as_ref().map(|l| l.bind(py).clone())
    }

    /// The file, the owner, the protocol and the loop, taken (connection_lost has run).
    pub(crate) fn release(&mut self) -> Released {
        (
            self.file.take(),
            self.owner.take(),
            self.protocol.take(),
            self.loop_.take(),
        )
    }

    pub(crate) fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for obj in [&self.file, &self.owner, &self.protocol, &self.context]
            .into_iter()
            .flatten()
        {
            visit.call(obj)?;
        }
        if let Some(l) = &self.loop_ {
            visit.call(l)?;
        }
        Ok(())
    }

    /// For the collector's `__clear__`: everything but the file, which the transport's
    /// finalizer still closes.
    pub(crate) fn clear(&mut self) -> (Released, Option<Py<PyAny>>) {
        (
            (
                None,
                self.owner.take(),
                self.protocol.take(),
                self.loop_.take(),
            ),
            self.context.take(),
        )
    }
}

/// The clones a callback needs of a transport's links, taken under one borrow.
pub(crate) fn clone_opt(py: Python<'_>, obj: &Option<Py<PyAny>>) -> Option<Py<PyAny>> {
    obj.as_ref().map(|o| o.clone_ref(py))
}
