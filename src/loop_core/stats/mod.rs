//! Loop statistics (`LoopCore.stats()`): counters the loop thread keeps as it runs, the
//! callback timing (`timing.rs`), the per-kind transport I/O counters and the open
//! servers (`io.rs`: what each transport kind counts as a read and a write), and the
//! phase, callback sequence number and stamps the blocking detector (src/watchdog.rs)
//! watches.
//!
//! Cost is the constraint (a callback costs ~120 ns in a flood): counters are relaxed
//! loads and stores, ~1 ns, not locked read-modify-writes (~8 ns), which is sound because
//! they have one writer at a time, the GIL holder. With no detector watching, a callback
//! costs a load of `flags` at its start and end, a counter increment and the sampling test;
//! with one, its start is stamped and its handle published (`watched_start`).

mod io;
mod timing;

use std::sync::atomic::{
    AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use super::handles::Handle;
use crate::clock;
use crate::gil_cell::GilCell;
use crate::pyapi;
use io::{IoCounters, KINDS};
pub(crate) use io::{OpenServer, TransportIo, TransportKind};
use timing::Timing;

/// Whether the loop keeps statistics: the `stats` feature, on by default. A build without
/// it (`cargo build --no-default-features`, `benchmarks/variant.sh REV PY nostats`) exists
/// to measure what they cost: every hook below returns at once, `stats()` reads zeros and
/// the blocking detector sees no callback.
pub(crate) const ON: bool = cfg!(feature = "stats");

/// What the loop thread is doing, for the watchdog.
pub(crate) const IDLE: u8 = 0;
pub(crate) const BUSY: u8 = 1;
pub(crate) const POLLING: u8 = 2;

/// `flags` bits: a blocking detector watches (stamp each callback's start, publish its
/// handle), and one wants the end of the current episode stamped.
const WATCHED: u8 = 1;
const END_WANTED: u8 = 2;

/// A counter written by one thread at a time (the GIL holder) and read by any.
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

/// What the watchdog reads, without the GIL.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct View {
    pub(crate) phase: u8,
    pub(crate) seq: u64,
    /// A watched callback is running (its start is `start`), rather than the loop's own
    /// work between callbacks or a callback that began before the watch.
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
    /// `WATCHED` | `END_WANTED`.
    flags: AtomicU8,
    watchers: AtomicU32,
    /// While watched: when the running callback started (ticks), stored before `running`.
    start: AtomicU64,
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
    /// When the current run (poll) began, 0 outside one: stats() counts them so far.
    run_since: Counter,
    poll_since: AtomicU64,
    /// Runs started (run_forever calls and direct `_run_once` calls).
    runs: Counter,
    /// Callbacks whose sequence number has these bits clear are timed.
    sample_mask: Counter,
    timing: GilCell<Timing>,
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
            start: AtomicU64::new(0),
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
            run_since: Counter::default(),
            poll_since: AtomicU64::new(0),
            runs: Counter::default(),
            sample_mask: Counter::default(),
            timing: GilCell::new(Timing::new()),
            io: Default::default(),
            servers: AtomicU64::new(0),
        }
    }

    #[inline]
    fn io(&self, kind: TransportKind) -> &IoCounters {
        &self.io[kind as usize]
    }

    /// A `Server` was made (through `OpenServer`, which balances it with `server_closed`).
    fn server_opened(&self) {
        if !ON {
            return;
        }
        self.servers.fetch_add(1, Relaxed);
    }

    fn server_closed(&self) {
        if !ON {
            return;
        }
        self.servers.fetch_sub(1, Relaxed);
    }

    pub(crate) fn timer_scheduled(&self) {
        if !ON {
            return;
        }
        self.timers_scheduled.add(1);
    }

    pub(crate) fn timer_cancelled(&self) {
        if !ON {
            return;
        }
        self.timers_cancelled.add(1);
    }

    #[inline]
    pub(crate) fn timer_fired(&self) {
        if !ON {
            return;
        }
        self.timers_fired.add(1);
    }

    /// One iteration with `ready` handles to run.
    #[inline]
    pub(crate) fn iteration(&self, ready: usize) {
        if !ON {
            return;
        }
        self.iterations.add(1);
        if ready as u64 > self.max_ready.get() {
            self.max_ready.set(ready as u64);
        }
    }

    #[inline]
    pub(crate) fn io_events(&self, n: u64) {
        if !ON {
            return;
        }
        self.io_events.add(n);
    }

    pub(crate) fn set_thread(&self, ident: Option<u64>) {
        self.thread_ident.store(ident.unwrap_or(0), Relaxed);
    }

    /// `run_forever` (or one `_run_once`) begins; returns its start for `run_end`.
    pub(crate) fn run_start(&self) -> u64 {
        if !ON {
            return 0;
        }
        self.phase.store(BUSY, Relaxed);
        self.runs.add(1);
        // The first callbacks of a run are timed until two show how long they take.
        self.sample_mask.set(0);
        let now = clock::ticks();
        self.run_since.set(now);
        now
    }

    pub(crate) fn run_end(&self, py: Python<'_>, start: u64) {
        if !ON {
            return;
        }
        self.check_end();
        self.phase.store(IDLE, Relaxed);
        let now = clock::ticks();
        self.run_ticks.add(now.saturating_sub(start));
        self.run_since.set(0);
        // The untimed callbacks since the last timed one have no timed one after them
        // to reveal a slow one among them: the end of the run does.
        let (seq, poll, run) = (self.callbacks.get(), self.poll_ticks.get(), self.runs.get());
        self.timing.borrow_mut(py).run_ended(now, seq, poll, run);
    }

    /// A poll that may block begins; returns its start for `poll_end`.
    #[inline]
    pub(crate) fn poll_start(&self) -> u64 {
        if !ON {
            return 0;
        }
        self.check_end();
        self.phase.store(POLLING, Relaxed);
        let now = clock::ticks();
        // Stored for another thread's stats() only: the loop's own cannot run mid-poll.
        self.poll_since.store(now, Relaxed);
        now
    }

    #[inline]
    pub(crate) fn poll_end(&self, start: u64) {
        if !ON {
            return;
        }
        self.phase.store(BUSY, Relaxed);
        self.poll_since.store(0, Relaxed);
        self.poll_ticks.add(clock::ticks().saturating_sub(start));
    }

    /// The callback of `handle` is about to run: counts it, publishes it if a watchdog
    /// watches, and returns its start (ticks) if it is one to time.
    #[inline]
    pub(crate) fn callback_start(&self, handle: &Bound<'_, Handle>) -> Option<u64> {
        if !ON {
            return None;
        }
        let flags = self.flags.load(Relaxed);
        let stamp = if flags != 0 {
            self.watched_start(flags, handle)
        } else {
            0
        };
        let seq = self.callbacks.get().wrapping_add(1);
        self.callbacks.set(seq);
        if seq & self.sample_mask.get() != 0 {
            return None;
        }
        Some(if stamp != 0 { stamp } else { clock::ticks() })
    }

    #[cold]
    fn watched_start(&self, flags: u8, handle: &Bound<'_, Handle>) -> u64 {
        let now = clock::ticks();
        if flags & END_WANTED != 0 {
            self.mark_end(now);
        }
        if flags & WATCHED != 0 {
            self.start.store(now, Relaxed);
            // Release, with `view`'s Acquire: a watchdog that sees this handle sees its start.
            self.running.store(handle.as_ptr() as usize, Release);
        }
        now
    }

    /// The callback that `callback_start` announced has returned.
    #[inline]
    pub(crate) fn callback_end(&self) {
        if !ON {
            return;
        }
        if self.flags.load(Relaxed) != 0 {
            self.watched_end();
        }
    }

    #[cold]
    fn watched_end(&self) {
        self.running.store(0, Relaxed);
        self.check_end();
    }

    /// Records a timed callback (started at `start`), and names it if it (or an untimed
    /// one just before it) is the slowest so far. Call after `callback_end`, before the
    /// handle is recycled.
    #[cold]
    pub(crate) fn timed(&self, handle: &Bound<'_, Handle>, start: u64) {
        if !ON {
            return;
        }
        let py = handle.py();
        let d = clock::ticks().saturating_sub(start);
        let (seq, poll, run) = (self.callbacks.get(), self.poll_ticks.get(), self.runs.get());
        let outcome = self.timing.borrow_mut(py).record(start, d, seq, poll, run);
        self.sample_mask.set(outcome.mask);
        if let Some((ticks, untimed_before)) = outcome.slowest {
            // Named now, while the handle still holds its callback; Python code runs here,
            // so no borrow is held across it.
            let what = describe(handle.as_any());
            self.timing
                .borrow_mut(py)
                .set_slowest(ticks, untimed_before, what);
        }
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

    /// The watchdog's view of the loop thread.
    pub(crate) fn view(&self) -> View {
        View {
            phase: self.phase.load(Relaxed),
            seq: self.callbacks.get(),
            in_callback: self.running.load(Acquire) != 0,
            start: self.start.load(Relaxed),
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

    /// The handle whose callback is running, if a watched one is. Call with the GIL held.
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
            transports.set_item(name, self.io(kind).to_dict(py)?)?;
        }
        d.set_item("transports", transports)?;
        d.set_item("servers", self.servers.load(Relaxed))?;
        // A run (and a poll, seen from another thread) in progress counts so far.
        let now = clock::ticks();
        let so_far = |since: u64| {
            if since == 0 {
                0
            } else {
                now.saturating_sub(since)
            }
        };
        let run = self.run_ticks.get() + so_far(self.run_since.get());
        let poll = (self.poll_ticks.get() + so_far(self.poll_since.load(Relaxed))).min(run);
        d.set_item("poll_seconds", poll as f64 / hz)?;
        d.set_item("busy_seconds", (run - poll) as f64 / hz)?;
        self.timing.borrow(py).fill(py, &d)?;
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
