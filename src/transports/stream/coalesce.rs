//! Write coalescing: small writes made while the loop runs a callback are held in the
//! buffer and sent together when the run step ends (loop_core/flush.rs), so a response
//! written in pieces costs one syscall and, on TCP, one segment.
//!
//! asyncio sends each write at once; the difference stays unobservable through its API:
//! - only while the socket is not already watched for writing (then writes queue as
//!   always), and only up to the high-water mark: a direct send of these bytes could
//!   never have paused the protocol, so deferring them cannot skip a `pause_writing()`;
//! - whatever reveals the buffer or hands the socket on sends the deferred bytes first:
//!   `get_write_buffer_size()`, `set_write_buffer_limits()`, `write_eof()`, `close()`,
//!   `abort()` and the fatal-error path, `set_protocol()` (TLS upgrade), sendfile's
//!   empty waiter and the `_sock` attribute;
//! - a failed deferred send goes through the fatal-error path a direct one takes
//!   (connection_lost with the error), never raised into another callback.

use pyo3::prelude::*;

use super::write::Data;
use super::StreamTransport;

/// The most a callback's writes may hold back: a large write gains nothing from waiting.
const COALESCE_MAX: usize = 64 * 1024;

impl StreamTransport {
    /// Holds `chunks` for the loop to send when the run step ends; false (and
    /// nothing done) when this write is to be sent now. Called with no backlog.
    pub(super) fn try_defer(
        slf: &Bound<'_, Self>,
        chunks: &[Data<'_>],
        total: usize,
    ) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let Some(lp) = this.loop_of(py) else {
            return Ok(false);
        };
        if !lp.get().in_callback() {
            return Ok(false);
        }
        let first = {
            let mut st = this.st.borrow_mut(py);
            // asyncio pauses the protocol only above the high-water mark.
            if st.pending() + total > COALESCE_MAX.min(st.high_water) {
                return Ok(false);
            }
            for c in chunks {
                st.wbuf.extend_from_slice(c.as_slice());
            }
            !std::mem::replace(&mut st.deferred, true)
        };
        if first {
            lp.get().defer_flush(py, slf.clone().unbind());
        }
        Ok(true)
    }

    /// Sends the deferred writes now, if there are any (the loop's flush, or an API call
    /// that must see the buffer as a direct send would have left it).
    pub(crate) fn flush_deferred(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut st = slf.get().st.borrow_mut(py);
            if !st.deferred {
                return Ok(());
            }
            if st.conn_lost > 0 {
                st.deferred = false;
                return Ok(());
            }
        }
        Self::send_now(slf, &[])
    }
}
