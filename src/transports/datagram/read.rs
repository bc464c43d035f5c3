//! The datagram transport's read side: several datagrams per readiness event, each handed
//! to `datagram_received` before the next is delivered, so a protocol that pauses or
//! closes the transport stops it. IP sockets read with one recvmmsg(2) what is queued
//! (and learn from a short count that the queue is empty, where a recvfrom(2) loop needs
//! one more call to see EAGAIN); Unix sockets with recvfrom(2) into the thread's reused
//! buffer; sockets that are not ours to read (subclasses, other families) through their
//! own `recvfrom()`, one datagram per event, as asyncio reads.

use std::cell::RefCell;

use nix::errno::Errno;
use nix::libc;
use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyOSError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use super::{addr, DatagramTransport, MAX_READ};
use crate::errors::os_error;
use crate::syscalls::{self, Batch, SockAddr};
use crate::transports::base::{self, clone_opt};

/// Datagrams delivered per readiness event at most (libuv, under uvloop, reads up to 32):
/// fewer polls and wake-ups under load, and the other fds still get their turn.
const READS_PER_EVENT: usize = 32;
/// Datagrams one recvmmsg(2) reads at most.
const BATCH_SLOTS: usize = 16;
/// No IPv4 or IPv6 datagram is larger (jumbograms aside): a batch slot is never short.
const SLOT_SIZE: usize = 64 * 1024;

thread_local! {
    // One batch of buffers per loop thread, made on first use (1 MiB of address space,
    // resident as far as datagrams have touched it).
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// What one read from the socket came to.
enum Got {
    /// This many datagrams, now at the end of `pending`; whether the queue is empty.
    Some(usize, bool),
    None,
    Failed(PyErr),
}

impl DatagramTransport {
    fn reads_natively(&self) -> bool {
        self.native && addr::native_family(self.family)
    }

    /// recvmmsg(2) pays for IP sockets: 64-byte echoes cost ~8% less server CPU than
    /// with a recvfrom(2) loop (benchmarks/net_dgram.py, 4 x 8 datagrams in flight).
    pub(super) fn batches(&self) -> bool {
        self.native && matches!(self.family, libc::AF_INET | libc::AF_INET6)
    }

    /// The socket is readable (or datagrams read earlier wait): a burst of deliveries,
    /// whose sends leave together once it ends (`defer.rs`), whatever it came to.
    pub(super) fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let nested = slf.get().begin_burst(slf.py());
        let read = Self::read_burst(slf);
        let sent = Self::end_burst(slf, nested);
        match (read, sent) {
            (Err(err), Err(also)) => {
                // The read's error is the handle's to report; the send's goes to
                // sys.unraisablehook rather than nowhere.
                also.write_unraisable(slf.py(), Some(slf.as_any()));
                Err(err)
            }
            (read, sent) => read.and(sent),
        }
    }

    fn read_burst(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut budget = if this.reads_natively() {
            READS_PER_EVENT
        } else {
            1
        };
        loop {
            if !Self::deliver_pending(slf)? {
                return Ok(());
            }
            if budget == 0 {
                return Ok(());
            }
            let got = if this.batches() {
                this.read_batch(py, budget.min(BATCH_SLOTS))?
            } else if this.reads_natively() {
                this.read_one(py)?
            } else {
                this.read_through_socket(py)?
            };
            match got {
                Got::Some(n, drained) => {
                    budget = budget.saturating_sub(n);
                    if drained {
                        Self::deliver_pending(slf)?;
                        return Ok(());
                    }
                }
                Got::None => return Ok(()),
                Got::Failed(err) if err.is_instance_of::<PyOSError>(py) => {
                    // asyncio's error_received() (e.g. ICMP port unreachable on a
                    // connected socket); it ends the event.
                    if let Some(p) = this.protocol(py) {
                        p.bind(py)
                            .call_method1(pyo3::intern!(py, "error_received"), (err,))?;
                    }
                    return Ok(());
                }
                Got::Failed(err) => {
                    return Self::fatal_error(slf, err, "Fatal read error on datagram transport");
                }
            }
        }
    }

    /// Hands the pending datagrams to the protocol while the transport reads; whether it
    /// still reads. An exception from `datagram_received` is the callback's, reported by
    /// its handle as in asyncio; what is left is delivered from the loop.
    fn deliver_pending(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        loop {
            let next = {
                let mut st = this.st.borrow_mut(py);
                if st.closing || st.paused || st.conn_lost > 0 {
                    return Ok(false);
                }
                match st.pending.pop_front() {
                    Some(item) => (item, clone_opt(py, &st.links.protocol)),
                    None => return Ok(true),
                }
            };
            let ((data, from), Some(protocol)) = next else {
                return Ok(true);
            };
            let delivered = protocol
                .bind(py)
                .call_method1(pyo3::intern!(py, "datagram_received"), (data, from));
            if let Err(err) = delivered {
                Self::deliver_pending_soon(slf)?;
                return Err(err);
            }
        }
    }

    /// Schedules the delivery of pending datagrams (after resume_reading(), or after a
    /// failed datagram_received()): the socket may have nothing more to wake the loop.
    pub(super) fn deliver_pending_soon(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (lp, context) = {
            let st = slf.get().st.borrow(py);
            if st.pending.is_empty() {
                return Ok(());
            }
            (st.links.loop_of(py), clone_opt(py, &st.links.context))
        };
        let Some(lp) = lp else {
            return Ok(());
        };
        let cb = slf.getattr(pyo3::intern!(py, "_read_ready"))?;
        base::call_soon(&lp, &cb, &[], context.as_ref())
    }

    /// The Python form of a sender, from the cache when it is the last one.
    fn sender<'py>(&self, py: Python<'py>, from: &SockAddr) -> PyResult<Bound<'py, PyAny>> {
        if let Some(known) = self.st.borrow(py).addrs.lookup_from(py, from) {
            return Ok(known.into_bound(py));
        }
        let obj = match addr::to_python(py, from)? {
            Some(obj) => obj,
            None => py.None().into_bound(py),
        };
        let old = self
            .st
            .borrow_mut(py)
            .addrs
            .store_from(*from, obj.clone().unbind());
        drop(old);
        Ok(obj)
    }

    fn push_pending(&self, py: Python<'_>, data: Bound<'_, PyBytes>, from: Bound<'_, PyAny>) {
        self.st
            .borrow_mut(py)
            .pending
            .push_back((data.into_any().unbind(), from.unbind()));
    }

    /// Up to `want` datagrams with one recvmmsg(2).
    fn read_batch(&self, py: Python<'_>, want: usize) -> PyResult<Got> {
        // The data is copied out while the batch is borrowed (bytes objects are not
        // tracked by the collector, so no finalizer can run and read meanwhile); the
        // senders are converted after.
        let got = BATCH.with(|cell| {
            let mut cell = cell.borrow_mut();
            let batch = cell.get_or_insert_with(|| Batch::new(BATCH_SLOTS, SLOT_SIZE));
            batch.recv(self.fd, want).map(|n| {
                (0..n)
                    .map(|i| {
                        let (data, from) = batch.get(i);
                        // One read per datagram, not per recvmmsg(2): the same counts
                        // as the recvfrom(2) paths.
                        self.io.read(data.len());
                        (PyBytes::new(py, data), *from)
                    })
                    .collect::<Vec<_>>()
            })
        });
        let items = match got {
            Ok(items) => items,
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(Got::None),
            Err(e) => return Ok(Got::Failed(os_error(e))),
        };
        let n = items.len();
        for (data, from) in items {
            let from = self.sender(py, &from)?;
            self.push_pending(py, data, from);
        }
        Ok(Got::Some(n, n < want))
    }

    /// One datagram with recvfrom(2) into the thread's reused buffer.
    fn read_one(&self, py: Python<'_>) -> PyResult<Got> {
        let got = syscalls::with_read_buf(|buf| {
            syscalls::recvfrom_into(self.fd, &mut buf[..MAX_READ]).map(|(n, from)| {
                self.io.read(n);
                (PyBytes::new(py, &buf[..n]), from)
            })
        });
        match got {
            Ok((data, from)) => {
                let from = self.sender(py, &from)?;
                self.push_pending(py, data, from);
                Ok(Got::Some(1, false))
            }
            Err(Errno::EAGAIN | Errno::EINTR) => Ok(Got::None),
            Err(e) => Ok(Got::Failed(os_error(e))),
        }
    }

    /// `sock.recvfrom(max_size)`, for sockets whose reads are not ours to make.
    fn read_through_socket(&self, py: Python<'_>) -> PyResult<Got> {
        let Some(sock) = self.sock(py) else {
            return Ok(Got::None);
        };
        match sock.bind(py).call_method1("recvfrom", (MAX_READ,)) {
            Ok(pair) => {
                let pair = pair.cast_into::<PyTuple>()?;
                let data = pair.get_item(0)?;
                let from = pair.get_item(1)?;
                self.io.read(data.len()?);
                self.st
                    .borrow_mut(py)
                    .pending
                    .push_back((data.unbind(), from.unbind()));
                Ok(Got::Some(1, false))
            }
            Err(e)
                if e.is_instance_of::<PyBlockingIOError>(py)
                    || e.is_instance_of::<PyInterruptedError>(py) =>
            {
                Ok(Got::None)
            }
            Err(e) => Ok(Got::Failed(e)),
        }
    }
}
