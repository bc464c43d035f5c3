//! What the loop shows the cycle collector: its traverse and clear, and the handles of
//! a long ready queue, which wait untracked.
//!
//! A burst of `call_soon_threadsafe` from other threads can queue 10^5 handles before
//! the loop runs them (4 producer threads, 286k at once, measured). Tracked, each of
//! them and its context copy is walked by every young collection, promoted, and their
//! numbers trigger full collections: 2.8× the CPU per call in a burst of 200k. So while
//! `UNTRACK_FROM` handles wait, a plain handle `call_soon` queues is untracked, with the
//! context copy it made for itself, until it leaves the queue:
//!
//! * nothing is freed early: while only the queue holds such a handle, the loop's
//!   traverse visits its references as its own; held elsewhere too, its references
//!   count as external ones (kept alive);
//! * leaving the queue (the run step, `close()`, the loop's clear or drop), its context
//!   is tracked again at once: CPython's Context dealloc unlinks it from the GC's list
//!   without checking that it is linked. The handle itself is tracked again only if
//!   something else holds it once it has run (an exception handler kept it); held by
//!   the run step alone it is recycled empty or freed, and tracking it would make a
//!   pooled handle young again for every collection to walk;
//! * what is kept longer than asyncio keeps it: a cycle through a queued handle that
//!   something else holds too, in a loop dropped unclosed before it runs.

use std::collections::VecDeque;

use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use super::handles::Handle;
use super::State;
use crate::pyapi;

/// From this many handles waiting, a handle `call_soon` queues waits untracked.
const UNTRACK_FROM: usize = 512;

impl State {
    /// Appends a plain handle just made or re-armed to the ready queue.
    pub(super) fn queue(&mut self, handle: &Bound<'_, Handle>) {
        if self.ready.len() >= UNTRACK_FROM {
            Handle::gc_untrack_queued(handle);
            self.untracked += 1;
        }
        self.ready.push_back(handle.clone().unbind());
    }

    /// A handle left the front of the queue to run: whether it waited untracked (its
    /// context is tracked again now; the caller calls `Handle::gc_track_if_held` once
    /// it has run).
    pub(super) fn dequeued(&mut self, handle: &Bound<'_, Handle>) -> bool {
        if self.untracked == 0 || pyapi::gc_is_tracked(handle.as_any()) {
            return false;
        }
        self.untracked -= 1;
        Handle::gc_track_context(handle);
        true
    }

    /// The ready queue, taken, its handles tracked again: what else holds them must see
    /// their cycles collected, and their contexts may be freed.
    pub(super) fn take_ready(&mut self, py: Python<'_>) -> VecDeque<Py<Handle>> {
        let ready = std::mem::take(&mut self.ready);
        if std::mem::take(&mut self.untracked) > 0 {
            for h in &ready {
                Handle::gc_track(h.bind(py));
            }
        }
        ready
    }

    pub(super) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for h in &self.ready {
            if self.untracked > 0 && pyapi::untracked_and_alone(h) {
                h.get().traverse_state(visit)?;
            } else {
                visit.call(h)?;
            }
        }
        for h in self.fds.iter().chain(self.handle_pool.iter()) {
            visit.call(h)?;
        }
        for obj in self.fds.fileobjs() {
            visit.call(obj)?;
        }
        for t in self.timers.iter().chain(self.timer_pool.iter()) {
            visit.call(t)?;
        }
        for obj in [&self.task_factory, &self.debug_obj].into_iter().flatten() {
            visit.call(obj)?;
        }
        if let Some(h) = &self.current_handle {
            visit.call(h)?;
        }
        for t in &self.flush {
            visit.call(t)?;
        }
        Ok(())
    }

    /// What the GC's clear releases (dropped by the caller, once no borrow is held).
    pub(super) fn release_for_clear(&mut self, py: Python<'_>) -> impl Sized {
        (
            self.take_ready(py),
            self.timers.take_all(),
            self.fds.take_all(),
            self.task_factory.take(),
            self.debug_obj.take(),
            self.current_handle.take(),
            std::mem::take(&mut self.handle_pool),
            std::mem::take(&mut self.timer_pool),
            std::mem::take(&mut self.flush),
        )
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // Freed by reference counting with handles waiting untracked (close() and the
        // GC's clear take them first): their contexts must be tracked before they go.
        if self.untracked > 0 {
            Python::attach(|py| drop(self.take_ready(py)));
        }
    }
}
