//! The TLS shutdown: close_notify both ways, bounded by `ssl_shutdown_timeout`, then the
//! transport underneath closes; `abort()`.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

use super::bio::{self, Filled};
use super::machine::{fatal_error, set_state, Tls};
use super::read::{available, call_eof_received, do_read};
use super::write::{flush_deferred, process_outgoing};
use super::{Phase, SslProtocol};
use crate::pyapi;

static TIMEOUT_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(super) fn start_shutdown(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let phase = {
        let mut st = this.st.borrow_mut(py);
        if matches!(
            st.phase,
            Phase::Flushing | Phase::Shutdown | Phase::Unwrapped
        ) {
            return Ok(());
        }
        if st.app_transport.is_some() {
            st.app_closed = true;
        }
        st.phase
    };
    if phase == Phase::DoHandshake {
        return abort(slf, None);
    }
    set_state(this, py, Phase::Flushing)?;
    arm_shutdown_timeout(slf)?;
    do_flush(slf)
}

pub(super) fn arm_shutdown_timeout(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let timeout = this.st.borrow(py).shutdown_timeout.clone_ref(py);
    let cb = slf.getattr(pyo3::intern!(py, "_check_shutdown_timeout"))?;
    let handle = this.call_later(py, &timeout, &cb)?;
    let old = std::mem::replace(&mut this.st.borrow_mut(py).shutdown_timeout_handle, handle);
    drop(old);
    Ok(())
}

pub(super) fn check_shutdown_timeout(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    if !matches!(slf.get().phase(py), Phase::Flushing | Phase::Shutdown) {
        return Ok(());
    }
    let cls = pyapi::cached_attr(py, &TIMEOUT_ERROR, "asyncio.exceptions", "TimeoutError")?;
    let exc = cls.call1(("SSL shutdown timed out",))?;
    force_close_transport(slf, Some(&exc))
}

pub(super) fn do_flush(slf: &Tls<'_>) -> PyResult<()> {
    do_read(slf)?;
    set_state(slf.get(), slf.py(), Phase::Shutdown)?;
    do_shutdown(slf)
}

pub(super) fn do_shutdown(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let Some(ssl) = this.ssl(py) else {
        return Ok(());
    };
    let result = if this.st.borrow(py).eof_received {
        Ok(())
    } else {
        discard_incoming(this, py, &ssl)
            .and_then(|()| ssl.obj.bind(py).call_method0("unwrap").map(drop))
    };
    match result {
        Ok(()) => {
            process_outgoing(slf)?;
            call_eof_received(slf)?;
            on_shutdown_complete(slf, None)
        }
        Err(err) if bio::is_again(py, &err)? => process_outgoing(slf),
        Err(err) if bio::is_ssl_error(py, &err)? => on_shutdown_complete(slf, Some(err)),
        Err(err) => Err(err),
    }
}

/// uvloop's fix of bpo-39951 (asyncio still has the bug): application data that comes
/// after the application closed the transport is read and dropped before `unwrap()`,
/// which would otherwise fail with "application data after close notify".
pub(super) fn discard_incoming(this: &SslProtocol, py: Python<'_>, ssl: &bio::Ssl) -> PyResult<()> {
    let mut first = true;
    while let Some(cap) = available(this, py, ssl)? {
        let mut more = || -> PyResult<bool> {
            if std::mem::take(&mut first) {
                return Ok(true);
            }
            Ok(available(this, py, ssl)?.is_some())
        };
        match ssl.read_bytes(py, cap, &mut more)?.1 {
            Filled::Full => this.st.borrow_mut(py).plain_pending = true,
            Filled::More => {}
            _ => return Ok(()),
        }
        first = true;
    }
    Ok(())
}

pub(super) fn on_shutdown_complete(slf: &Tls<'_>, exc: Option<PyErr>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    if let Some(err) = exc {
        let handle = this.st.borrow_mut(py).shutdown_timeout_handle.take();
        if let Some(h) = handle {
            h.bind(py).call_method0("cancel")?;
        }
        return fatal_error(slf, err, "Fatal error on transport");
    }
    // gh-160520 (CPython 3.14.10): transport.close() flushes its write buffer first,
    // which a peer that does not read can delay forever: the timeout stays (or starts,
    // when the peer began the shutdown) until connection_lost(). Taken on every version.
    if this.st.borrow(py).shutdown_timeout_handle.is_none() {
        arm_shutdown_timeout(slf)?;
    }
    if let Some(t) = this.transport(py) {
        let close = t.getattr(pyo3::intern!(py, "close"))?;
        this.call_soon(py, &close, &PyTuple::empty(py))?;
    }
    Ok(())
}

pub(super) fn abort(slf: &Tls<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    set_state(slf.get(), slf.py(), Phase::Unwrapped)?;
    force_close_transport(slf, exc)
}

/// `transport._force_close(exc)` on the transport underneath, once what waits for the
/// end of the event has gone to it (asyncio would have handed it over already).
pub(super) fn force_close_transport(slf: &Tls<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    let py = slf.py();
    flush_deferred(slf)?;
    if let Some(t) = slf.get().transport(py) {
        let none = py.None().into_bound(py);
        t.call_method1(pyo3::intern!(py, "_force_close"), (exc.unwrap_or(&none),))?;
    }
    Ok(())
}
