//! The incoming flow: decrypting what arrived into one `data_received()` (or the
//! application's own buffer), the peer's close_notify, and the read flow control that
//! pauses the transport underneath.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyMemoryView, PySlice, PyTuple};

use super::bio::{self, Available, Filled, READ_CHUNK};
use super::machine::{fatal_error, is_exception, Tls};
use super::shutdown::start_shutdown;
use super::write::{do_write, flush_deferred, process_outgoing};
use super::{AppState, Phase, SslProtocol};
use crate::errors;
use crate::pyapi;

static JOIN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(super) fn do_read(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    if !matches!(this.phase(py), Phase::Wrapped | Phase::Flushing) {
        return Ok(());
    }
    let result = (|| {
        let (paused, buffered) = {
            let st = this.st.borrow(py);
            (st.app_reading_paused, st.app_buffered)
        };
        if !paused {
            if buffered {
                read_buffered(slf)?;
            } else {
                read_copied(slf)?;
            }
            if this.st.borrow(py).backlog.is_empty() {
                process_outgoing(slf)?;
            } else {
                do_write(slf)?;
            }
        }
        control_ssl_reading(slf)
    })();
    match result {
        Err(err) if is_exception(py, &err) => fatal_error(slf, err, "Fatal error on SSL protocol"),
        other => other,
    }
}

/// How much a read can get now, None if nothing (see `Records`): asyncio reads until
/// `SSLWantReadError`, which this spares.
pub(super) fn available(
    this: &SslProtocol,
    py: Python<'_>,
    ssl: &bio::Ssl,
) -> PyResult<Option<usize>> {
    if std::mem::take(&mut this.st.borrow_mut(py).plain_pending) {
        return Ok(Some(READ_CHUNK));
    }
    let pending = ssl.incoming_pending(py)?;
    Ok(match this.st.borrow_mut(py).records.available(pending) {
        Available::Nothing => None,
        Available::AtMost(n) => Some(n.max(1)),
        Available::Unknown => Some(READ_CHUNK),
    })
}

/// Everything decrypted goes to one `data_received()`.
pub(super) fn read_copied(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let Some(ssl) = this.ssl(py) else {
        return Ok(());
    };
    let mut parts: Vec<Bound<'_, PyBytes>> = Vec::new();
    let mut eof = false;
    let mut first = true;
    while let Some(cap) = available(this, py, &ssl)? {
        // Checked for the first read just now; for the next ones, once each is done.
        let mut more = || -> PyResult<bool> {
            if std::mem::take(&mut first) {
                return Ok(true);
            }
            Ok(available(this, py, &ssl)?.is_some())
        };
        let (bytes, outcome) = ssl.read_bytes(py, cap, &mut more)?;
        parts.extend(bytes);
        match outcome {
            Filled::Eof => {
                eof = true;
                break;
            }
            Filled::Again | Filled::Drained => break,
            // OpenSSL may hold the rest of a record.
            Filled::Full => this.st.borrow_mut(py).plain_pending = true,
            Filled::More => {}
        }
        first = true;
    }
    let plain: usize = parts.iter().map(|p| p.as_bytes().len()).sum();
    let data = match parts.len() {
        0 => None,
        1 => parts.pop().map(Bound::into_any),
        _ => {
            let join = pyapi::cached_attr(py, &JOIN, "builtins", "bytes")?.getattr("join")?;
            Some(join.call1((PyBytes::new(py, b""), parts))?)
        }
    };
    if let Some(data) = data {
        if let Some(p) = this.app_protocol(py) {
            // One read per delivery, counted before the protocol runs (and may close).
            this.io.read(plain);
            p.call_method1(pyo3::intern!(py, "data_received"), (data,))?;
        }
    }
    if eof {
        call_eof_received(slf)?;
        start_shutdown(slf)?;
    }
    Ok(())
}

pub(super) fn read_buffered(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let Some(ssl) = this.ssl(py) else {
        return Ok(());
    };
    if available(this, py, &ssl)?.is_none() {
        return Ok(());
    }
    let Some(protocol) = this.app_protocol(py) else {
        return Ok(());
    };
    let hint = ssl.incoming_pending(py)?;
    let buf = protocol.call_method1(pyo3::intern!(py, "get_buffer"), (hint,))?;
    let wants = buf.len()?;
    let mut offset = 0;
    let mut count = 1;
    let attempt = (|| -> PyResult<()> {
        count = ssl.read_into(py, wants, &buf)?;
        if count == 0 {
            return Ok(());
        }
        offset = count;
        let view = PyMemoryView::from(&buf)?;
        while offset < wants {
            if available(this, py, &ssl)?.is_none() {
                return Ok(());
            }
            let rest = view.get_item(PySlice::new(py, offset as isize, isize::MAX, 1))?;
            count = ssl.read_into(py, wants - offset, &rest)?;
            if count == 0 {
                return Ok(());
            }
            offset += count;
        }
        // The buffer is full: OpenSSL may hold more, read on the next iteration.
        this.st.borrow_mut(py).plain_pending = true;
        let again = slf.getattr(pyo3::intern!(py, "_do_read"))?;
        this.call_soon(py, &again, &PyTuple::empty(py))?;
        Ok(())
    })();
    match attempt {
        Err(err) if bio::is_again(py, &err)? => {}
        Err(err) => return Err(err),
        Ok(()) => {}
    }
    if offset > 0 {
        this.io.read(offset);
        protocol.call_method1(pyo3::intern!(py, "buffer_updated"), (offset,))?;
    }
    if count == 0 {
        call_eof_received(slf)?;
        start_shutdown(slf)?;
    }
    Ok(())
}

pub(super) fn call_eof_received(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let protocol = {
        let mut st = this.st.borrow_mut(py);
        if st.app_state != AppState::ConMade {
            return Ok(());
        }
        st.app_state = AppState::Eof;
        st.app_protocol.as_ref().map(|p| p.clone_ref(py))
    };
    let Some(protocol) = protocol else {
        return Ok(());
    };
    match protocol
        .bind(py)
        .call_method0(pyo3::intern!(py, "eof_received"))
    {
        Ok(keep_open) => {
            if keep_open.is_truthy()? {
                pyapi::asyncio_logger(py)?.call_method1(
                    "warning",
                    ("returning true from eof_received() has no effect when using ssl",),
                )?;
            }
            Ok(())
        }
        Err(err) if errors::propagates(py, &err) => Err(err),
        Err(err) => fatal_error(slf, err, "Error calling eof_received()"),
    }
}

/// asyncio's `_control_ssl_reading`: the transport underneath pauses while the incoming
/// BIO holds more than its high-water mark.
pub(super) fn control_ssl_reading(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let Some(ssl) = this.ssl(py) else {
        return Ok(());
    };
    let size = ssl.incoming_pending(py)? as f64;
    let method = {
        let mut st = this.st.borrow_mut(py);
        if size >= st.incoming_limits.high_cmp && !st.ssl_reading_paused {
            st.ssl_reading_paused = true;
            "pause_reading"
        } else if size <= st.incoming_limits.low_cmp && st.ssl_reading_paused {
            st.ssl_reading_paused = false;
            "resume_reading"
        } else {
            return Ok(());
        }
    };
    if let Some(t) = this.transport(py) {
        flush_deferred(slf)?;
        t.call_method0(method)?;
    }
    Ok(())
}
