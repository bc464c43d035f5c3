//! The timer heap: earliest deadline first, FIFO among equal deadlines, with asyncio's
//! lazy deletion of cancelled timers.

use dary_heap::QuaternaryHeap as BinaryHeap;
use std::cmp::Ordering;

use pyo3::prelude::*;

use super::handles::TimerHandle;

// asyncio compacts the heap once more than 100 timers are scheduled and over half of
// them are cancelled (base_events._MIN_SCHEDULED_TIMER_HANDLES and friends).
const MIN_SCHEDULED_FOR_COMPACTION: usize = 100;

pub(crate) struct TimerEntry {
    when: f64,
    seq: u64,
    pub(crate) handle: Py<TimerHandle>,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    // Reversed: BinaryHeap is a max-heap and we want the earliest (then oldest) on top.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .when
            .total_cmp(&self.when)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<TimerEntry>,
    seq: u64,
    /// Cancelled timers still in the heap (asyncio's `_timer_cancelled_count`).
    pub(crate) cancelled: usize,
}

fn is_cancelled(py: Python<'_>, h: &Py<TimerHandle>) -> bool {
    h.bind(py).as_super().get().is_cancelled(py)
}

fn unschedule(py: Python<'_>, h: &Py<TimerHandle>) {
    *h.get().scheduled.borrow_mut(py) = false;
}

impl Timers {
    pub(crate) fn push(&mut self, py: Python<'_>, when: f64, handle: Py<TimerHandle>) {
        *handle.get().scheduled.borrow_mut(py) = true;
        self.seq += 1;
        self.heap.push(TimerEntry {
            when,
            seq: self.seq,
            handle,
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Drops cancelled timers, from the top or (when they pile up) from the whole heap.
    /// Removed handles go to `trash`, to be released after the caller's borrow ends.
    pub(crate) fn purge_cancelled(&mut self, py: Python<'_>, trash: &mut Vec<Py<TimerHandle>>) {
        let n = self.heap.len();
        if n > MIN_SCHEDULED_FOR_COMPACTION && self.cancelled * 2 > n {
            let mut kept = Vec::with_capacity(n - self.cancelled);
            for entry in std::mem::take(&mut self.heap).into_vec() {
                if is_cancelled(py, &entry.handle) {
                    unschedule(py, &entry.handle);
                    trash.push(entry.handle);
                } else {
                    kept.push(entry);
                }
            }
            self.heap = BinaryHeap::from(kept);
            self.cancelled = 0;
            return;
        }
        while let Some(top) = self.heap.peek() {
            if !is_cancelled(py, &top.handle) {
                break;
            }
            if let Some(entry) = self.heap.pop() {
                self.cancelled = self.cancelled.saturating_sub(1);
                unschedule(py, &entry.handle);
                trash.push(entry.handle);
            }
        }
    }

    pub(crate) fn earliest(&self) -> Option<f64> {
        self.heap.peek().map(|e| e.when)
    }

    /// Pops the earliest timer if it is due before `end`. The handle itself is not
    /// touched (one cache miss fewer per timer): `fired` clears its scheduled flag when
    /// the run step reaches it.
    pub(crate) fn pop_due(&mut self, end: f64) -> Option<Py<TimerHandle>> {
        if self.heap.peek()?.when >= end {
            return None;
        }
        self.heap.pop().map(|entry| entry.handle)
    }

    /// A popped timer reached the run step: it is no longer scheduled, and if it was
    /// cancelled while still counted as scheduled, it leaves the cancelled count.
    pub(crate) fn fired(&mut self, py: Python<'_>, timer: &Bound<'_, TimerHandle>) {
        let was_scheduled = std::mem::replace(&mut *timer.get().scheduled.borrow_mut(py), false);
        if was_scheduled && timer.as_super().get().is_cancelled(py) {
            self.cancelled = self.cancelled.saturating_sub(1);
        }
    }

    pub(crate) fn take_all(&mut self) -> Vec<TimerEntry> {
        self.cancelled = 0;
        std::mem::take(&mut self.heap).into_vec()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Py<TimerHandle>> {
        self.heap.iter().map(|e| &e.handle)
    }
}
