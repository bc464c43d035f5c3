//! The blocking detector's watchdog: a thread that watches a loop's callback sequence
//! number and phase without the GIL, and when one callback (or the loop's own work between
//! callbacks) has run past the threshold, captures the loop thread's Python stack while it
//! still blocks, waits for the episode to end and reports it with its final duration.
//!
//! The loop thread's part is in `loop_core/stats`: the sequence number is the callback
//! counter, and while a detector watches, each callback's start is stamped (one TSC read)
//! and its handle published; the end of an episode is stamped only when a watchdog asks.
//! The watchdog wakes every `interval` (a tenth of the threshold): reports come at most
//! that long after the threshold is passed, with exact durations, except for what has no
//! start stamp (the loop's own work between callbacks, the callback running when the watch
//! began), timed from the watchdog's first sighting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::clock;
use crate::loop_core::stats::{LoopStats, View, BUSY};
use crate::loop_core::LoopCore;

/// The stop request, and the condvar that cuts a watchdog's sleep short for it.
struct Control {
    stop: Mutex<bool>,
    wake: Condvar,
}

impl Control {
    /// Sleeps for `d` unless stopped; returns whether a stop was requested.
    fn sleep(&self, d: Duration) -> bool {
        let guard = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, d, |stop| !*stop)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    fn request_stop(&self) {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_all();
    }
}

/// What the thread needs: the loop's shared statistics and the Python callables of the
/// detector that owns it.
struct Watch {
    stats: Arc<LoopStats>,
    ctl: Arc<Control>,
    /// Seconds.
    threshold: f64,
    interval: Duration,
    /// `capture(blocking, handle, thread_ident, seconds_so_far)`: a snapshot, with the GIL.
    capture: Py<PyAny>,
    /// `report(snapshot, seconds, ongoing)`.
    report: Py<PyAny>,
}

impl Watch {
    fn run(self) {
        let hz = clock::ticks_per_second();
        let threshold = (self.threshold * hz) as u64;
        // The first sighting of the current (callback, watched) state: the start of what
        // has no stamp (the loop's own work between callbacks, a callback that began
        // before the watch), to within one interval.
        let mut seen: Option<(u64, bool, u64)> = None;
        while !self.ctl.sleep(self.interval) {
            let v = self.stats.view();
            if v.phase != BUSY {
                seen = None;
                continue;
            }
            let now = clock::ticks();
            let first = match seen {
                Some((seq, inside, t)) if seq == v.seq && inside == v.in_callback => t,
                _ => {
                    seen = Some((v.seq, v.in_callback, now));
                    now
                }
            };
            let since = if v.in_callback {
                v.start.min(now)
            } else {
                first
            };
            if now - since >= threshold {
                self.episode(v, since, hz);
                seen = None;
            }
        }
    }

    /// The loop has been busy with the state `v` since `since` (ticks), past the
    /// threshold: capture, wait for the end, report.
    fn episode(&self, v: View, since: u64, hz: f64) {
        self.stats.want_end();
        let still = || {
            let now = self.stats.view();
            now.phase == BUSY && now.seq == v.seq && now.in_callback == v.in_callback
        };
        let elapsed = |until: u64| until.saturating_sub(since) as f64 / hz;
        // Waits for the GIL: at once if the callback released it (time.sleep, I/O), within
        // the switch interval if it runs Python code, only when it returns if it is a C
        // call that holds it (then `blocking` is false and the snapshot has no stack).
        let snapshot = Python::attach(|py| {
            let blocking = still();
            let handle = if blocking {
                self.stats.running_handle(py)
            } else {
                None
            };
            let args = (
                blocking,
                handle,
                self.stats.thread_ident(),
                elapsed(clock::ticks()),
            );
            self.call(py, &self.capture, args)
        });
        let mut stopped = false;
        while still() {
            if self.ctl.sleep(self.interval) {
                stopped = true;
                break;
            }
        }
        let ongoing = stopped && still();
        let end = match self.stats.ended_at() {
            Some(t) if !ongoing && t >= since => t,
            _ => clock::ticks(),
        };
        let duration = elapsed(end);
        Python::attach(|py| {
            let snapshot = snapshot.unwrap_or_else(|| py.None());
            self.call(py, &self.report, (snapshot, duration, ongoing));
        });
    }

    /// Calls a detector callable; its errors (there should be none) go to stderr.
    fn call<'py>(
        &self,
        py: Python<'py>,
        f: &Py<PyAny>,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> Option<Py<PyAny>> {
        match f.bind(py).call1(args) {
            Ok(v) => Some(v.unbind()),
            Err(e) => {
                e.print(py);
                None
            }
        }
    }
}

/// The native half of `ferroloop.detect_blocking()`'s detector: owns the watchdog thread.
#[pyclass(name = "Watchdog", module = "ferroloop._core", frozen)]
pub struct Watchdog {
    stats: Arc<LoopStats>,
    /// Counted among the loop's watchers (callback starts are stamped while any is).
    watching: AtomicBool,
    ctl: Arc<Control>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The process that started the thread: a forked child has no such thread to join.
    pid: u32,
}

#[pymethods]
impl Watchdog {
    #[new]
    fn new(
        loop_: &Bound<'_, LoopCore>,
        threshold: f64,
        interval: f64,
        capture: Py<PyAny>,
        report: Py<PyAny>,
    ) -> PyResult<Self> {
        let valid = |x: f64| x.is_finite() && x > 0.0;
        if !valid(threshold) || !valid(interval) {
            return Err(PyValueError::new_err(
                "threshold and interval must be positive and finite",
            ));
        }
        let stats = Arc::clone(&loop_.get().stats);
        let ctl = Arc::new(Control {
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let watch = Watch {
            stats: Arc::clone(&stats),
            ctl: Arc::clone(&ctl),
            threshold,
            interval: Duration::from_secs_f64(interval),
            capture,
            report,
        };
        let thread = std::thread::Builder::new()
            .name("ferroloop-watch".into())
            .spawn(move || watch.run())
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        stats.watch_start();
        Ok(Watchdog {
            stats,
            watching: AtomicBool::new(true),
            ctl,
            thread: Mutex::new(Some(thread)),
            pid: std::process::id(),
        })
    }

    /// Stops the thread and waits for it (an episode in progress is reported first). From
    /// the watchdog thread itself (a report callback), only asks it to stop.
    fn stop(&self, py: Python<'_>) {
        self.ctl.request_stop();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            if self.pid != std::process::id() {
                // After fork() the thread does not exist here, and its handle must not be
                // joined or detached.
                std::mem::forget(thread);
            } else if thread.thread().id() != std::thread::current().id() {
                // Without the GIL: the thread may be waiting for it to finish a report.
                let _ = py.detach(|| thread.join());
            }
        }
        // After the join: an episode in progress is still watched while it is reported.
        self.unwatch();
    }

    /// Whether the watchdog thread is running.
    fn is_alive(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }
}

impl Watchdog {
    fn unwatch(&self) {
        if self.watching.swap(false, Ordering::Relaxed) {
            self.stats.unwatch();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.unwatch();
        // Not joined here (drop may run without a way to release the GIL): the thread
        // sees the request at its next wake-up and ends.
        self.ctl.request_stop();
    }
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Watchdog>()
}
