//! Closing, as asyncio's `_SelectorTransport`: `close()` once the buffer is flushed,
//! `abort()` and the fatal-error path (`_force_close`), and the exception handler's report.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::StreamTransport;
use crate::errors;
use crate::loop_core::fds::Dir;
use crate::loop_core::LoopCore;
use crate::pyapi;

impl StreamTransport {
    /// `_fatal_error`: OSErrors are expected (logged in debug), others go to the exception
    /// handler; then the transport is closed.
    pub(super) fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if errors::propagates(py, &err) {
            return Err(err);
        }
        let exc = err.into_value(py).into_any();
        let is_os_error = exc.bind(py).is_instance_of::<pyo3::exceptions::PyOSError>();
        if let Some(lp) = slf.get().loop_of(py) {
            if is_os_error {
                if slf.get().debug(py) {
                    let logger = pyapi::asyncio_logger(py)?;
                    let kw = PyDict::new(py);
                    kw.set_item("exc_info", exc.bind(py))?;
                    logger.call_method(
                        "debug",
                        ("%r: %s", slf.get().owner(py), message),
                        Some(&kw),
                    )?;
                }
            } else {
                Self::report(slf, &lp, message, exc.bind(py))?;
            }
        }
        Self::force_close(slf, Some(exc.bind(py)))
    }

    /// The loop's exception handler, with asyncio's context keys for a transport.
    pub(super) fn report(
        slf: &Bound<'_, Self>,
        lp: &Bound<'_, LoopCore>,
        message: &str,
        exc: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let ctx = PyDict::new(py);
        ctx.set_item("message", message)?;
        ctx.set_item("exception", exc)?;
        ctx.set_item("transport", slf.get().owner(py))?;
        ctx.set_item("protocol", slf.get().protocol(py))?;
        lp.call_method1("call_exception_handler", (ctx,))?;
        Ok(())
    }

    pub(super) fn force_close(
        slf: &Bound<'_, Self>,
        exc: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // What the callback wrote before would have been sent by now (a failure closes
        // the transport here first, with its own error).
        Self::flush_deferred(slf)?;
        let (had_buffer, was_closing) = {
            let mut st = this.st.borrow_mut(py);
            if st.conn_lost > 0 {
                return Ok(());
            }
            let had = st.pending() > 0;
            st.wbuf.clear();
            st.head = 0;
            let was_closing = st.closing;
            st.closing = true;
            st.conn_lost += 1;
            (had, was_closing)
        };
        if had_buffer {
            this.remove_io(py, Dir::Write)?;
        }
        if !was_closing {
            this.remove_io(py, Dir::Read)?;
        }
        let cb = slf.getattr(pyo3::intern!(py, "_call_connection_lost"))?;
        let none = py.None().into_bound(py);
        this.call_soon(py, &cb, Some(exc.unwrap_or(&none)))
    }

    pub(super) fn start_close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        Self::flush_deferred(slf)?;
        let flushed = {
            let mut st = this.st.borrow_mut(py);
            if st.closing {
                return Ok(());
            }
            st.closing = true;
            let flushed = st.pending() == 0;
            if flushed {
                st.conn_lost += 1;
            }
            flushed
        };
        this.remove_io(py, Dir::Read)?;
        if flushed {
            this.remove_io(py, Dir::Write)?;
            let cb = slf.getattr(pyo3::intern!(py, "_call_connection_lost"))?;
            this.call_soon(py, &cb, Some(&py.None().into_bound(py)))?;
        }
        Ok(())
    }
}
