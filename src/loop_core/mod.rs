//! `LoopCore`: the Rust half of `ferroloop.Loop` — ready queue, timers, fd watchers,
//! task creation — and the `_core` module's registration.

mod deadline;
pub(crate) mod fds;
mod flush;
mod gc;
pub(crate) mod handles;
mod registry;
mod run;
mod schedule;
pub(crate) mod stats;
mod timers;
mod watch;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyInt, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::clock;
use crate::errors::{closed_error, os_error};
use crate::gil_cell::GilCell;
use crate::poller::Poller;
use crate::pyapi;
use crate::sock_ops::{Op, SockCall};
use crate::transports::stream::StreamTransport;
use deadline::When;
use fds::{Dir, Fds};
use handles::{Handle, TimerHandle};
use stats::LoopStats;
use timers::Timers;

pub(crate) struct State {
    ready: VecDeque<Py<Handle>>,
    /// Queued handles the GC does not track (gc.rs), still in `ready`.
    untracked: usize,
    timers: Timers,
    fds: Fds,
    /// The fds transports own (`loop._transports`).
    transports: registry::Transports,
    poller: Option<Arc<Poller>>,
    events: Vec<nix::sys::epoll::EpollEvent>,
    closed: bool,
    stopping: bool,
    debug: bool,
    /// The object `set_debug()` was given, which `get_debug()` returns as asyncio does.
    debug_obj: Option<Py<PyAny>>,
    /// Whether `time()` is replaced (on the instance, `mock.patch.object(loop,
    /// "time")`, or by the class); None: to be found out again.
    custom_time: Option<bool>,
    thread_id: Option<u64>,
    current_handle: Option<Py<Handle>>,
    task_factory: Option<Py<PyAny>>,
    /// Spent handles that nobody else referenced, re-armed by the next `call_soon`
    /// instead of allocating (uvloop keeps a freelist for the same reason).
    handle_pool: Vec<Py<Handle>>,
    /// The same for fired timers.
    timer_pool: Vec<Py<TimerHandle>>,
    /// Socket calls waiting on their fd, and whether the check of their sockets is
    /// scheduled (see `check_sock_calls`).
    sock_waiters: usize,
    sock_check_armed: bool,
    /// Stream transports with writes deferred until the run step ends (flush.rs).
    flush: VecDeque<Py<StreamTransport>>,
    /// When the first of `flush` was queued (the loop's clock).
    flush_since: f64,
    /// The io_uring that sends the flush list in one submission (see flush.rs).
    #[cfg(feature = "uring")]
    ring: crate::syscalls::uring::Uring,
}

/// The native core of the event loop; `ferroloop.Loop` subclasses it.
#[pyclass(name = "LoopCore", module = "ferroloop._core", subclass, frozen)]
pub struct LoopCore {
    st: GilCell<State>,
    clock_resolution: f64,
    /// Shared with the loop's transports and blocking detectors.
    pub(crate) stats: Arc<LoopStats>,
    /// The thread (handles::thread_id) running one of this loop's callbacks; 0: none.
    callback_thread: AtomicU64,
}

/// Spent handles kept for reuse: enough for a burst of 10k callbacks in one iteration
/// (a callback flood, or done callbacks of thousands of connections) to run without
/// allocating, which also spares the collector the young-object traversals new handles
/// cause. At most ~2 MB per loop, kept for the loop's life.
const HANDLE_POOL_MAX: usize = 16384;
/// Fired timers kept for reuse.
const TIMER_POOL_MAX: usize = 4096;
/// How often the sockets of waiting socket calls are checked for a close() (seconds).
const SOCK_CHECK_INTERVAL: f64 = 1.0;

static FUTURES_MODULE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static CORE_TIME: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

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
                untracked: 0,
                timers: Timers::default(),
                fds: Fds::default(),
                transports: registry::Transports::default(),
                poller: Some(Arc::new(poller)),
                events: vec![nix::sys::epoll::EpollEvent::empty(); 256],
                closed: false,
                stopping: false,
                debug: false,
                debug_obj: None,
                custom_time: None,
                thread_id: None,
                current_handle: None,
                task_factory: None,
                handle_pool: Vec::new(),
                timer_pool: Vec::new(),
                sock_waiters: 0,
                sock_check_armed: false,
                flush: VecDeque::new(),
                flush_since: 0.0,
                #[cfg(feature = "uring")]
                ring: crate::syscalls::uring::Uring::open(),
            }),
            clock_resolution: clock::resolution(),
            stats: Arc::new(LoopStats::new()),
            callback_thread: AtomicU64::new(0),
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
        let py = slf.py();
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        // asyncio: `self.call_at(self.time() + delay, ...)`. Float and int delays on the
        // core's clock are added here; anything else is added as Python adds it.
        let when = if Self::custom_time(slf)? {
            let now = slf.call_method0(pyo3::intern!(py, "time"))?;
            When::Object(now.add(delay)?)
        } else if let Ok(d) = delay.cast_exact::<PyFloat>() {
            When::Computed(clock::monotonic() + d.value())
        } else if let Ok(d) = delay.cast_exact::<PyInt>() {
            When::Computed(clock::monotonic() + deadline::int_value(d)?)
        } else {
            When::Object(PyFloat::new(py, clock::monotonic()).add(delay)?)
        };
        Self::schedule_at(slf, when, callback, args, context, Some("call_later"))
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
            // asyncio 3.10 checks for a closed loop first (and then asserts).
            if pyapi::version(slf.py()) < (3, 11, 0) {
                slf.get().check_closed(slf.py())?;
            }
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        let when = When::Object(when.clone());
        Self::schedule_at(slf, when, callback, args, context, Some("call_at"))
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

    /// What `set_debug()` was given (asyncio returns the object itself: 1 stays 1).
    fn get_debug(&self, py: Python<'_>) -> Py<PyAny> {
        let st = self.st.borrow(py);
        match &st.debug_obj {
            Some(obj) => obj.clone_ref(py),
            None => pyo3::types::PyBool::new(py, st.debug)
                .to_owned()
                .into_any()
                .unbind(),
        }
    }

    #[getter(_debug)]
    fn get_debug_attr(&self, py: Python<'_>) -> Py<PyAny> {
        self.get_debug(py)
    }

    #[setter(_debug)]
    fn set_debug_attr(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let on = value.is_truthy()?;
        let old = {
            let mut st = self.st.borrow_mut(py);
            st.debug = on;
            st.debug_obj.replace(value.clone().unbind())
        };
        drop(old);
        Ok(())
    }

    /// Notes a `time` or `__class__` set on or deleted from the instance, after which
    /// the run step looks again at which `time()` to call; every attribute is set as
    /// `object.__setattr__` sets it.
    fn __setattr__(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        pyapi::generic_setattr(slf.as_any(), name, Some(value))?;
        Self::attribute_changed(slf, name)
    }

    fn __delattr__(slf: &Bound<'_, Self>, name: &Bound<'_, PyAny>) -> PyResult<()> {
        pyapi::generic_setattr(slf.as_any(), name, None)?;
        Self::attribute_changed(slf, name)
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

    /// Every `SOCK_CHECK_INTERVAL` while socket calls wait: a call whose socket was
    /// closed under it ends with EBADF (asyncio's would wait forever; the kernel tells
    /// no one about a close, so the sockets are looked at).
    fn _check_sock_calls(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        slf.get().st.borrow_mut(py).sock_check_armed = false;
        for call in slf.get().waiting_sock_calls(py) {
            SockCall::end_if_closed(call.bind(py))?;
        }
        if slf.get().st.borrow(py).sock_waiters > 0 {
            Self::arm_sock_check(slf)?;
        }
        Ok(())
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

    /// Marks the loop closed and releases callbacks, timers, watchers and the poller;
    /// socket calls still waiting give their sockets back.
    fn _close_core(&self, py: Python<'_>) -> PyResult<()> {
        let calls = self.waiting_sock_calls(py);
        let released = {
            let mut st = self.st.borrow_mut(py);
            st.closed = true;
            (
                st.take_ready(py),
                st.timers.take_all(),
                st.fds.take_all(),
                st.poller.take(),
                st.current_handle.take(),
                std::mem::take(&mut st.handle_pool),
                std::mem::take(&mut st.timer_pool),
            )
        };
        drop(released);
        #[cfg(feature = "uring")]
        drop(std::mem::take(&mut self.st.borrow_mut(py).ring));
        for call in calls {
            call.get().loop_closed(py)?;
        }
        Ok(())
    }

    /// Calls `callback(*args)` whenever `fd` is readable (asyncio's `add_reader`).
    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::ensure_fd_no_transport(slf, fd)?;
        Self::add_io(slf, fd, callback, args, Dir::Read, None).map(drop)
    }

    /// Calls `callback(*args)` whenever `fd` is writable (asyncio's `add_writer`).
    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::ensure_fd_no_transport(slf, fd)?;
        Self::add_io(slf, fd, callback, args, Dir::Write, None).map(drop)
    }

    /// Stops watching `fd` for reading; True if it was watched.
    fn remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::ensure_fd_no_transport(slf, fd)?;
        Self::remove_io(slf, fd, Dir::Read)
    }

    /// Stops watching `fd` for writing; True if it was watched.
    fn remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::ensure_fd_no_transport(slf, fd)?;
        Self::remove_io(slf, fd, Dir::Write)
    }

    fn _ensure_fd_no_transport(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::ensure_fd_no_transport(slf, fd)
    }

    /// `fd` is `transport`'s until it releases it (asyncio's `_transports[fd] = t`).
    fn _transport_add(
        &self,
        py: Python<'_>,
        fd: RawFd,
        transport: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.transport_add(py, fd, transport)
    }

    /// `fd` is no transport's (asyncio's `del _transports[fd]`).
    fn _transport_remove(&self, py: Python<'_>, fd: RawFd) {
        self.transport_remove(py, fd, None);
    }

    /// The open transports by fd, a snapshot (asyncio's `_transports` mapping).
    #[getter]
    fn _transports<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.transports_dict(py)
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

    /// The fd `fileobj` names for the selector view (`_SelectorView.get_key`): -1 if
    /// none could be registered.
    fn _fd_of(&self, py: Python<'_>, fileobj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
        Ok(self.lookup_fd(py, fileobj)?.0.unwrap_or(-1))
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

    /// The datagram calls are new in asyncio 3.11: absent from builds for 3.10, as there.
    #[cfg(Py_3_11)]
    fn sock_recvfrom(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        bufsize: &Bound<'_, PyAny>,
    ) -> PyResult<Py<SockCall>> {
        SockCall::create(slf, sock, Op::RecvFrom(bufsize.clone().unbind()))
    }

    #[cfg(Py_3_11)]
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

    #[cfg(Py_3_11)]
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

    /// `sock_connect`: an address that needs no resolution on a plain non-blocking
    /// socket is connected natively; any other goes through asyncio's steps
    /// (`Loop._sock_connect_resolving`, which resolves it, then `_sock_connect_resolved`).
    fn sock_connect(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        address: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        if let Some((sa, resolved)) = crate::sock_ops::numeric_address(sock, address) {
            let op = Op::Connect(resolved.unbind(), false, Some(sa));
            return Ok(SockCall::create(slf, sock, op)?.into_any());
        }
        let slow = slf.call_method1(
            pyo3::intern!(slf.py(), "_sock_connect_resolving"),
            (sock, address),
        )?;
        Ok(slow.unbind())
    }

    /// The connect step of `Loop.sock_connect`, once the address is resolved.
    fn _sock_connect_resolved(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        address: &Bound<'_, PyAny>,
    ) -> PyResult<Py<SockCall>> {
        SockCall::create(
            slf,
            sock,
            Op::Connect(address.clone().unbind(), false, None),
        )
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
        if let (Some(kwargs), true) = (&kwargs, pyapi::version(py) < (3, 11, 0)) {
            // asyncio 3.10's create_task() takes name= only.
            for (key, _) in kwargs.iter() {
                if key.extract::<&str>().ok() != Some("name") {
                    return Err(PyTypeError::new_err(format!(
                        "create_task() got an unexpected keyword argument {}",
                        key.repr()?
                    )));
                }
            }
        }
        Self::new_task(slf, coro, kwargs)
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
        match self.st.try_borrow_for_gc(&visit) {
            Ok(st) => st.traverse(&visit),
            Err(_) => Ok(()),
        }
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let released = self.st.borrow_mut(py).release_for_clear(py);
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
