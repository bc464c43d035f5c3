//! The loop's clock: CLOCK_MONOTONIC, the clock behind `time.monotonic()`.

use nix::time::{clock_gettime, ClockId};

/// Seconds on the monotonic clock, computed as CPython computes `time.monotonic()`
/// (integer nanoseconds divided by 1e9) so the two clocks compare equal.
#[inline]
pub fn monotonic() -> f64 {
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() * 1_000_000_000 + ts.tv_nsec()) as f64 / 1e9,
        // CLOCK_MONOTONIC cannot fail on Linux; fall back to a clock that cannot either.
        Err(_) => std::time::UNIX_EPOCH
            .elapsed()
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
    }
}

/// Resolution of CLOCK_MONOTONIC, as `time.get_clock_info('monotonic').resolution`.
pub fn resolution() -> f64 {
    nix::time::clock_getres(ClockId::CLOCK_MONOTONIC)
        .map(|ts| ts.tv_sec() as f64 + ts.tv_nsec() as f64 * 1e-9)
        .unwrap_or(1e-9)
}
