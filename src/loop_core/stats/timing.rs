//! Callback timing for `stats()`: sampled reads of the time-stamp counter, a fixed
//! log-linear histogram, and the slowest callback.
//!
//! A callback costs ~120 ns in a flood and a TSC read ~15 ns in context here (timing every
//! callback cost 10% of the flood benchmark), so callbacks are timed one in 64 while they
//! are short (start to start, polls included, under 4 µs): then two TSC reads per 64
//! callbacks. While they are longer every callback is timed, which then costs under 1%.
//! A slow callback among short untimed ones shows in the window between two timed ones:
//! if that window, less its polls and the timed callback, is over 1 ms and longer than the
//! slowest so far, it is recorded as the slowest, as an upper bound, named after the
//! callback timed next ("one of the N callbacks before …"), and every callback is timed
//! for the next `PROBATION`, so that a recurring one is caught by name.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::clock;

/// One in `SAMPLE_MASK + 1` callbacks is timed while they are short.
pub(super) const SAMPLE_MASK: u64 = 63;
/// Start-to-start time per callback from which every callback is timed.
const FULL_TIMING_NS: f64 = 4000.0;
/// `FULL_TIMING_NS`, or FERROLOOP_STATS_FULL_TIMING_NS for a run under a simulator that
/// slows every callback down alike (benchmarks/instructions.py: valgrind runs code ~50×
/// slower, which would time every callback and count instructions no real run spends).
fn full_timing_ns() -> f64 {
    std::env::var("FERROLOOP_STATS_FULL_TIMING_NS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(FULL_TIMING_NS)
}

/// An untimed stretch this long holds a slow callback worth reporting.
const HIDDEN_MIN_NS: f64 = 1e6;
/// Callbacks timed one by one after an untimed slow one.
const PROBATION: u32 = 1024;

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

/// The slowest callback: its duration (ticks), how asyncio would name it, and whether it
/// was timed (else the duration is an upper bound).
struct Slowest {
    ticks: u64,
    text: String,
    timed: bool,
}

/// The timing state, touched by the loop thread only (in a `GilCell`).
pub(super) struct Timing {
    hist: Box<[u64; BUCKETS]>,
    count: u64,
    max: u64,
    slowest: Option<Slowest>,
    /// The last timed callback: start, sequence number, duration, poll ticks by then, and
    /// the run it was in (a window never spans the idle time between two runs).
    last_start: u64,
    last_seq: u64,
    last_d: u64,
    last_poll: u64,
    last_run: u64,
    probation: u32,
    full_timing_ticks: u64,
    hidden_min_ticks: u64,
}

/// What one timed callback brings: the mask for the next ones, and whether it (or the
/// untimed stretch before it, `Some(n)` callbacks) is the new slowest, with its ticks.
pub(super) struct Outcome {
    pub(super) mask: u64,
    pub(super) slowest: Option<(u64, Option<u64>)>,
}

impl Timing {
    pub(super) fn new() -> Self {
        let per_ns = clock::ticks_per_ns_rough();
        Timing {
            hist: Box::new([0; BUCKETS]),
            count: 0,
            max: 0,
            slowest: None,
            last_start: 0,
            last_seq: 0,
            last_d: 0,
            last_poll: 0,
            last_run: 0,
            probation: 0,
            full_timing_ticks: (full_timing_ns() * per_ns) as u64,
            hidden_min_ticks: (HIDDEN_MIN_NS * per_ns) as u64,
        }
    }

    /// Callback `seq` of run `run` took `d` ticks from `start`; `poll` is the loop's
    /// poll time so far.
    pub(super) fn record(&mut self, start: u64, d: u64, seq: u64, poll: u64, run: u64) -> Outcome {
        self.hist[bucket(d)] += 1;
        self.count += 1;
        self.max = self.max.max(d);
        let slowest_so_far = self.slowest.as_ref().map_or(0, |s| s.ticks);
        let mut hidden = None;
        let mut full = true;
        if self.last_seq != 0 && self.last_run == run {
            let n = seq.saturating_sub(self.last_seq).max(1);
            let window = start.saturating_sub(self.last_start);
            let stretch = window
                .saturating_sub(self.last_d)
                .saturating_sub(poll.saturating_sub(self.last_poll));
            if n > 1 && stretch >= self.hidden_min_ticks && stretch > slowest_so_far.max(d) {
                hidden = Some((stretch, n - 1));
                self.probation = PROBATION;
            }
            full = window / n >= self.full_timing_ticks || self.probation > 0;
        }
        self.probation = self.probation.saturating_sub(1);
        (self.last_start, self.last_seq, self.last_d) = (start, seq, d);
        (self.last_poll, self.last_run) = (poll, run);
        let slowest = if d > slowest_so_far && hidden.is_none() {
            Some((d, None))
        } else {
            hidden.map(|(ticks, n)| (ticks, Some(n)))
        };
        Outcome {
            mask: if full { 0 } else { SAMPLE_MASK },
            slowest,
        }
    }

    /// A run ended at `now` after callback `seq`: a slow one among those run untimed since
    /// the last timed one is recorded (as an upper bound) if their stretch shows one.
    pub(super) fn run_ended(&mut self, now: u64, seq: u64, poll: u64, run: u64) {
        if self.last_seq == 0 || self.last_run != run || seq <= self.last_seq {
            return;
        }
        let stretch = now
            .saturating_sub(self.last_start)
            .saturating_sub(self.last_d)
            .saturating_sub(poll.saturating_sub(self.last_poll));
        let slowest_so_far = self.slowest.as_ref().map_or(0, |s| s.ticks);
        if stretch >= self.hidden_min_ticks && stretch > slowest_so_far {
            let n = seq - self.last_seq;
            self.slowest = Some(Slowest {
                ticks: stretch,
                text: format!("one of the last {n} untimed callbacks before the loop stopped"),
                timed: false,
            });
        }
        // The next run starts a window of its own.
        self.last_seq = 0;
    }

    /// Names the new slowest callback (from `handle`, the callback just timed).
    pub(super) fn set_slowest(&mut self, ticks: u64, untimed_before: Option<u64>, what: String) {
        let text = match untimed_before {
            None => what,
            Some(n) => format!("one of the {n} untimed callbacks before {what}"),
        };
        self.slowest = Some(Slowest {
            ticks,
            text,
            timed: untimed_before.is_none(),
        });
    }

    pub(super) fn fill<'py>(&self, py: Python<'py>, d: &Bound<'py, PyDict>) -> PyResult<()> {
        let hz = clock::ticks_per_second();
        let secs = |ticks: u64| ticks as f64 / hz;
        let quantile = |q: f64| -> f64 {
            if self.count == 0 {
                return 0.0;
            }
            let rank = ((q * self.count as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, n) in self.hist.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return bucket_range(i).1.min(self.max as f64) / hz;
                }
            }
            secs(self.max)
        };
        let durations = PyDict::new(py);
        durations.set_item("count", self.count)?;
        durations.set_item("max", secs(self.max))?;
        durations.set_item("p50", quantile(0.5))?;
        durations.set_item("p99", quantile(0.99))?;
        let hist = PyList::empty(py);
        for (i, &n) in self.hist.iter().enumerate() {
            if n != 0 {
                let (lo, hi) = bucket_range(i);
                hist.append((lo / hz, hi / hz, n))?;
            }
        }
        durations.set_item("histogram", hist)?;
        d.set_item("callback_durations", durations)?;
        match &self.slowest {
            Some(s) => {
                let item = PyDict::new(py);
                item.set_item("repr", &s.text)?;
                item.set_item("seconds", secs(s.ticks))?;
                item.set_item("timed", s.timed)?;
                d.set_item("slowest_callback", item)?;
            }
            None => d.set_item("slowest_callback", py.None())?,
        }
        Ok(())
    }
}
