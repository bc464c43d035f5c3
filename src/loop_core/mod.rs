//! `LoopCore`: the Rust half of `ferroloop.Loop` — ready queue, timers, fd watchers,
//! task creation — and the `_core` module's registration.

pub(crate) mod fds;
pub(crate) mod handles;
mod run;
pub(crate) mod stats;
mod timers;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyInt, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::clock;
use crate::errors::{closed_error, fileobj_to_fd, os_error};
use crate::gil_cell::GilCell;
use crate::poller::Poller;
use crate::pyapi;
use crate::sock_ops::{Op, SockCall};
use fds::{Dir, Fds};
use handles::{Handle, HandleState, TimerHandle};
use stats::LoopStats;
use timers::Timers;

pub(crate) struct State {
    ready: VecDeque<Py<Handle>>,
    timers: Timers,
    fds: Fds,
    poller: Option<Arc<Poller>>,
    events: Vec<nix::sys::epoll::EpollEvent>,
    closed: bool,
    stopping: bool,
    debug: bool,
    thread_id: Option<u64>,
    current_handle: Option<Py<Handle>>,
    task_factory: Option<Py<PyAny>>,
    /// Spent handles that nobody else referenced, re-armed by the next `call_soon`
    /// instead of allocating (uvloop keeps a freelist for the same reason).
    handle_pool: Vec<Py<Handle>>,
    /// The same for fired timers.
    timer_pool: Vec<Py<TimerHandle>>,
}

/// The native core of the event loop; `ferroloop.Loop` subclasses it.
#[pyclass(name = "LoopCore", module = "ferroloop._core", subclass, frozen)]
pub struct LoopCore {
    st: GilCell<State>,
    clock_resolution: f64,
    /// Shared with the loop's transports and blocking detectors.
    pub(crate) stats: Arc<LoopStats>,
}

/// Spent handles kept for reuse: enough for a burst of 10k callbacks in one iteration
/// (a callback flood, or done callbacks of thousands of connections) to run without
/// allocating, which also spares the collector the young-object traversals new handles
/// cause. At most ~2 MB per loop, kept for the loop's life.
const HANDLE_POOL_MAX: usize = 16384;
/// Fired timers kept for reuse.
const TIMER_POOL_MAX: usize = 4096;

static FUTURES_MODULE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TASKS_MODULE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Which keywords `create_task` passes on to a task factory, by interpreter version.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TaskKwargs {
    /// Up to 3.13.2: only `name` and `context`, the factory gets `context` alone.
    Legacy,
    /// 3.13.4–3.13.x: any keyword, `name` set afterwards, `context` only when not None.
    NameAfter,
    /// 3.13.3 and 3.14+: every keyword as given.
    PassAll,
}

impl TaskKwargs {
    fn of(py: Python<'_>) -> Self {
        let v = pyapi::version(py);
        if v >= (3, 14, 0) || v == (3, 13, 3) {
            TaskKwargs::PassAll
        } else if v >= (3, 13, 4) {
            TaskKwargs::NameAfter
        } else {
            TaskKwargs::Legacy
        }
    }
}

/// `d.pop(key, None)`.
fn pop_item<'py>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    let item = d.get_item(key)?;
    if item.is_some() {
        d.del_item(key)?;
    }
    Ok(item)
}

impl LoopCore {
    #[inline]
    pub(crate) fn debug(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).debug
    }

    pub(crate) fn timer_cancelled(&self, py: Python<'_>) {
        self.st.borrow_mut(py).timers.cancelled += 1;
        self.stats.timer_cancelled();
    }

    #[inline]
    fn check_closed(&self, py: Python<'_>) -> PyResult<()> {
        if self.st.borrow(py).closed {
            return Err(closed_error());
        }
        Ok(())
    }

    /// Builds a handle for `callback(*args)` in `context` (a copy of the current one if
    /// None), with the debug-mode checks asyncio makes on the way.
    fn new_handle(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
        method: Option<&str>,
    ) -> PyResult<HandleState> {
        let py = slf.py();
        let debug = slf.get().debug(py);
        let mut source_traceback = None;
        if debug {
            if let Some(method) = method {
                if method != "call_soon_threadsafe" {
                    slf.call_method0("_check_thread")?;
                }
                slf.call_method1("_check_callback", (callback, method))?;
            }
            source_traceback = Some(handles::source_traceback(py)?);
        }
        let context = match context {
            Some(c) if !c.is_none() => c.clone().unbind(),
            _ => pyapi::copy_context(py)?.unbind(),
        };
        Ok(HandleState::new(
            callback.clone().unbind(),
            args.clone().unbind(),
            context,
            slf.clone().into_any().unbind(),
            source_traceback,
        ))
    }

    /// A handle for `state`: a recycled one if the pool has any, else a new one.
    fn handle_for(slf: &Bound<'_, Self>, state: HandleState) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let pooled = slf.get().st.borrow_mut(py).handle_pool.pop();
        match pooled {
            Some(handle) => {
                // Recycled handles are empty: nothing to release from the old state.
                let _empty = handle.get().rearm(py, state);
                Ok(handle)
            }
            None => Py::new(py, Handle::new(state)),
        }
    }

    fn schedule_soon(slf: &Bound<'_, Self>, state: HandleState) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let handle = Self::handle_for(slf, state)?;
        slf.get()
            .st
            .borrow_mut(py)
            .ready
            .push_back(handle.clone_ref(py));
        Ok(handle)
    }

    fn schedule_at(
        slf: &Bound<'_, Self>,
        when: f64,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
        method: &str,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        slf.get().check_closed(py)?;
        let base = Self::new_handle(slf, callback, args, context, Some(method))?;
        let pooled = slf.get().st.borrow_mut(py).timer_pool.pop();
        let timer = match pooled {
            Some(timer) => {
                let _empty = TimerHandle::rearm(timer.bind(py), base, when);
                timer
            }
            None => Py::new(py, TimerHandle::new_init(Handle::new(base), when))?,
        };
        slf.get()
            .st
            .borrow_mut(py)
            .timers
            .push(py, when, timer.clone_ref(py));
        slf.get().stats.timer_scheduled();
        Ok(timer)
    }

    pub(crate) fn add_io(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        dir: Dir,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        slf.get().check_closed(slf.py())?;
        Self::add_io_fd(slf, fileobj_to_fd(fd)?, callback, args, dir, false, context)
    }

    /// Watches `fd` for `dir` with a new handle for `callback(*args)`; the handle it
    /// replaces, if any, is cancelled (asyncio's `_add_reader`/`_add_writer`).
    /// `sock_call`: the callback is a socket call (see `Fds`). `context`: the one the
    /// callback runs in, a copy of the current one if None.
    pub(crate) fn add_io_fd(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        dir: Dir,
        sock_call: bool,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        slf.get().check_closed(py)?;
        let state = Self::new_handle(slf, callback, args, context, None)?;
        let handle = Self::handle_for(slf, state)?;
        let old = {
            let mut st = slf.get().st.borrow_mut(py);
            let poller = st.poller.clone().ok_or_else(closed_error)?;
            st.fds
                .add(&poller, fd, dir, handle.clone_ref(py), sock_call)
                .map_err(os_error)?
        };
        if let Some(old) = old {
            Handle::do_cancel(old.bind(py))?;
        }
        Ok(handle)
    }

    /// Whether the watcher of `fd` for `dir` calls `owner`.
    fn watched_by(&self, py: Python<'_>, fd: RawFd, dir: Dir, owner: &Bound<'_, PyAny>) -> bool {
        self.st.borrow(py).fds.get(fd).is_some_and(|e| {
            let slot = match dir {
                Dir::Read => &e.reader,
                Dir::Write => &e.writer,
            };
            slot.as_ref()
                .is_some_and(|h| h.get().callback_is(py, owner))
        })
    }

    /// A socket call finished reading: its reader goes, its one-shot registration stays
    /// parked for the next call (see `Fds`). Nothing if `owner` no longer reads `fd`.
    pub(crate) fn park_reader(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        owner: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        Self::drop_watcher_of(slf, fd, Dir::Read, owner, |fds, poller| {
            fds.park_reader(poller, fd)
        })
    }

    /// Takes `owner`'s watcher of `fd` for `dir` out of the registry with `take` (which
    /// updates the poller), then cancels it. Nothing if the watcher there is someone
    /// else's by now.
    fn drop_watcher_of(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        dir: Dir,
        owner: &Bound<'_, PyAny>,
        take: impl FnOnce(&mut Fds, &Poller) -> nix::Result<Option<Py<Handle>>>,
    ) -> PyResult<()> {
        let py = slf.py();
        if !slf.get().watched_by(py, fd, dir, owner) {
            return Ok(());
        }
        let old = {
            let mut st = slf.get().st.borrow_mut(py);
            let Some(poller) = st.poller.clone() else {
                return Ok(());
            };
            take(&mut st.fds, &poller).map_err(os_error)?
        };
        if let Some(old) = old {
            Handle::do_cancel(old.bind(py))?;
        }
        Ok(())
    }

    /// A socket call woke for nothing (spurious readiness): re-arm its one-shot read.
    pub(crate) fn rearm_reader(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        owner: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        if !slf.get().watched_by(py, fd, Dir::Read, owner) {
            return Ok(());
        }
        let mut st = slf.get().st.borrow_mut(py);
        let Some(poller) = st.poller.clone() else {
            return Ok(());
        };
        st.fds.rearm(&poller, fd).map_err(os_error)
    }

    /// Stops watching `fd` for `dir` if the watcher there calls `owner` (so an operation
    /// that finished, or was cancelled, never removes a watcher installed after it).
    pub(crate) fn remove_io_owned_by(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        dir: Dir,
        owner: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        Self::drop_watcher_of(slf, fd, dir, owner, |fds, poller| {
            fds.remove(poller, fd, dir)
        })
    }

    pub(crate) fn remove_io(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        dir: Dir,
    ) -> PyResult<bool> {
        let py = slf.py();
        if slf.get().st.borrow(py).closed {
            return Ok(false);
        }
        let fd = fileobj_to_fd(fd)?;
        let old = {
            let mut st = slf.get().st.borrow_mut(py);
            let Some(poller) = st.poller.clone() else {
                return Ok(false);
            };
            st.fds.remove(&poller, fd, dir).map_err(os_error)?
        };
        match old {
            Some(old) => {
                old.bind(py).call_method0("cancel")?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let poller = Poller::new().map_err(os_error)?;
        Ok(LoopCore {
            st: GilCell::new(State {
                ready: VecDeque::with_capacity(64),
                timers: Timers::default(),
                fds: Fds::default(),
                poller: Some(Arc::new(poller)),
                events: vec![nix::sys::epoll::EpollEvent::empty(); 256],
                closed: false,
                stopping: false,
                debug: false,
                thread_id: None,
                current_handle: None,
                task_factory: None,
                handle_pool: Vec::new(),
                timer_pool: Vec::new(),
            }),
            clock_resolution: clock::resolution(),
            stats: Arc::new(LoopStats::new()),
        })
    }

    /// The loop's clock: `time.monotonic()`.
    fn time(&self) -> f64 {
        clock::monotonic()
    }

    #[pyo3(signature = (callback, *args, context=None))]
    pub(crate) fn call_soon(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        slf.get().check_closed(slf.py())?;
        let handle = Self::new_handle(slf, callback, args, context, Some("call_soon"))?;
        Self::schedule_soon(slf, handle)
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        slf.get().check_closed(py)?;
        let handle = Self::new_handle(slf, callback, args, context, Some("call_soon_threadsafe"))?;
        let handle = Self::schedule_soon(slf, handle)?;
        handle.get().set_threadsafe(py);
        if let Some(poller) = &slf.get().st.borrow(py).poller {
            poller.wake();
        }
        Ok(handle)
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let now = clock::monotonic();
        // asyncio computes `self.time() + delay`: anything that adds to a float goes,
        // anything else (Decimal, str) raises TypeError.
        let when = if delay.is_exact_instance_of::<PyFloat>() || delay.is_instance_of::<PyInt>() {
            now + delay.extract::<f64>()?
        } else {
            PyFloat::new(slf.py(), now).add(delay)?.extract::<f64>()?
        };
        Self::schedule_at(slf, when, callback, args, context, "call_later")
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        Self::schedule_at(slf, when.extract()?, callback, args, context, "call_at")
    }

    /// Stop after the callbacks of the current iteration have run.
    fn stop(&self, py: Python<'_>) {
        self.st.borrow_mut(py).stopping = true;
    }

    fn is_running(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).thread_id.is_some()
    }

    fn is_closed(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).closed
    }

    fn get_debug(&self, py: Python<'_>) -> bool {
        self.debug(py)
    }

    #[getter(_debug)]
    fn get_debug_attr(&self, py: Python<'_>) -> bool {
        self.debug(py)
    }

    #[setter(_debug)]
    fn set_debug_attr(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let value = value.is_truthy()?;
        self.st.borrow_mut(py).debug = value;
        Ok(())
    }

    #[getter(_closed)]
    fn get_closed_attr(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).closed
    }

    #[getter(_stopping)]
    fn get_stopping(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).stopping
    }

    #[setter(_stopping)]
    fn set_stopping(&self, py: Python<'_>, value: bool) {
        self.st.borrow_mut(py).stopping = value;
    }

    #[getter(_thread_id)]
    fn get_thread_id(&self, py: Python<'_>) -> Option<u64> {
        self.st.borrow(py).thread_id
    }

    #[setter(_thread_id)]
    fn set_thread_id(&self, py: Python<'_>, value: Option<u64>) {
        self.st.borrow_mut(py).thread_id = value;
        self.stats.set_thread(value);
    }

    #[getter(_current_handle)]
    fn get_current_handle(&self, py: Python<'_>) -> Option<Py<Handle>> {
        self.st
            .borrow(py)
            .current_handle
            .as_ref()
            .map(|h| h.clone_ref(py))
    }

    #[getter(_clock_resolution)]
    fn get_clock_resolution(&self) -> f64 {
        self.clock_resolution
    }

    /// asyncio's `_timer_handle_cancelled`: one more cancelled timer in the heap.
    fn _timer_handle_cancelled(&self, py: Python<'_>, _handle: &Bound<'_, PyAny>) {
        self.timer_cancelled(py);
    }

    /// Wakes the loop if it is blocked in the poller (asyncio's self-pipe write).
    fn _write_to_self(&self, py: Python<'_>) {
        if let Some(poller) = &self.st.borrow(py).poller {
            poller.wake_always();
        }
    }

    /// Runs iterations until `stop()`; `Loop.run_forever` does the set-up around it.
    fn _run_forever_core(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let started = slf.get().stats.run_start();
        let result = loop {
            if let Err(e) = Self::run_once(slf) {
                break Err(e);
            }
            if slf.get().st.borrow(py).stopping {
                break Ok(());
            }
        };
        slf.get().st.borrow_mut(py).stopping = false;
        slf.get().stats.run_end(py, started);
        result
    }

    /// One loop iteration (asyncio's `_run_once`).
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let started = slf.get().stats.run_start();
        let result = Self::run_once(slf);
        slf.get().stats.run_end(slf.py(), started);
        result
    }

    /// The loop's statistics since it was made (see `stats.rs` and the stubs).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.stats.to_dict(py)
    }

    /// Marks the loop closed and releases callbacks, timers, watchers and the poller.
    fn _close_core(&self, py: Python<'_>) {
        let released = {
            let mut st = self.st.borrow_mut(py);
            st.closed = true;
            (
                std::mem::take(&mut st.ready),
                st.timers.take_all(),
                st.fds.take_all(),
                st.poller.take(),
                st.current_handle.take(),
                std::mem::take(&mut st.handle_pool),
                std::mem::take(&mut st.timer_pool),
            )
        };
        drop(released);
    }

    /// Watches `fd` (asyncio's `_add_reader`: no transport check; returns the handle).
    /// `context=` as 3.15's transports pass it.
    #[pyo3(signature = (fd, callback, *args, context=None))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::add_io(slf, fd, callback, args, Dir::Read, context)
    }

    /// Watches `fd` (asyncio's `_add_writer`: no transport check; returns the handle).
    #[pyo3(signature = (fd, callback, *args, context=None))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::add_io(slf, fd, callback, args, Dir::Write, context)
    }

    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_io(slf, fd, Dir::Read)
    }

    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_io(slf, fd, Dir::Write)
    }

    /// The events watched on `fd`: 1 (read) | 2 (write), 0 if none (selectors' masks).
    fn _fd_events(&self, py: Python<'_>, fd: i32) -> u8 {
        self.st.borrow(py).fds.get(fd).map_or(0, |e| {
            u8::from(e.reader.is_some()) | (u8::from(e.writer.is_some()) << 1)
        })
    }

    fn sock_recv(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        n: &Bound<'_, PyAny>,
    ) -> PyResult<Py<SockCall>> {
        SockCall::create(slf, sock, Op::Recv(n.clone().unbind()))
    }

    fn sock_recv_into(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        buf: &Bound<'_, PyAny>,
    ) -> PyResult<Py<SockCall>> {
        SockCall::create(slf, sock, Op::RecvInto(buf.clone().unbind()))
    }

    fn sock_recvfrom(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        bufsize: &Bound<'_, PyAny>,
    ) -> PyResult<Py<SockCall>> {
        SockCall::create(slf, sock, Op::RecvFrom(bufsize.clone().unbind()))
    }

    #[pyo3(signature = (sock, buf, nbytes=None))]
    fn sock_recvfrom_into(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        buf: &Bound<'_, PyAny>,
        nbytes: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<SockCall>> {
        let nbytes = match nbytes {
            Some(n) => n.clone().unbind(),
            None => PyInt::new(slf.py(), 0).into_any().unbind(),
        };
        SockCall::create(slf, sock, Op::RecvFromInto(buf.clone().unbind(), nbytes))
    }

    fn sock_sendall(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<Py<SockCall>> {
        SockCall::create(slf, sock, Op::SendAll(data.clone().unbind(), 0))
    }

    fn sock_sendto(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        address: &Bound<'_, PyAny>,
    ) -> PyResult<Py<SockCall>> {
        SockCall::create(
            slf,
            sock,
            Op::SendTo(data.clone().unbind(), address.clone().unbind()),
        )
    }

    fn sock_accept(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>) -> PyResult<Py<SockCall>> {
        SockCall::create(slf, sock, Op::Accept)
    }

    /// The connect step of `Loop.sock_connect`, once the address is resolved.
    fn _sock_connect_resolved(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        address: &Bound<'_, PyAny>,
    ) -> PyResult<Py<SockCall>> {
        SockCall::create(slf, sock, Op::Connect(address.clone().unbind(), false))
    }

    /// `asyncio.futures.Future(loop=self)`, the class looked up at each call as asyncio
    /// does (tests swap in the pure-Python one).
    pub(crate) fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let kwargs = PyDict::new(py);
        kwargs.set_item(pyo3::intern!(py, "loop"), slf)?;
        let futures = pyapi::cached_attr(py, &FUTURES_MODULE, "asyncio", "futures")?;
        futures
            .getattr(pyo3::intern!(py, "Future"))?
            .call((), Some(&kwargs))
    }

    /// asyncio's `create_task`, with each interpreter's contract for task factories:
    /// before 3.13.3 a factory gets `(loop, coro)` plus `context=` when one is given and
    /// the name is set afterwards; 3.13.3 and 3.14+ pass every keyword on (gh-128307);
    /// 3.13.4+ passes `context=` only when not None and sets the name itself (gh-133745).
    #[pyo3(signature = (coro, **kwargs))]
    fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        kwargs: Option<Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        slf.get().check_closed(py)?;
        let factory = slf
            .get()
            .st
            .borrow(py)
            .task_factory
            .as_ref()
            .map(|f| f.clone_ref(py));
        let kwargs = kwargs.unwrap_or_else(|| PyDict::new(py));
        let contract = TaskKwargs::of(py);
        // Keywords taken out of `kwargs` for the name/context contracts.
        let mut name = None;
        if contract != TaskKwargs::PassAll {
            name = pop_item(&kwargs, "name")?.filter(|n| !n.is_none());
            let context = pop_item(&kwargs, "context")?.filter(|c| !c.is_none());
            if contract == TaskKwargs::Legacy {
                if let Some((key, _)) = kwargs.iter().next() {
                    return Err(PyTypeError::new_err(format!(
                        "create_task() got an unexpected keyword argument {}",
                        key.repr()?
                    )));
                }
            }
            if let Some(context) = context {
                kwargs.set_item(pyo3::intern!(py, "context"), context)?;
            }
        }
        if let Some(factory) = factory {
            let task = factory.bind(py).call((slf, coro), Some(&kwargs))?;
            if let Some(name) = name {
                task.call_method1(pyo3::intern!(py, "set_name"), (name,))?;
            }
            return Ok(task);
        }
        if let Some(name) = name {
            kwargs.set_item(pyo3::intern!(py, "name"), name)?;
        }
        kwargs.set_item(pyo3::intern!(py, "loop"), slf)?;
        let tasks = pyapi::cached_attr(py, &TASKS_MODULE, "asyncio", "tasks")?;
        tasks
            .getattr(pyo3::intern!(py, "Task"))?
            .call((coro,), Some(&kwargs))
    }

    fn set_task_factory(&self, py: Python<'_>, factory: &Bound<'_, PyAny>) -> PyResult<()> {
        if !factory.is_none() && !factory.is_callable() {
            return Err(PyTypeError::new_err(
                "task factory must be a callable or None",
            ));
        }
        let new = (!factory.is_none()).then(|| factory.clone().unbind());
        let old = std::mem::replace(&mut self.st.borrow_mut(py).task_factory, new);
        drop(old);
        Ok(())
    }

    fn get_task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st
            .borrow(py)
            .task_factory
            .as_ref()
            .map(|f| f.clone_ref(py))
    }

    #[getter(_task_factory)]
    fn get_task_factory_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.get_task_factory(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(st) = self.st.try_borrow_for_gc(&visit) else {
            return Ok(());
        };
        for h in st
            .ready
            .iter()
            .chain(st.fds.iter())
            .chain(st.handle_pool.iter())
        {
            visit.call(h)?;
        }
        for t in st.timers.iter().chain(st.timer_pool.iter()) {
            visit.call(t)?;
        }
        for obj in [&st.task_factory].into_iter().flatten() {
            visit.call(obj)?;
        }
        if let Some(h) = &st.current_handle {
            visit.call(h)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let released = {
                let mut st = self.st.borrow_mut(py);
                (
                    std::mem::take(&mut st.ready),
                    st.timers.take_all(),
                    st.fds.take_all(),
                    st.task_factory.take(),
                    st.current_handle.take(),
                    std::mem::take(&mut st.handle_pool),
                    std::mem::take(&mut st.timer_pool),
                )
            };
            drop(released);
        })
    }
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LoopCore>()?;
    m.add_class::<Handle>()?;
    m.add_class::<TimerHandle>()?;
    Ok(())
}
