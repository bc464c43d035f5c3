//! The outgoing flow: the application's data into the TLS object, what it writes down to
//! the transport underneath (once per event), and the application's write flow control.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyMemoryView, PySlice};

use super::bio;
use super::machine::{fatal_error, is_exception, Tls};
use super::{Phase, SslProtocol, LOG_THRESHOLD_FOR_CONNLOST_WRITES};
use crate::errors;
use crate::pyapi;
use crate::transports::stream::StreamTransport;

/// Runs `f` as one event: what it writes is encrypted as it goes and leaves in one
/// `outgoing.read()` and one write to the transport underneath when it returns (the
/// outermost batch flushes; `flush_deferred` also runs before any other call down).
pub(super) fn batch<R>(slf: &Tls<'_>, f: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    let py = slf.py();
    let outer = !std::mem::replace(&mut slf.get().st.borrow_mut(py).batching, true);
    let result = f();
    if !outer {
        return result;
    }
    slf.get().st.borrow_mut(py).batching = false;
    let flushed = flush_deferred(slf);
    let value = result?;
    flushed?;
    Ok(value)
}

/// Sends what waits in the outgoing BIO for the end of the event.
pub(super) fn flush_deferred(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    if !std::mem::take(&mut slf.get().st.borrow_mut(py).deferred) {
        return Ok(());
    }
    process_outgoing(slf)
}

/// asyncio's `_write_appdata` for items already counted into the backlog.
pub(super) fn write_backlog(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    if slf.get().phase(py) != Phase::Wrapped {
        return Ok(());
    }
    match do_write(slf) {
        Err(err) if is_exception(py, &err) => fatal_error(slf, err, "Fatal error on SSL protocol"),
        other => other,
    }
}

/// The write-to-closed check of `_write_appdata`: true if the data is to be dropped.
pub(super) fn write_refused(this: &SslProtocol, py: Python<'_>) -> PyResult<bool> {
    let warn = {
        let mut st = this.st.borrow_mut(py);
        if !matches!(
            st.phase,
            Phase::Flushing | Phase::Shutdown | Phase::Unwrapped
        ) {
            return Ok(false);
        }
        let warn = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
        st.conn_lost += 1;
        warn
    };
    if warn {
        pyapi::asyncio_logger(py)?.call_method1("warning", ("SSL connection is closed",))?;
    }
    Ok(true)
}

pub(super) fn do_write(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    if let Some(ssl) = this.ssl(py) {
        loop {
            let front = {
                let st = this.st.borrow(py);
                st.backlog.front().map(|(d, n)| (d.clone_ref(py), *n))
            };
            let Some((data, len)) = front else {
                break;
            };
            let count = match ssl.write(py, data.bind(py)) {
                Ok(c) => c,
                Err(err) if bio::is_again(py, &err)? => break,
                Err(err) => return Err(err),
            };
            let rest = if count < len {
                let view = PyMemoryView::from(data.bind(py))?;
                Some(view.get_item(PySlice::new(py, count as isize, isize::MAX, 1))?)
            } else {
                None
            };
            let mut st = this.st.borrow_mut(py);
            match rest {
                Some(rest) => {
                    st.backlog_size -= count.min(st.backlog_size);
                    if let Some(front) = st.backlog.front_mut() {
                        *front = (rest.unbind(), len - count);
                    }
                }
                None => {
                    st.backlog.pop_front();
                    st.backlog_size -= len.min(st.backlog_size);
                }
            }
        }
    }
    process_outgoing(slf)
}

/// asyncio's `_process_outgoing`: what the TLS object wrote goes to the transport
/// underneath (at the end of the event when inside one), then the application's flow
/// control.
pub(super) fn process_outgoing(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let (paused, batching) = {
        let st = this.st.borrow(py);
        (st.ssl_writing_paused, st.batching)
    };
    let mut emptied = false;
    if !paused {
        if batching {
            this.st.borrow_mut(py).deferred = true;
        } else if let Some(ssl) = this.ssl(py) {
            let data = ssl.outgoing_read(py)?;
            emptied = true;
            if !data.as_bytes().is_empty() {
                write_down(slf, &data)?;
            }
        }
    }
    control_app_writing(slf, emptied.then_some(0))
}

/// `transport.write(data)` on the transport underneath: natively on ferroloop's own.
pub(super) fn write_down(slf: &Tls<'_>, data: &Bound<'_, PyBytes>) -> PyResult<()> {
    let py = slf.py();
    let (native, transport) = {
        let st = slf.get().st.borrow(py);
        (
            st.native.as_ref().map(|n| n.clone_ref(py)),
            st.transport.as_ref().map(|t| t.clone_ref(py)),
        )
    };
    // Not counted here: records, which the transport underneath counts as it sends them.
    match (native, transport) {
        (Some(n), _) => StreamTransport::write_bytes(n.bind(py), data),
        (None, Some(t)) => t.bind(py).call_method1("write", (data,)).map(drop),
        (None, None) => Ok(()),
    }
}

pub(super) fn write_buffer_size(this: &SslProtocol, py: Python<'_>) -> PyResult<usize> {
    let (deferred, size, ssl) = {
        let st = this.st.borrow(py);
        (
            st.deferred,
            st.backlog_size,
            st.ssl.as_ref().map(|s| s.clone_ref(py)),
        )
    };
    let pending = match ssl {
        Some(ssl) if !deferred => ssl.outgoing_pending(py)?,
        _ => 0,
    };
    Ok(pending + size)
}

/// asyncio's `_control_app_writing`; `outgoing`: the outgoing BIO's count when known.
pub(super) fn control_app_writing(slf: &Tls<'_>, outgoing: Option<usize>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let size = match outgoing {
        Some(n) => n + this.st.borrow(py).backlog_size,
        None => write_buffer_size(this, py)?,
    } as f64;
    let method = {
        let mut st = this.st.borrow_mut(py);
        if size >= st.outgoing_limits.high_cmp && !st.app_writing_paused {
            st.app_writing_paused = true;
            "pause_writing"
        } else if size <= st.outgoing_limits.low_cmp && st.app_writing_paused {
            st.app_writing_paused = false;
            "resume_writing"
        } else {
            return Ok(());
        }
    };
    let Some(protocol) = this.app_protocol(py) else {
        return Ok(());
    };
    if let Err(err) = protocol.call_method0(method) {
        if errors::propagates(py, &err) {
            return Err(err);
        }
        let ctx = PyDict::new(py);
        ctx.set_item("message", format!("protocol.{method}() failed"))?;
        ctx.set_item("exception", err.value(py))?;
        ctx.set_item(
            "transport",
            this.st
                .borrow(py)
                .app_transport
                .as_ref()
                .map(|t| t.clone_ref(py)),
        )?;
        ctx.set_item("protocol", slf)?;
        if let Some(lp) = this.loop_of(py) {
            lp.call_method1("call_exception_handler", (ctx,))?;
        }
    }
    Ok(())
}
