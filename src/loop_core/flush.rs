//! The flush list: stream transports holding small writes made by the run step's
//! callbacks, sent together (one syscall per transport) when the step ends, or sooner once
//! the oldest has waited `FLUSH_DELAY`.
//!
//! A protocol often writes a response in pieces (uvicorn: the headers, then the body);
//! sending each at once costs a syscall and a TCP segment apiece. Deferring them to the
//! end of the step is invisible to asyncio's API: the transport flushes first whenever
//! its state could be observed (see transports/stream/coalesce.rs).
//!
//! Holding them to the end of the step rather than of each callback: the responses of a
//! step reach their peers together, so a peer process on this host (a load generator, a
//! reverse proxy) is woken once for several instead of once for each. Measured under
//! uvicorn + wrk (issue 13): 0.15–0.19 → 0.04–0.05 wake-ups of wrk per request, each of
//! which costs the sender ~10 µs of kernel time on this VM; the syscalls stay the same.
//! The cost is latency: a callback's bytes wait for the later callbacks of its step, at
//! most about `FLUSH_DELAY` plus one callback.

use std::sync::atomic::Ordering::Relaxed;

use pyo3::prelude::*;

use super::handles::thread_id;
use super::LoopCore;
use crate::clock;
use crate::errors;
use crate::transports::stream::StreamTransport;

/// How long (seconds) the oldest deferred write may wait for the rest of its step.
const FLUSH_DELAY: f64 = 200e-6;

impl LoopCore {
    /// Marks the start of a callback the run step runs on thread `id`
    /// (handles::thread_id), or its end (0).
    #[inline]
    pub(super) fn set_in_callback(&self, id: u64) {
        self.callback_thread.store(id, Relaxed);
    }

    /// Whether a write may be deferred now: this loop's run step is running a callback on
    /// the calling thread (not a write from another thread while the GIL is released, nor
    /// one made before the loop runs or between its callbacks).
    #[inline]
    pub(crate) fn in_callback(&self) -> bool {
        let running = self.callback_thread.load(Relaxed);
        running != 0 && running == thread_id()
    }

    /// Queues `transport` to be flushed when the run step ends (once: the
    /// transport queues itself only when it has nothing deferred yet).
    pub(crate) fn defer_flush(&self, py: Python<'_>, transport: Py<StreamTransport>) {
        let mut st = self.st.borrow_mut(py);
        if st.flush.is_empty() {
            st.flush_since = clock::monotonic();
        }
        st.flush.push_back(transport);
    }

    /// Whether the deferred writes are to go now, before the step's other callbacks: the
    /// oldest has waited `FLUSH_DELAY`.
    #[inline]
    pub(super) fn flush_due(&self, py: Python<'_>) -> bool {
        clock::monotonic() - self.st.borrow(py).flush_since >= FLUSH_DELAY
    }

    /// Whether several transports' deferred writes can go out in one io_uring
    /// submission (feature `uring`, where the kernel allows it).
    #[cfg(feature = "uring")]
    #[inline]
    fn batches_sends(&self, py: Python<'_>) -> bool {
        let mut st = self.st.borrow_mut(py);
        !st.closed && st.ring.available()
    }

    #[inline]
    pub(super) fn has_deferred_writes(&self, py: Python<'_>) -> bool {
        !self.st.borrow(py).flush.is_empty()
    }

    /// Sends what the queued transports hold. A send error is the transport's own (its
    /// fatal-error path closes it, with connection_lost as a direct send's error would
    /// give); only an exception that must propagate (KeyboardInterrupt, SystemExit) is
    /// returned, after every transport had its turn.
    pub(super) fn flush_writes(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut first_err = None;
        let mut report = |t: &Bound<'_, StreamTransport>, err: PyErr| {
            if first_err.is_none() && errors::propagates(py, &err) {
                first_err = Some(err);
            } else {
                // Nobody is left to raise it to (the callback has returned).
                err.write_unraisable(py, Some(t.as_any()));
            }
        };
        // Several at once: one io_uring submission for all of them.
        #[cfg(feature = "uring")]
        if this.st.borrow(py).flush.len() > 1 && this.batches_sends(py) {
            let batch: Vec<_> = this.st.borrow_mut(py).flush.drain(..).collect();
            // No Python code runs while the ring is borrowed (flush_batch's send step).
            StreamTransport::flush_batch(
                py,
                batch,
                |bufs, out| this.st.borrow_mut(py).ring.send_all(bufs, out),
                &mut report,
            );
        }
        // One at a time, in the order they wrote (the queue keeps its allocation).
        loop {
            let Some(t) = this.st.borrow_mut(py).flush.pop_front() else {
                break;
            };
            if let Err(err) = StreamTransport::flush_deferred(t.bind(py)) {
                report(t.bind(py), err);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
