//! The deferred writes of a whole run step, sent in one io_uring submission (cargo
//! feature `uring`, syscalls/uring.rs, through the loop's ring) instead of one send(2) per transport.
//!
//! Each transport's outcome is then taken as `send_now` takes its send's: the bytes sent
//! are consumed, a remainder (partial send, EAGAIN) is watched for writing, an error goes
//! through the fatal-error path. The counts are applied to every transport before any
//! Python code runs, so a protocol callback of one (pause_writing, connection_lost) that
//! writes to another sees its buffer as a direct send would have left it.

use std::os::fd::RawFd;

use nix::errno::Errno;
use pyo3::prelude::*;

use super::StreamTransport;
use crate::errors::os_error;
use crate::loop_core::fds::Dir;

impl StreamTransport {
    /// Sends what each of `batch` holds deferred; a failure is handed to `report` with its
    /// transport, as the loop's flush reports a direct send's.
    pub(crate) fn flush_batch(
        py: Python<'_>,
        batch: Vec<Py<StreamTransport>>,
        send: impl FnOnce(&[(RawFd, &[u8])], &mut Vec<Result<usize, Errno>>) -> usize,
        report: &mut dyn FnMut(&Bound<'_, StreamTransport>, PyErr),
    ) {
        // The transports with something to send, no longer deferred (as send_now marks).
        let ts: Vec<Bound<'_, StreamTransport>> = batch
            .into_iter()
            .map(|t| t.into_bound(py))
            .filter(|t| {
                let mut st = t.get().st.borrow_mut(py);
                let send = st.deferred && st.conn_lost == 0;
                st.deferred = false;
                send
            })
            .collect();
        let mut results = Vec::new();
        let done = {
            let states: Vec<_> = ts.iter().map(|t| t.get().st.borrow(py)).collect();
            let bufs: Vec<(RawFd, &[u8])> = ts
                .iter()
                .zip(&states)
                .map(|(t, st)| (t.get().fd, &st.wbuf[st.head..]))
                .collect();
            send(&bufs, &mut results)
        };
        for (t, r) in ts.iter().zip(&results).take(done) {
            if let Ok(n) = r {
                t.get().io.wrote(*n);
                t.get().st.borrow_mut(py).consume(*n);
            }
        }
        for (i, t) in ts.iter().enumerate() {
            let outcome = match results.get(i).filter(|_| i < done) {
                Some(r) => Self::settle(t, *r),
                // Not sent by the ring (it failed): send(2), as without it.
                None => Self::send_now(t, &[]),
            };
            if let Err(err) = outcome {
                report(t, err);
            }
        }
    }

    /// What follows a batched send whose count is already consumed.
    fn settle(slf: &Bound<'_, Self>, result: Result<usize, Errno>) -> PyResult<()> {
        let py = slf.py();
        let (lost, pending) = {
            let st = slf.get().st.borrow(py);
            (st.conn_lost > 0, st.pending())
        };
        if lost {
            // Closed meanwhile by another transport's protocol callback.
            return Ok(());
        }
        match result {
            Ok(_) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            Err(e) => {
                return Self::fatal_error(slf, os_error(e), "Fatal write error on socket transport")
            }
        }
        if pending == 0 {
            return Ok(());
        }
        Self::add_io(slf, Dir::Write)?;
        Self::maybe_pause_protocol(slf)
    }
}
