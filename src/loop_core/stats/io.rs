//! Per-kind transport I/O counters and the open-server count: the API every native
//! transport and the servers call.
//!
//! A transport holds a `TransportIo` from its creation until its connection is lost
//! (`TransportIo::opened(&loop.stats, kind)` … `closed()`, or drop), and reports its reads
//! and writes with `read(n)` / `wrote(n)`:
//!
//! * `tcp`, `unix` (src/transports/stream.rs, also under a TLS layer) and `pipe`
//!   (src/transports/pipe/): one per read or write syscall, a read of 0 (end of file)
//!   included, a write that took nothing (EAGAIN) not;
//! * `udp` (src/transports/datagram/, Unix datagram sockets too): one per datagram
//!   received or sent, whichever call moved it (a recvmmsg(2) of 5 counts 5 reads);
//! * `tls` (src/transports/tls/): the application's side, in plaintext: one read per
//!   `data_received()`/`buffer_updated()` delivery, one write per `write()`/
//!   `writelines()` call with data (not refused as written to a closing transport). The
//!   records on the wire are counted by the transport underneath, as `tcp` or `unix`.
//!
//! A `Server` counts in `servers` from its creation until its `close()` (`OpenServer`).
//! The counters are atomic read-modify-writes (~8 ns, against a syscall's ≥1 µs), so a
//! transport may count without the GIL.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::{LoopStats, ON};

/// The transport kinds `stats()` reports, in its order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TransportKind {
    Tcp,
    Unix,
    Tls,
    Udp,
    Pipe,
}

pub(super) const KINDS: [(TransportKind, &str); 5] = [
    (TransportKind::Tcp, "tcp"),
    (TransportKind::Unix, "unix"),
    (TransportKind::Tls, "tls"),
    (TransportKind::Udp, "udp"),
    (TransportKind::Pipe, "pipe"),
];

/// One kind's I/O.
#[derive(Default)]
pub(super) struct IoCounters {
    open: AtomicU64,
    bytes_read: AtomicU64,
    reads: AtomicU64,
    bytes_written: AtomicU64,
    writes: AtomicU64,
}

impl IoCounters {
    pub(super) fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let k = PyDict::new(py);
        k.set_item("open", self.open.load(Relaxed))?;
        k.set_item("bytes_read", self.bytes_read.load(Relaxed))?;
        k.set_item("reads", self.reads.load(Relaxed))?;
        k.set_item("bytes_written", self.bytes_written.load(Relaxed))?;
        k.set_item("writes", self.writes.load(Relaxed))?;
        Ok(k)
    }
}

/// A transport's membership in its loop's statistics: counted open from `opened` until
/// `closed` (or drop), with its reads and writes counted in between.
pub(crate) struct TransportIo {
    stats: Arc<LoopStats>,
    kind: TransportKind,
    open: AtomicBool,
}

impl TransportIo {
    pub(crate) fn opened(stats: &Arc<LoopStats>, kind: TransportKind) -> Self {
        if ON {
            stats.io(kind).open.fetch_add(1, Relaxed);
        }
        TransportIo {
            stats: Arc::clone(stats),
            kind,
            open: AtomicBool::new(true),
        }
    }

    /// A read returned `n` bytes (0: end of file); for `udp`, a datagram of `n` bytes; for
    /// `tls`, `n` plaintext bytes delivered to the protocol.
    #[inline]
    pub(crate) fn read(&self, n: usize) {
        if !ON {
            return;
        }
        let io = self.stats.io(self.kind);
        io.reads.fetch_add(1, Relaxed);
        io.bytes_read.fetch_add(n as u64, Relaxed);
    }

    /// A write syscall took `n` bytes; for `udp`, a datagram of `n` bytes sent; for `tls`,
    /// a `write()`/`writelines()` of `n` plaintext bytes.
    #[inline]
    pub(crate) fn wrote(&self, n: usize) {
        if !ON {
            return;
        }
        let io = self.stats.io(self.kind);
        io.writes.fetch_add(1, Relaxed);
        io.bytes_written.fetch_add(n as u64, Relaxed);
    }

    /// The transport is closed (its connection lost); idempotent.
    pub(crate) fn closed(&self) {
        if ON && self.open.swap(false, Relaxed) {
            self.stats.io(self.kind).open.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for TransportIo {
    fn drop(&mut self) {
        self.closed();
    }
}

/// A server's membership in its loop's `servers` count: counted from `opened` (the
/// `Server` is made) until `closed` (its `close()`) or drop, once.
pub(crate) struct OpenServer {
    stats: Arc<LoopStats>,
    open: AtomicBool,
}

impl OpenServer {
    pub(crate) fn opened(stats: &Arc<LoopStats>) -> Self {
        stats.server_opened();
        OpenServer {
            stats: Arc::clone(stats),
            open: AtomicBool::new(true),
        }
    }

    /// The server is closed; idempotent.
    pub(crate) fn closed(&self) {
        if self.open.swap(false, Relaxed) {
            self.stats.server_closed();
        }
    }
}

impl Drop for OpenServer {
    fn drop(&mut self) {
        self.closed();
    }
}
