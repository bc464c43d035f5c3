//! One loop iteration, as asyncio's `_run_once`: purge cancelled timers, poll, queue the
//! I/O callbacks and due timers, then run exactly the handles that were ready.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use super::handles::{thread_id, Handle, TimerHandle};
use super::{LoopCore, HANDLE_POOL_MAX, TIMER_POOL_MAX};
use crate::clock;
use crate::errors::os_error;
use crate::poller::{Waited, WAKER_TOKEN};
use crate::pyapi;

// asyncio caps one poll at a day (base_events.MAXIMUM_SELECT_TIMEOUT).
const MAXIMUM_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;

static FORMAT_HANDLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl LoopCore {
    pub(crate) fn run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // Cancelled timers are released before anything else: their finalizers may queue
        // callbacks, which the poll timeout below must see.
        let purged = {
            let mut trash = Vec::new();
            this.st
                .borrow_mut(py)
                .timers
                .purge_cancelled(py, &mut trash);
            trash
        };
        drop(purged);
        // Nothing deferred may wait through a poll (the list is empty unless a callback
        // raised through the run step before its writes were flushed).
        if this.has_deferred_writes(py) {
            Self::flush_writes(slf)?;
        }

        Self::poll(slf)?;

        // Timers due by now (plus the clock's resolution) join the ready queue.
        if !this.st.borrow(py).timers.is_empty() {
            let end = Self::now(slf)? + this.clock_resolution;
            // No Python code runs while due timers move over: one borrow serves them all.
            let st = &mut *this.st.borrow_mut(py);
            while let Some(timer) = st.timers.pop_due(end) {
                st.ready
                    .push_back(timer.into_bound(py).into_super().unbind());
            }
        }

        // asyncio runs only the handles that were ready at the start of this step;
        // callbacks scheduled meanwhile wait for the next iteration.
        let ntodo = this.st.borrow(py).ready.len();
        let thread = thread_id();
        let stats = &*this.stats;
        stats.iteration(ntodo);
        for _ in 0..ntodo {
            let Some(handle) = this.st.borrow_mut(py).ready.pop_front() else {
                break;
            };
            let handle = handle.into_bound(py);
            // Untracked by the GC while it waited (gc.rs)?
            let untracked = this.st.borrow_mut(py).dequeued(&handle);
            let is_timer = match handle.cast_exact::<TimerHandle>() {
                Ok(timer) => {
                    this.st.borrow_mut(py).timers.fired(py, timer);
                    true
                }
                Err(_) => false,
            };
            if !handle.get().is_cancelled(py) {
                if is_timer {
                    stats.timer_fired();
                }
                let timed = stats.callback_start(&handle);
                this.set_in_callback(thread);
                let result = if this.debug(py) {
                    Self::run_debug(slf, &handle)
                } else {
                    Handle::run(&handle)
                };
                this.set_in_callback(0);
                if untracked {
                    Handle::gc_track_if_held(&handle);
                }
                // The step's small writes go out together once its last callback returns
                // (flush.rs), or now if this one raised or the oldest has waited enough.
                let flushed =
                    if this.has_deferred_writes(py) && (result.is_err() || this.flush_due(py)) {
                        Self::flush_writes(slf)
                    } else {
                        Ok(())
                    };
                stats.callback_end();
                if let Some(start) = timed {
                    stats.timed(&handle, start);
                }
                result?;
                flushed?;
            } else if untracked {
                Handle::gc_track_if_held(&handle);
            }
            Self::recycle(this, handle);
        }
        if this.has_deferred_writes(py) {
            Self::flush_writes(slf)?;
        }
        Ok(())
    }

    /// Keeps a spent plain handle that nobody else references for the next `call_soon`.
    #[inline]
    fn recycle(this: &LoopCore, handle: Bound<'_, Handle>) {
        let py = handle.py();
        if pyapi::refcnt(handle.as_any()) != 1 || pyapi::may_have_weakrefs(handle.as_any()) {
            return;
        }
        let is_plain = handle.is_exact_instance_of::<Handle>();
        let timer = if is_plain {
            None
        } else {
            match handle.cast_exact::<TimerHandle>() {
                Ok(t) => Some(t.clone().unbind()),
                Err(_) => return,
            }
        };
        {
            let st = this.st.borrow(py);
            let full = match timer {
                None => st.handle_pool.len() >= HANDLE_POOL_MAX,
                Some(_) => st.timer_pool.len() >= TIMER_POOL_MAX,
            };
            if full {
                return;
            }
        }
        // Released before the handle is pooled: finalizers may run here.
        drop(handle.get().take_state(py));
        if let Some(t) = &timer {
            drop(t.get().take_when_object(py));
        }
        let mut st = this.st.borrow_mut(py);
        match timer {
            None => st.handle_pool.push(handle.unbind()),
            Some(t) => {
                drop(handle);
                st.timer_pool.push(t)
            }
        }
    }

    /// Polls the OS and queues the callbacks of ready fds. The GIL is released only for a
    /// blocking wait; with nothing to wait for and no fd watched, no syscall is made.
    fn poll(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(poller) = this.st.borrow(py).poller.clone() else {
            return Ok(());
        };
        // A `time()` that replaced the clock is Python code: called before the flag is
        // raised, when a timer may set the timeout. (The clock is read below.)
        let call_time = {
            let st = this.st.borrow(py);
            st.custom_time != Some(false)
                && st.ready.is_empty()
                && !st.stopping
                && !st.timers.is_empty()
        };
        let now = if call_time {
            Some(Self::now(slf)?)
        } else {
            None
        };
        // Raised before the timeout is read, and no Python code runs until the wait: a
        // thread queueing a callback (it needs the GIL) either is seen by the timeout
        // computation or sees the flag and wakes us.
        poller.set_polling(true);
        let (timeout, mut events, idle) = {
            let mut st = this.st.borrow_mut(py);
            let timeout = if !st.ready.is_empty() || st.stopping {
                Some(Duration::ZERO)
            } else if let Some(when) = st.timers.earliest() {
                // asyncio: min(max(0, when - now), MAXIMUM_SELECT_TIMEOUT).
                let secs = when - now.unwrap_or_else(clock::monotonic);
                let secs = if secs > 0.0 {
                    secs.min(MAXIMUM_SELECT_TIMEOUT)
                } else {
                    0.0
                };
                Some(Duration::from_secs_f64(secs))
            } else {
                None
            };
            (timeout, std::mem::take(&mut st.events), st.fds.is_empty())
        };
        let blocking = timeout != Some(Duration::ZERO);
        if !blocking {
            poller.set_polling(false);
        } else if let Err(err) = py.check_signals() {
            // A signal that arrived since the last callback ran has its Python handler run
            // now: once in the wait it would interrupt nothing (the stock loop's window
            // between its last bytecode and select() is as small as this one is now).
            poller.set_polling(false);
            this.st.borrow_mut(py).events = events;
            return Err(err);
        }
        let waited = if !blocking && idle {
            Ok(Waited::Events(0))
        } else if blocking {
            let started = this.stats.poll_start();
            let r = py.detach(|| poller.wait(&mut events, timeout));
            poller.set_polling(false);
            this.stats.poll_end(started);
            r
        } else {
            poller.wait(&mut events, timeout)
        };
        let result = match waited {
            Ok(Waited::Events(n)) => {
                Self::queue_io(this, py, &poller, &events[..n]);
                Ok(())
            }
            Ok(Waited::Interrupted) => py.check_signals(),
            Err(e) => Err(os_error(e)),
        };
        this.st.borrow_mut(py).events = events;
        result
    }

    fn queue_io(
        this: &LoopCore,
        py: Python<'_>,
        poller: &crate::poller::Poller,
        events: &[nix::sys::epoll::EpollEvent],
    ) {
        use nix::sys::epoll::EpollFlags;
        let st = &mut *this.st.borrow_mut(py);
        let mut fd_events = 0;
        for ev in events {
            let token = ev.data();
            if token == WAKER_TOKEN {
                poller.drain_waker();
                continue;
            }
            fd_events += 1;
            let Some(entry) = st.fds.get(token as i32) else {
                continue;
            };
            // As selectors.EpollSelector: anything but EPOLLOUT wakes the reader, anything
            // but EPOLLIN wakes the writer (so errors and hang-ups wake both).
            let flags = ev.events();
            let mut queue = |h: &Option<Py<Handle>>| {
                if let Some(h) = h {
                    if !h.get().is_cancelled(py) {
                        st.ready.push_back(h.clone_ref(py));
                    }
                }
            };
            if flags.intersects(!EpollFlags::EPOLLOUT) {
                queue(&entry.reader);
            }
            if flags.intersects(!EpollFlags::EPOLLIN) {
                queue(&entry.writer);
            }
        }
        this.stats.io_events(fd_events);
    }

    /// Runs a handle in debug mode: tracks the current handle and warns about slow
    /// callbacks, as asyncio does.
    #[cold]
    fn run_debug(slf: &Bound<'_, Self>, handle: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let previous = this
            .st
            .borrow_mut(py)
            .current_handle
            .replace(handle.clone().unbind());
        drop(previous);
        let t0 = clock::monotonic();
        let result = Handle::run(handle);
        let dt = clock::monotonic() - t0;
        let cleared = this.st.borrow_mut(py).current_handle.take();
        drop(cleared);
        result?;
        let slow: f64 = slf.getattr("slow_callback_duration")?.extract()?;
        if dt >= slow {
            let format =
                pyapi::cached_attr(py, &FORMAT_HANDLE, "asyncio.base_events", "_format_handle")?;
            let what = format.call1((handle,))?;
            pyapi::asyncio_logger(py)?
                .call_method1("warning", ("Executing %s took %.3f seconds", what, dt))?;
        }
        Ok(())
    }
}
