//! Loop statistics (`LoopCore.stats()`): counters the loop thread keeps as it runs, sampled
//! callback timing, the phase and callback sequence number the blocking detector watches,
//! and the per-kind I/O counters transports update.
//!
//! Cost is the constraint: a callback costs ~120 ns in a flood. Counters are relaxed loads
//! and stores (one writer at a time: the GIL holder), not locked read-modify-writes.
//! Every callback is timed with one read of the CPU's time-stamp counter, at its end: its
//! duration runs from the previous stamp (the end of the callback before it, the end of
//! the last poll syscall, or the start of the run), so it includes the loop's dispatch of
//! it (a few dozen ns) and, for the first callback of an iteration without a poll syscall,
//! the iteration's own bookkeeping. The durations go to a fixed log-linear histogram.
//! The blocking detector (src/watchdog.rs) reads the same stamp as the running callback's
//! start; with none watching, a callback costs one load of `flags` more, with one its
//! handle is published for the watchdog (`watched_start`).
//!
//! Transports: each native transport holds a `TransportIo` from its creation until its
//! connection is lost (`TransportIo::opened(&loop.stats, kind)` … `closed()`, or drop), and
//! reports every successful read and write syscall with `read(n)` / `wrote(n)`. Those
//! counters are atomic read-modify-writes, so a transport may count without the GIL. The
//! stream transport (TCP, Unix) does this today; TLS, UDP, pipes and servers (`server_opened`
//! / `server_closed`) are asyncio's Python code for now and count nothing yet.

use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed,
};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList};

use super::handles::Handle;
use crate::clock;
use crate::gil_cell::GilCell;
use crate::pyapi;

/// What the loop thread is doing, for the watchdog.
pub(crate) const IDLE: u8 = 0;
pub(crate) const BUSY: u8 = 1;
pub(crate) const POLLING: u8 = 2;

/// `flags` bits: a blocking detector watches (stamp every callback's start), and one
/// wants the end of the current episode stamped.
const WATCHED: u8 = 1;
const END_WANTED: u8 = 2;

/// A counter written by one thread at a time (the GIL holder) and read by any: a relaxed
/// load and store, ~1 ns, where a locked read-modify-write costs ~8.
#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }

    #[inline]
    fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
}

/// The transport kinds `stats()` reports, in its order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TransportKind {
    Tcp,
    Unix,
    Tls,
    Udp,
    Pipe,
}

const KINDS: [(TransportKind, &str); 5] = [
    (TransportKind::Tcp, "tcp"),
    (TransportKind::Unix, "unix"),
    (TransportKind::Tls, "tls"),
    (TransportKind::Udp, "udp"),
    (TransportKind::Pipe, "pipe"),
];

/// One kind's I/O: atomic read-modify-writes, so any thread may count.
#[derive(Default)]
struct IoCounters {
    open: AtomicU64,
    bytes_read: AtomicU64,
    reads: AtomicU64,
    bytes_written: AtomicU64,
    writes: AtomicU64,
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

/// Log-linear histogram buckets: 8 per power of two (12.5% wide), over all of u64.
const SUB: u32 = 3;
const BUCKETS: usize = ((64 - SUB as usize) << SUB) + (1 << SUB);

#[inline]
fn bucket(v: u64) -> usize {
    if v < (1 << SUB) {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let mant = (v >> (exp - SUB)) & ((1 << SUB) - 1);
    (((exp - SUB + 1) as usize) << SUB) + mant as usize
}

/// The lowest value of bucket `i`, and the lowest of the next (as f64: the last is 2^64).
fn bucket_range(i: usize) -> (f64, f64) {
    let per = 1usize << SUB;
    if i < per {
        return (i as f64, i as f64 + 1.0);
    }
    let exp = (i >> SUB) as i32 + SUB as i32 - 1;
    let mant = (i & (per - 1)) as f64;
    let step = 2f64.powi(exp - SUB as i32);
    ((per as f64 + mant) * step, (per as f64 + mant + 1.0) * step)
}

/// What the watchdog reads, without the GIL.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct View {
    pub(crate) phase: u8,
    pub(crate) seq: u64,
    pub(crate) in_callback: bool,
    pub(crate) start: u64,
}

/// The statistics of one loop, shared with its transports and its blocking detectors.
pub(crate) struct LoopStats {
    /// Callbacks started; also the sequence number the watchdog watches.
    callbacks: Counter,
    phase: AtomicU8,
    /// While watched: the address of the handle whose callback is running, 0 between
    /// callbacks. A thread holding the GIL that reads a non-zero value may use it: the run
    /// step keeps that handle alive until it clears this, which it does holding the GIL
    /// (and `unwatch` clears it, so that no stale address outlives a watch).
    running: AtomicUsize,
    /// `WATCHED` | `END_WANTED`: one load per callback when no detector runs.
    flags: AtomicU8,
    watchers: AtomicU32,
    /// The last stamp (ticks): the end of the last callback or poll syscall, or the start
    /// of the run. The running callback's start, for the watchdog.
    last: Counter,
    /// The end of the episode a watchdog asked for (ticks), 0 until stamped.
    end: AtomicU64,
    /// `threading.get_ident()` of the thread running the loop, 0 when it is not running.
    thread_ident: AtomicU64,
    iterations: Counter,
    max_ready: Counter,
    timers_scheduled: Counter,
    timers_cancelled: Counter,
    timers_fired: Counter,
    io_events: Counter,
    poll_ticks: Counter,
    run_ticks: Counter,
    /// Callback durations in ticks, by `bucket`.
    hist: Box<[Counter; BUCKETS]>,
    max: Counter,
    /// How asyncio's slow-callback warning would name the slowest callback.
    slowest: GilCell<Option<String>>,
    io: [IoCounters; 5],
    servers: AtomicU64,
}

static FORMAT_HANDLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl LoopStats {
    pub(crate) fn new() -> Self {
        LoopStats {
            callbacks: Counter::default(),
            phase: AtomicU8::new(IDLE),
            running: AtomicUsize::new(0),
            flags: AtomicU8::new(0),
            watchers: AtomicU32::new(0),
            last: Counter::default(),
            end: AtomicU64::new(0),
            thread_ident: AtomicU64::new(0),
            iterations: Counter::default(),
            max_ready: Counter::default(),
            timers_scheduled: Counter::default(),
            timers_cancelled: Counter::default(),
            timers_fired: Counter::default(),
            io_events: Counter::default(),
            poll_ticks: Counter::default(),
            run_ticks: Counter::default(),
            hist: Box::new(std::array::from_fn(|_| Counter::default())),
            max: Counter::default(),
            slowest: GilCell::new(None),
            io: Default::default(),
            servers: AtomicU64::new(0),
        }
    }

    #[inline]
    fn io(&self, kind: TransportKind) -> &IoCounters {
        &self.io[kind as usize]
    }

    // For the native servers to come (src/server.rs); servers are asyncio's Python now.
    #[allow(dead_code)]
    pub(crate) fn server_opened(&self) {
        self.servers.fetch_add(1, Relaxed);
    }

    #[allow(dead_code)]
    pub(crate) fn server_closed(&self) {
        self.servers.fetch_sub(1, Relaxed);
    }

    pub(crate) fn timer_scheduled(&self) {
        self.timers_scheduled.add(1);
    }

    pub(crate) fn timer_cancelled(&self) {
        self.timers_cancelled.add(1);
    }

    #[inline]
    pub(crate) fn timer_fired(&self) {
        self.timers_fired.add(1);
    }

    /// One iteration with `ready` handles to run.
    #[inline]
    pub(crate) fn iteration(&self, ready: usize) {
        self.iterations.add(1);
        if ready as u64 > self.max_ready.get() {
            self.max_ready.set(ready as u64);
        }
    }

    #[inline]
    pub(crate) fn io_events(&self, n: u64) {
        self.io_events.add(n);
    }

    pub(crate) fn set_thread(&self, ident: Option<u64>) {
        self.thread_ident.store(ident.unwrap_or(0), Relaxed);
    }

    /// `run_forever` (or one `_run_once`) begins; returns its start for `run_end`.
    pub(crate) fn run_start(&self) -> u64 {
        self.phase.store(BUSY, Relaxed);
        let now = clock::ticks();
        self.last.set(now);
        now
    }

    pub(crate) fn run_end(&self, start: u64) {
        self.check_end();
        self.phase.store(IDLE, Relaxed);
        self.run_ticks.add(clock::ticks().saturating_sub(start));
    }

    /// A poll that may block begins; returns its start for `poll_end`.
    #[inline]
    pub(crate) fn poll_start(&self) -> u64 {
        self.check_end();
        self.phase.store(POLLING, Relaxed);
        clock::ticks()
    }

    #[inline]
    pub(crate) fn poll_end(&self, start: u64) {
        self.phase.store(BUSY, Relaxed);
        let now = clock::ticks();
        self.last.set(now);
        self.poll_ticks.add(now.saturating_sub(start));
    }

    /// A poll syscall that could not block returned: the next callback's time starts now.
    #[inline]
    pub(crate) fn polled(&self) {
        self.last.set(clock::ticks());
    }

    /// The callback of `handle` is about to run: counts it, and publishes it for a
    /// watchdog if one watches.
    #[inline]
    pub(crate) fn callback_start(&self, handle: &Bound<'_, Handle>) {
        let flags = self.flags.load(Relaxed);
        if flags != 0 {
            self.watched_start(flags, handle);
        }
        self.callbacks.add(1);
    }

    #[cold]
    fn watched_start(&self, flags: u8, handle: &Bound<'_, Handle>) {
        if flags & END_WANTED != 0 {
            self.mark_end(clock::ticks());
        }
        if flags & WATCHED != 0 {
            self.running.store(handle.as_ptr() as usize, Relaxed);
        }
    }

    /// The callback of `handle` has returned: records its duration. Call before the
    /// handle is recycled (a new slowest callback is described from it).
    #[inline]
    pub(crate) fn callback_end(&self, handle: &Bound<'_, Handle>) {
        let now = clock::ticks();
        let d = now.saturating_sub(self.last.get());
        self.last.set(now);
        self.hist[bucket(d)].add(1);
        if self.flags.load(Relaxed) != 0 {
            self.watched_end(now);
        }
        if d > self.max.get() {
            self.slowest(handle, d);
        }
    }

    #[cold]
    fn watched_end(&self, now: u64) {
        self.running.store(0, Relaxed);
        if self.flags.load(Relaxed) & END_WANTED != 0 {
            self.mark_end(now);
        }
    }

    /// A new slowest callback: named now, while the handle still holds its callback
    /// (Python code runs here; no borrow is held across it).
    #[cold]
    fn slowest(&self, handle: &Bound<'_, Handle>, d: u64) {
        self.max.set(d);
        let text = describe(handle.as_any());
        *self.slowest.borrow_mut(handle.py()) = Some(text);
    }

    #[inline]
    fn check_end(&self) {
        if self.flags.load(Relaxed) & END_WANTED != 0 {
            self.mark_end(clock::ticks());
        }
    }

    #[cold]
    fn mark_end(&self, now: u64) {
        self.end.store(now, Relaxed);
        self.flags.fetch_and(!END_WANTED, Relaxed);
    }

    /// A blocking detector starts watching (call with the GIL held, as `unwatch`).
    pub(crate) fn watch_start(&self) {
        if self.watchers.fetch_add(1, Relaxed) == 0 {
            self.flags.fetch_or(WATCHED, Relaxed);
        }
    }

    pub(crate) fn unwatch(&self) {
        if self.watchers.fetch_sub(1, Relaxed) == 1 {
            self.flags.fetch_and(!WATCHED, Relaxed);
            // Unwatched callbacks leave `running` alone: it must not keep this one's.
            self.running.store(0, Relaxed);
        }
    }

    /// The watchdog's view: phase, callback sequence number, whether a callback is
    /// running (rather than the loop's own work between callbacks), and when it started
    /// (ticks; valid while watched).
    pub(crate) fn view(&self) -> View {
        View {
            phase: self.phase.load(Relaxed),
            seq: self.callbacks.get(),
            in_callback: self.running.load(Relaxed) != 0,
            start: self.last.get(),
        }
    }

    /// Asks the loop thread to stamp the end of the current episode (`ended_at`).
    pub(crate) fn want_end(&self) {
        self.end.store(0, Relaxed);
        self.flags.fetch_or(END_WANTED, Relaxed);
    }

    /// When the episode `want_end` asked about ended (ticks), if the loop has stamped it.
    pub(crate) fn ended_at(&self) -> Option<u64> {
        match self.end.load(Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    pub(crate) fn thread_ident(&self) -> u64 {
        self.thread_ident.load(Relaxed)
    }

    /// The handle whose callback is running, if any. Call with the GIL held.
    pub(crate) fn running_handle<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let ptr = self.running.load(Relaxed);
        if ptr == 0 {
            return None;
        }
        // SAFETY: we hold the GIL, and `running` is non-zero only while the run step holds
        // a reference to that handle (it clears it before releasing the handle, holding
        // the GIL); so the object is alive, and we take a new reference to it.
        Some(unsafe { Bound::from_borrowed_ptr(py, ptr as *mut pyo3::ffi::PyObject) })
    }

    /// The `stats()` dict.
    pub(crate) fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let hz = clock::ticks_per_second();
        let secs = |ticks: u64| ticks as f64 / hz;
        let d = PyDict::new(py);
        d.set_item("iterations", self.iterations.get())?;
        d.set_item("callbacks", self.callbacks.get())?;
        d.set_item("max_ready", self.max_ready.get())?;
        let timers = PyDict::new(py);
        timers.set_item("scheduled", self.timers_scheduled.get())?;
        timers.set_item("cancelled", self.timers_cancelled.get())?;
        timers.set_item("fired", self.timers_fired.get())?;
        d.set_item("timers", timers)?;
        d.set_item("io_events", self.io_events.get())?;
        let transports = PyDict::new(py);
        for (kind, name) in KINDS {
            let io = self.io(kind);
            let k = PyDict::new(py);
            k.set_item("open", io.open.load(Relaxed))?;
            k.set_item("bytes_read", io.bytes_read.load(Relaxed))?;
            k.set_item("reads", io.reads.load(Relaxed))?;
            k.set_item("bytes_written", io.bytes_written.load(Relaxed))?;
            k.set_item("writes", io.writes.load(Relaxed))?;
            transports.set_item(name, k)?;
        }
        d.set_item("transports", transports)?;
        d.set_item("servers", self.servers.load(Relaxed))?;
        let run = self.run_ticks.get();
        let poll = self.poll_ticks.get().min(run);
        d.set_item("poll_seconds", secs(poll))?;
        d.set_item("busy_seconds", secs(run - poll))?;
        let counts: Vec<u64> = self.hist.iter().map(Counter::get).collect();
        let count: u64 = counts.iter().sum();
        let max = self.max.get();
        let quantile = |q: f64| -> f64 {
            let rank = ((q * count as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return bucket_range(i).1.min(max as f64) / hz;
                }
            }
            secs(max)
        };
        let durations = PyDict::new(py);
        durations.set_item("count", count)?;
        durations.set_item("max", secs(max))?;
        durations.set_item("p50", if count > 0 { quantile(0.5) } else { 0.0 })?;
        durations.set_item("p99", if count > 0 { quantile(0.99) } else { 0.0 })?;
        let hist = PyList::empty(py);
        for (i, &n) in counts.iter().enumerate() {
            if n != 0 {
                let (lo, hi) = bucket_range(i);
                hist.append((lo / hz, hi / hz, n))?;
            }
        }
        durations.set_item("histogram", hist)?;
        d.set_item("callback_durations", durations)?;
        match &*self.slowest.borrow(py) {
            Some(text) => {
                let s = PyDict::new(py);
                s.set_item("repr", text)?;
                s.set_item("seconds", secs(max))?;
                d.set_item("slowest_callback", s)?;
            }
            None => d.set_item("slowest_callback", py.None())?,
        }
        Ok(d)
    }
}

/// What asyncio's slow-callback warning names: the task for a task step, else the handle.
pub(crate) fn describe(handle: &Bound<'_, PyAny>) -> String {
    let py = handle.py();
    pyapi::cached_attr(py, &FORMAT_HANDLE, "asyncio.base_events", "_format_handle")
        .and_then(|f| f.call1((handle,)))
        .and_then(|s| s.str().map(|s| s.to_string()))
        .unwrap_or_else(|_| crate::errors::repr(handle))
}
