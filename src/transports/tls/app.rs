//! What the application's TLS transport does (asyncio's `_SSLProtocolTransport`): the
//! hot `write()` path, closing, reading flow control and the extra info.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyTuple};

use super::{machine, shutdown, write};
use super::{Phase, SslProtocol};
use crate::transports::stream::StreamTransport;

type Tls<'py> = Bound<'py, SslProtocol>;

/// `transport.write(data)`: straight into the TLS object when nothing is queued before
/// it (the common case), else behind the backlog, as asyncio's `_write_appdata`.
pub(super) fn write(slf: &Tls<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    if !(data.is_instance_of::<PyBytes>()
        || data.is_instance_of::<PyByteArray>()
        || data.is_instance_of::<PyMemoryView>())
    {
        return Err(PyTypeError::new_err(format!(
            "data: expecting a bytes-like instance, got {}",
            data.get_type().name()?
        )));
    }
    if !data.is_truthy()? {
        return Ok(());
    }
    let this = slf.get();
    if write::write_refused(this, py)? {
        return Ok(());
    }
    let len = data.len()?;
    // Counted as taken, whether it goes to the TLS object now or waits in the backlog.
    this.io.wrote(len);
    let direct = {
        let st = this.st.borrow(py);
        st.backlog.is_empty() && st.phase == Phase::Wrapped
    };
    if !direct {
        queue(this, py, data, len);
        return write::write_backlog(slf);
    }
    let Some(ssl) = this.ssl(py) else {
        return Ok(());
    };
    let result = match ssl.write(py, data) {
        Ok(count) if count >= len => Ok(()),
        Ok(_) => {
            // Never with a memory BIO and no partial writes, but as asyncio: the rest
            // waits in the backlog.
            queue(this, py, data, len);
            return write::write_backlog(slf);
        }
        Err(err) if super::bio::is_again(py, &err)? => {
            queue(this, py, data, len);
            Ok(())
        }
        Err(err) => Err(err),
    }
    .and_then(|()| write::process_outgoing(slf));
    match result {
        Err(err) if err.is_instance_of::<pyo3::exceptions::PyException>(py) => {
            machine::fatal_error(slf, err, "Fatal error on SSL protocol")
        }
        other => other,
    }
}

fn queue(this: &SslProtocol, py: Python<'_>, data: &Bound<'_, PyAny>, len: usize) {
    let mut st = this.st.borrow_mut(py);
    st.backlog.push_back((data.clone().unbind(), len));
    st.backlog_size += len;
}

/// asyncio's `_write_appdata(list_of_data)` (`writelines()`): every item is queued with
/// its `len()`, then the backlog goes to the TLS object.
pub(super) fn write_appdata(slf: &Tls<'_>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    if write::write_refused(this, py)? {
        return Ok(());
    }
    let mut total = 0;
    for item in list_of_data.try_iter()? {
        let item = item?;
        let len = item.len()?;
        queue(this, py, &item, len);
        total += len;
    }
    // One write for the call, as `write()` counts one, if it had data.
    if total > 0 {
        this.io.wrote(total);
    }
    write::write_backlog(slf)
}

/// asyncio 3.14.10's `is_closing()`: closed here, or closing underneath.
pub(super) fn is_closing(this: &SslProtocol, py: Python<'_>) -> PyResult<bool> {
    let (closed, native, transport) = {
        let st = this.st.borrow(py);
        (
            st.app_closed,
            st.native.as_ref().map(|n| n.clone_ref(py)),
            st.transport.as_ref().map(|t| t.clone_ref(py)),
        )
    };
    if closed {
        return Ok(true);
    }
    match (native, transport) {
        (Some(n), _) => Ok(StreamTransport::closing(n.get(), py)),
        (None, Some(t)) => t.bind(py).call_method0("is_closing")?.is_truthy(),
        (None, None) => Ok(false),
    }
}

pub(super) fn close(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let first = !std::mem::replace(&mut slf.get().st.borrow_mut(py).app_closed, true);
    if first {
        write::batch(slf, || shutdown::start_shutdown(slf))?;
    }
    Ok(())
}

/// `abort()` and `_force_close(exc)`.
pub(super) fn force_close(slf: &Tls<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    slf.get().st.borrow_mut(slf.py()).app_closed = true;
    shutdown::abort(slf, exc.filter(|e| !e.is_none()))
}

pub(super) fn resume_reading(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let was_paused = std::mem::replace(&mut slf.get().st.borrow_mut(py).app_reading_paused, false);
    if was_paused {
        let resume = slf.getattr(pyo3::intern!(py, "_resume"))?;
        slf.get().call_soon(py, &resume, &PyTuple::empty(py))?;
    }
    Ok(())
}

/// The TLS keys (`sslcontext`, then `peercert`, `cipher`, `compression`, `ssl_object`
/// once the handshake is done), else the transport underneath's.
pub(super) fn get_extra_info(
    this: &SslProtocol,
    py: Python<'_>,
    name: &Bound<'_, PyAny>,
    default: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let extra = this.st.borrow(py).extra.as_ref().map(|e| e.clone_ref(py));
    if let Some(extra) = extra {
        if let Some(v) = extra.bind(py).get_item(name)? {
            return Ok(v.unbind());
        }
    }
    let default = default.map_or_else(|| py.None(), |d| d.clone().unbind());
    match this.transport(py) {
        Some(t) => Ok(t.call_method1("get_extra_info", (name, default))?.unbind()),
        None => Ok(default),
    }
}
