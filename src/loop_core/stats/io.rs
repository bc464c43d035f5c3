//! Per-kind transport I/O counters: the API every native transport calls.
//!
//! A transport holds a `TransportIo` from its creation until its connection is lost
//! (`TransportIo::opened(&loop.stats, kind)` … `closed()`, or drop), and reports each
//! successful read and write syscall with `read(n)` / `wrote(n)`. The counters are atomic
//! read-modify-writes (~8 ns, against a syscall's ≥1 µs), so a transport may count without
//! the GIL. The stream transport (TCP, Unix) does this today; TLS, UDP and pipe transports,
//! and servers (`LoopStats::server_opened` / `server_closed`), are asyncio's Python code
//! bound to the loop for now and count nothing until they are native.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::LoopStats;

/// The transport kinds `stats()` reports, in its order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TransportKind {
    Tcp,
    Unix,
    // Named for the native transports to come (src/transports/{tls,datagram,pipe}.rs).
    #[allow(dead_code)]
    Tls,
    #[allow(dead_code)]
    Udp,
    #[allow(dead_code)]
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
        stats.io(kind).open.fetch_add(1, Relaxed);
        TransportIo {
            stats: Arc::clone(stats),
            kind,
            open: AtomicBool::new(true),
        }
    }

    /// A read syscall returned `n` bytes (0: end of file).
    #[inline]
    pub(crate) fn read(&self, n: usize) {
        let io = self.stats.io(self.kind);
        io.reads.fetch_add(1, Relaxed);
        io.bytes_read.fetch_add(n as u64, Relaxed);
    }

    /// A write syscall took `n` bytes.
    #[inline]
    pub(crate) fn wrote(&self, n: usize) {
        let io = self.stats.io(self.kind);
        io.writes.fetch_add(1, Relaxed);
        io.bytes_written.fetch_add(n as u64, Relaxed);
    }

    /// The transport is closed (its connection lost); idempotent.
    pub(crate) fn closed(&self) {
        if self.open.swap(false, Relaxed) {
            self.stats.io(self.kind).open.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for TransportIo {
    fn drop(&mut self) {
        self.closed();
    }
}
