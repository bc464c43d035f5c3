//! The TLS state machine's core, step for step asyncio's `SSLProtocol` (3.11+): the
//! protocol of the transport underneath (what comes up from it: connection, bytes, EOF,
//! loss), the states and their transitions, and fatal errors. The flows live beside it:
//! handshake.rs, read.rs, write.rs, shutdown.rs.

use pyo3::exceptions::{PyException, PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PySlice, PyTuple};

use super::bio::{InputBuf, MAX_SIZE};
use super::handshake::{do_handshake, on_handshake_complete, start_handshake};
use super::read::do_read;
use super::shutdown::{do_flush, do_shutdown};
use super::write::{batch, do_write, flush_deferred};
use super::{AppState, Phase, SslProtocol};
use crate::pyapi;
use crate::transports::stream::StreamTransport;

static CANCELLED_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(super) type Tls<'py> = Bound<'py, SslProtocol>;

/// `except Exception:` (KeyboardInterrupt, SystemExit, CancelledError go on up).
pub(super) fn is_exception(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyException>(py)
}

/// Bytes for the incoming BIO, through the record tracker.
pub(super) fn feed(this: &SslProtocol, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let Some(ssl) = this.ssl(py) else {
        return Ok(());
    };
    let view = pyo3::buffer::PyUntypedBuffer::get(data)?;
    let contiguous;
    let bytes: &[u8] = if view.is_c_contiguous() {
        pyapi::buffer_bytes(&view)
    } else {
        contiguous = data.call_method0("tobytes")?.cast_into::<PyBytes>()?;
        contiguous.as_bytes()
    };
    ssl.incoming_write(py, data)?;
    this.st.borrow_mut(py).records.feed(bytes);
    Ok(())
}

// -- the transport underneath ----------------------------------------------------------

pub(super) fn connection_made(slf: &Tls<'_>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    let native = transport
        .getattr(pyo3::intern!(py, "_core"))
        .ok()
        .and_then(|c| c.cast_into::<StreamTransport>().ok())
        .map(Bound::unbind);
    let old = {
        let mut st = slf.get().st.borrow_mut(py);
        st.native = native;
        st.transport.replace(transport.clone().unbind())
    };
    drop(old);
    start_handshake(slf)
}

pub(super) fn connection_lost(slf: &Tls<'_>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    // First, so that no error below leaves it counted open.
    this.io.closed();
    let (backlog, ssl) = {
        let mut st = this.st.borrow_mut(py);
        st.backlog_size = 0;
        st.deferred = false;
        st.conn_lost += 1;
        (
            std::mem::take(&mut st.backlog),
            st.ssl.as_ref().map(|s| s.clone_ref(py)),
        )
    };
    drop(backlog);
    if let Some(ssl) = ssl {
        ssl.outgoing_read(py)?;
    }
    let (notify, app_protocol) = {
        let mut st = this.st.borrow_mut(py);
        if st.app_transport.is_some() {
            st.app_closed = true;
        }
        let notify = st.phase != Phase::DoHandshake
            && matches!(st.app_state, AppState::ConMade | AppState::Eof);
        if notify {
            st.app_state = AppState::ConLost;
        }
        (notify, st.app_protocol.as_ref().map(|p| p.clone_ref(py)))
    };
    if notify {
        if let Some(p) = &app_protocol {
            let cb = p.bind(py).getattr(pyo3::intern!(py, "connection_lost"))?;
            this.call_soon(py, &cb, &PyTuple::new(py, [exc])?)?;
        }
    }
    set_state(this, py, Phase::Unwrapped)?;
    let released = {
        let mut st = this.st.borrow_mut(py);
        (
            st.transport.take(),
            st.native.take(),
            st.app_transport.take(),
            st.app_protocol.take(),
        )
    };
    drop(released);
    drop(app_protocol);
    wakeup_waiter(this, py, Some(exc).filter(|e| !e.is_none()))?;
    cancel_timers(this, py)
}

pub(super) fn cancel_timers(this: &SslProtocol, py: Python<'_>) -> PyResult<()> {
    let (a, b) = {
        let mut st = this.st.borrow_mut(py);
        (
            st.shutdown_timeout_handle.take(),
            st.handshake_timeout_handle.take(),
        )
    };
    for h in [a, b].into_iter().flatten() {
        h.bind(py).call_method0("cancel")?;
    }
    Ok(())
}

/// For a transport that is not ferroloop's own: asyncio's `get_buffer()`.
pub(super) fn get_buffer(this: &SslProtocol, py: Python<'_>, _n: isize) -> PyResult<Py<PyAny>> {
    let buf = {
        let st = this.st.borrow(py);
        st.read_buffer.as_ref().map(|b| b.clone_ref(py))
    };
    let buf = match buf {
        Some(b) => b,
        None => {
            let b = PyByteArray::new_with(py, MAX_SIZE, |_| Ok(()))?.unbind();
            this.st.borrow_mut(py).read_buffer = Some(b.clone_ref(py));
            b
        }
    };
    Ok(PyMemoryView::from(buf.bind(py).as_any())?
        .into_any()
        .unbind())
}

pub(super) fn buffer_updated(slf: &Tls<'_>, nbytes: usize) -> PyResult<()> {
    let py = slf.py();
    let buf = {
        let st = slf.get().st.borrow(py);
        st.read_buffer.as_ref().map(|b| b.clone_ref(py))
    };
    let Some(buf) = buf else {
        return Ok(());
    };
    let view = PyMemoryView::from(buf.bind(py).as_any())?;
    let part = view.get_item(PySlice::new(py, 0, nbytes.min(MAX_SIZE) as isize, 1))?;
    data_received(slf, &part)
}

pub(super) fn data_received(slf: &Tls<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    batch(slf, || {
        feed(slf.get(), slf.py(), data)?;
        dispatch(slf)
    })
}

/// The stream transport underneath read `n` bytes into the shared input buffer.
pub(crate) fn received(slf: &Tls<'_>, input: &InputBuf, n: usize) -> PyResult<()> {
    let py = slf.py();
    batch(slf, || {
        let Some(ssl) = slf.get().ssl(py) else {
            return Ok(());
        };
        // Not counted here: these are records, the stream transport's read under tcp/unix.
        input.expose(py, n);
        let input_obj = InputBuf::get(py)?.bind(py);
        ssl.incoming_write(py, input_obj.as_any())?;
        slf.get().st.borrow_mut(py).records.feed(input.bytes(n));
        dispatch(slf)
    })
}

/// asyncio's `buffer_updated()` after the write to the incoming BIO.
pub(super) fn dispatch(slf: &Tls<'_>) -> PyResult<()> {
    match slf.get().phase(slf.py()) {
        Phase::DoHandshake => do_handshake(slf),
        Phase::Wrapped => do_read(slf),
        Phase::Flushing => do_flush(slf),
        Phase::Shutdown => do_shutdown(slf),
        Phase::Unwrapped => Ok(()),
    }
}

pub(super) fn eof_received(slf: &Tls<'_>) -> PyResult<Option<bool>> {
    let py = slf.py();
    let this = slf.get();
    this.st.borrow_mut(py).eof_received = true;
    let result = batch(slf, || {
        if this.debug(py) {
            pyapi::asyncio_logger(py)?.call_method1("debug", ("%r received EOF", slf))?;
        }
        match this.phase(py) {
            Phase::DoHandshake => {
                let exc = py
                    .get_type::<pyo3::exceptions::PyConnectionResetError>()
                    .call0()?;
                on_handshake_complete(slf, Some(PyErr::from_value(exc)))?;
            }
            Phase::Wrapped => {
                set_state(this, py, Phase::Flushing)?;
                if this.st.borrow(py).app_reading_paused {
                    return Ok(Some(true));
                }
                do_flush(slf)?;
            }
            Phase::Flushing => {
                do_write(slf)?;
                set_state(this, py, Phase::Shutdown)?;
                do_shutdown(slf)?;
            }
            Phase::Shutdown => do_shutdown(slf)?,
            Phase::Unwrapped => {}
        }
        Ok(None)
    });
    match result {
        Err(err) if is_exception(py, &err) => {
            if let Some(t) = this.transport(py) {
                t.call_method0("close")?;
            }
            Err(err)
        }
        other => other,
    }
}

pub(super) fn set_state(this: &SslProtocol, py: Python<'_>, new: Phase) -> PyResult<()> {
    let mut st = this.st.borrow_mut(py);
    let allowed = matches!(
        (st.phase, new),
        (_, Phase::Unwrapped)
            | (Phase::Unwrapped, Phase::DoHandshake)
            | (Phase::DoHandshake, Phase::Wrapped)
            | (Phase::Wrapped, Phase::Flushing)
            | (Phase::Flushing, Phase::Shutdown)
    );
    if !allowed {
        return Err(PyRuntimeError::new_err(format!(
            "cannot switch state from SSLProtocolState.{} to SSLProtocolState.{}",
            st.phase.name(),
            new.name()
        )));
    }
    st.phase = new;
    Ok(())
}

pub(super) fn wakeup_waiter(
    this: &SslProtocol,
    py: Python<'_>,
    exc: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let Some(waiter) = this.st.borrow_mut(py).waiter.take() else {
        return Ok(());
    };
    let waiter = waiter.bind(py);
    if !waiter.call_method0("cancelled")?.is_truthy()? {
        match exc {
            Some(e) => waiter.call_method1("set_exception", (e,))?,
            None => waiter.call_method1("set_result", (py.None(),))?,
        };
    }
    Ok(())
}

pub(super) fn fatal_error(slf: &Tls<'_>, err: PyErr, message: &str) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let exc = err.into_value(py).into_any();
    let exc = exc.bind(py);
    if let Some(t) = this.transport(py) {
        flush_deferred(slf)?;
        t.call_method1(pyo3::intern!(py, "_force_close"), (exc,))?;
    }
    if exc.is_instance_of::<PyOSError>() {
        if this.debug(py) {
            let kw = PyDict::new(py);
            kw.set_item("exc_info", exc)?;
            pyapi::asyncio_logger(py)?.call_method("debug", ("%r: %s", slf, message), Some(&kw))?;
        }
        return Ok(());
    }
    let cancelled =
        pyapi::cached_attr(py, &CANCELLED_ERROR, "asyncio.exceptions", "CancelledError")?;
    if exc.is_instance(&cancelled)? {
        return Ok(());
    }
    let ctx = PyDict::new(py);
    ctx.set_item("message", message)?;
    ctx.set_item("exception", exc)?;
    ctx.set_item("transport", this.transport(py))?;
    ctx.set_item("protocol", slf)?;
    if let Some(lp) = this.loop_of(py) {
        lp.call_method1("call_exception_handler", (ctx,))?;
    }
    Ok(())
}
