//! `Handle` and `TimerHandle`: asyncio's callback handles, with its public API.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use super::LoopCore;
use crate::errors;
use crate::gil_cell::GilCell;
use crate::pyapi;

pub(crate) struct HandleState {
    callback: Option<Py<PyAny>>,
    args: Option<Py<PyTuple>>,
    context: Option<Py<PyAny>>,
    loop_: Option<Py<PyAny>>,
    cancelled: bool,
    /// Made by `call_soon_threadsafe`: `cancel()`/`cancelled()` from another thread wait
    /// while the callback runs (asyncio's `_ThreadSafeHandle`, gh-123965).
    threadsafe: bool,
    /// Kept in debug mode when cancelled, as asyncio does, for slow-callback warnings.
    repr: Option<String>,
    source_traceback: Option<Py<PyAny>>,
}

impl HandleState {
    pub(crate) fn new(
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Py<PyAny>,
        loop_: Py<PyAny>,
        source_traceback: Option<Py<PyAny>>,
    ) -> Self {
        HandleState {
            callback: Some(callback),
            args: Some(args),
            context: Some(context),
            loop_: Some(loop_),
            cancelled: false,
            threadsafe: false,
            repr: None,
            source_traceback,
        }
    }

    fn empty() -> Self {
        HandleState {
            callback: None,
            args: None,
            context: None,
            loop_: None,
            cancelled: true,
            threadsafe: false,
            repr: None,
            source_traceback: None,
        }
    }
}

/// A callback scheduled by `call_soon`, `add_reader`, …
#[pyclass(name = "Handle", module = "ferroloop", subclass, frozen, weakref)]
pub struct Handle {
    pub(crate) state: GilCell<HandleState>,
    /// The id (see `thread_id`) of the thread running a threadsafe handle's callback, 0
    /// when it is not running; read without the GIL by threads waiting in `cancel()`.
    running_on: AtomicU64,
}

/// Threads waiting for a threadsafe handle's callback to finish, and their wake-up.
static RUN_DONE: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
static RUN_WAITERS: AtomicU32 = AtomicU32::new(0);

/// A process-unique, non-zero id for the calling thread.
pub(crate) fn thread_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed));
    ID.with(|id| *id)
}

/// A callback scheduled for a time by `call_at`/`call_later`.
#[pyclass(name = "TimerHandle", module = "ferroloop", extends = Handle, frozen)]
pub struct TimerHandle {
    /// The deadline's f64 bits, the heap's sort key: re-set when a recycled timer is
    /// re-armed.
    when: AtomicU64,
    /// The deadline object `call_at` was given, which `when()` and `_when` return as
    /// asyncio does (aiohttp reads back the int it passed); None when the loop computed
    /// a float deadline itself (`call_later`), made again from the key on demand.
    when_obj: GilCell<Option<Py<PyAny>>>,
    pub(crate) scheduled: GilCell<bool>,
}

static EXTRACT_STACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static FORMAT_CALLBACK_SOURCE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `format_helpers.extract_stack(sys._getframe(0))`: the stack of the Python caller.
pub(crate) fn source_traceback(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let frame = py.import("sys")?.call_method1("_getframe", (0,))?;
    Ok(pyapi::cached_attr(
        py,
        &EXTRACT_STACK,
        "asyncio.format_helpers",
        "extract_stack",
    )?
    .call1((frame,))?
    .unbind())
}

/// `format_helpers._format_callback_source(callback, args)` (with `debug=` on 3.13+).
pub(crate) fn format_callback_source(
    py: Python<'_>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyAny>,
    debug: bool,
) -> PyResult<String> {
    let f = pyapi::cached_attr(
        py,
        &FORMAT_CALLBACK_SOURCE,
        "asyncio.format_helpers",
        "_format_callback_source",
    )?;
    let out = if pyapi::version(py) >= (3, 13, 0) {
        let kw = PyDict::new(py);
        kw.set_item("debug", debug)?;
        f.call((callback, args), Some(&kw))?
    } else {
        f.call1((callback, args))?
    };
    out.extract()
}

impl Handle {
    pub(crate) fn new(state: HandleState) -> Self {
        Handle {
            state: GilCell::new(state),
            running_on: AtomicU64::new(0),
        }
    }

    /// Visits what the handle references: its own traverse, and the loop's for the
    /// queued handles it keeps untracked (loop_core/gc.rs).
    pub(crate) fn traverse_state(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(s) = self.state.try_borrow_for_gc(visit) else {
            return Ok(());
        };
        for obj in [&s.callback, &s.context, &s.loop_, &s.source_traceback]
            .into_iter()
            .flatten()
        {
            visit.call(obj)?;
        }
        if let Some(args) = &s.args {
            visit.call(args)?;
        }
        Ok(())
    }

    /// Untracks a handle being queued, and the context copy it made for itself
    /// (loop_core/gc.rs says why).
    pub(crate) fn gc_untrack_queued(slf: &Bound<'_, Handle>) {
        let py = slf.py();
        pyapi::gc_untrack(slf.as_any());
        if let Some(ctx) = &slf.get().state.borrow(py).context {
            // Referenced by this handle alone: the copy it made (a caller's context is
            // still referenced by the caller's arguments).
            if pyapi::refcnt(ctx.bind(py)) == 1 {
                pyapi::gc_untrack(ctx.bind(py));
            }
        }
    }

    /// Tracks the handle, and the context it made itself, by the GC again
    /// (loop_core/gc.rs: untracked while they waited).
    pub(crate) fn gc_track(slf: &Bound<'_, Handle>) {
        if pyapi::gc_track(slf.as_any()) {
            Self::gc_track_context(slf);
        }
    }

    /// An untracked handle leaves the queue: its context (if it made it) is tracked
    /// again at once, as it must be before it can be freed (CPython's Context dealloc
    /// unlinks it from the GC's list unchecked).
    pub(crate) fn gc_track_context(slf: &Bound<'_, Handle>) {
        let py = slf.py();
        if let Some(ctx) = &slf.get().state.borrow(py).context {
            pyapi::gc_track(ctx.bind(py));
        }
    }

    /// An untracked handle ran (or was cancelled): tracked again if anything but the run
    /// step holds it (an exception handler kept it). Held by the run step alone it stays
    /// untracked: it is recycled empty or freed (tracking it would make a pooled handle
    /// young again, for every collection to walk).
    pub(crate) fn gc_track_if_held(slf: &Bound<'_, Handle>) {
        if pyapi::refcnt(slf.as_any()) > 1 {
            pyapi::gc_track(slf.as_any());
        }
    }

    /// Marks the handle as made by `call_soon_threadsafe`.
    pub(crate) fn set_threadsafe(&self, py: Python<'_>) {
        self.state.borrow_mut(py).threadsafe = true;
    }

    /// For a threadsafe handle whose callback runs on another thread: waits, without
    /// the GIL, until it has finished (asyncio holds the handle's lock while it runs, so
    /// a cancel from elsewhere neither races with nor interrupts the callback).
    fn wait_not_running(&self, py: Python<'_>) {
        let running = self.running_on.load(Ordering::Acquire);
        if running == 0 || running == thread_id() || !self.state.borrow(py).threadsafe {
            return;
        }
        py.detach(|| {
            RUN_WAITERS.fetch_add(1, Ordering::AcqRel);
            let (lock, done) = &RUN_DONE;
            let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            while self.running_on.load(Ordering::Acquire) != 0 {
                guard = done.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            drop(guard);
            RUN_WAITERS.fetch_sub(1, Ordering::AcqRel);
        });
    }

    fn finish_threadsafe_run(&self) {
        self.running_on.store(0, Ordering::Release);
        if RUN_WAITERS.load(Ordering::Acquire) > 0 {
            // Taken so that a waiter between its check and its wait cannot miss this.
            let _guard = RUN_DONE.0.lock().unwrap_or_else(|e| e.into_inner());
            RUN_DONE.1.notify_all();
        }
    }

    /// Re-arms a recycled handle; returns the (empty) previous state to drop.
    pub(crate) fn rearm(&self, py: Python<'_>, state: HandleState) -> HandleState {
        std::mem::replace(&mut *self.state.borrow_mut(py), state)
    }

    /// Empties a handle nobody else references, for recycling; the caller drops the
    /// returned references once no borrow is held.
    pub(crate) fn take_state(&self, py: Python<'_>) -> HandleState {
        std::mem::replace(&mut *self.state.borrow_mut(py), HandleState::empty())
    }

    /// The callback, if it is a `T`.
    pub(crate) fn callback_of<T: pyo3::PyTypeInfo>(&self, py: Python<'_>) -> Option<Py<T>> {
        let s = self.state.borrow(py);
        let cb = s.callback.as_ref()?.bind(py);
        cb.cast::<T>().ok().map(|c| c.clone().unbind())
    }

    /// Whether `obj` is this handle's callback (identity).
    pub(crate) fn callback_is(&self, py: Python<'_>, obj: &Bound<'_, PyAny>) -> bool {
        self.state
            .borrow(py)
            .callback
            .as_ref()
            .is_some_and(|cb| cb.as_ptr() == obj.as_ptr())
    }

    fn context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow(py)
            .context
            .as_ref()
            .map(|c| c.clone_ref(py))
    }

    #[inline]
    pub(crate) fn is_cancelled(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).cancelled
    }

    /// Runs the callback in its context. Exceptions go to the loop's exception handler,
    /// except KeyboardInterrupt and SystemExit, which propagate (asyncio's `Handle._run`).
    #[inline]
    pub(crate) fn run(slf: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        let (callback, args, context, threadsafe) = {
            let s = slf.get().state.borrow(py);
            match (&s.callback, &s.args, &s.context) {
                (Some(cb), Some(args), Some(ctx)) if !s.cancelled => (
                    cb.clone_ref(py).into_bound(py),
                    args.clone_ref(py).into_bound(py),
                    ctx.clone_ref(py).into_bound(py),
                    s.threadsafe,
                ),
                _ => return Ok(()),
            }
        };
        if threadsafe {
            // Set before the GIL can be released, so no cancel() slips in between.
            slf.get().running_on.store(thread_id(), Ordering::Release);
        }
        let result = pyapi::run_in_context(py, &context, &callback, &args);
        if threadsafe {
            slf.get().finish_threadsafe_run();
        }
        match result {
            Ok(_) => Ok(()),
            Err(err) => Self::report(slf, &callback, &args, err),
        }
    }

    #[cold]
    fn report(
        slf: &Bound<'_, Handle>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        err: PyErr,
    ) -> PyResult<()> {
        let py = slf.py();
        if errors::propagates(py, &err) {
            return Err(err);
        }
        let (loop_, tb) = {
            let s = slf.get().state.borrow(py);
            (
                s.loop_.as_ref().map(|l| l.clone_ref(py)),
                s.source_traceback.as_ref().map(|t| t.clone_ref(py)),
            )
        };
        let Some(loop_) = loop_ else { return Ok(()) };
        let loop_ = loop_.bind(py);
        let debug = loop_is_debug(loop_);
        let source = format_callback_source(py, callback, args.as_any(), debug)?;
        let context = PyDict::new(py);
        context.set_item("message", format!("Exception in callback {source}"))?;
        context.set_item("exception", err.into_value(py))?;
        context.set_item("handle", slf)?;
        if let Some(tb) = tb {
            if tb.bind(py).is_truthy()? {
                context.set_item("source_traceback", tb)?;
            }
        }
        loop_.call_method1("call_exception_handler", (context,))?;
        Ok(())
    }

    fn repr_info(slf: &Bound<'_, Handle>, py: Python<'_>) -> PyResult<Vec<String>> {
        let (cancelled, callback, args, loop_, tb) = {
            let s = slf.get().state.borrow(py);
            (
                s.cancelled,
                s.callback.as_ref().map(|c| c.clone_ref(py)),
                s.args.as_ref().map(|a| a.clone_ref(py)),
                s.loop_.as_ref().map(|l| l.clone_ref(py)),
                s.source_traceback.as_ref().map(|t| t.clone_ref(py)),
            )
        };
        let mut info = vec![slf.get_type().name()?.to_string()];
        if cancelled {
            info.push("cancelled".to_owned());
        }
        if let Some(cb) = callback {
            let debug = loop_.map(|l| loop_is_debug(l.bind(py))).unwrap_or(false);
            let args: Bound<'_, PyAny> = match args {
                Some(a) => a.into_bound(py).into_any(),
                None => py.None().into_bound(py),
            };
            info.push(format_callback_source(py, cb.bind(py), &args, debug)?);
        }
        if let Some(tb) = tb {
            let tb = tb.bind(py);
            if tb.is_truthy()? {
                let frame = tb.get_item(-1)?;
                info.push(format!(
                    "created at {}:{}",
                    frame.get_item(0)?,
                    frame.get_item(1)?
                ));
            }
        }
        Ok(info)
    }

    pub(crate) fn do_cancel(slf: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        let loop_ = {
            let mut s = slf.get().state.borrow_mut(py);
            if s.cancelled {
                return Ok(());
            }
            s.cancelled = true;
            s.loop_.as_ref().map(|l| l.clone_ref(py))
        };
        // In debug mode asyncio keeps the repr (now saying "cancelled", callback still
        // named) for its slow-callback warnings.
        if loop_.is_some_and(|l| loop_is_debug(l.bind(py))) {
            let repr = slf.repr()?.to_string();
            slf.get().state.borrow_mut(py).repr = Some(repr);
        }
        // Drop the callback and its arguments outside the borrow: their finalizers may
        // schedule more callbacks.
        let (_cb, _args) = {
            let mut s = slf.get().state.borrow_mut(py);
            (s.callback.take(), s.args.take())
        };
        Ok(())
    }
}

fn loop_is_debug(loop_: &Bound<'_, PyAny>) -> bool {
    match loop_.cast::<LoopCore>() {
        Ok(core) => core.get().debug(loop_.py()),
        Err(_) => loop_
            .call_method0("get_debug")
            .and_then(|d| d.is_truthy())
            .unwrap_or(false),
    }
}

#[pymethods]
impl Handle {
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().wait_not_running(slf.py());
        Self::do_cancel(slf)
    }

    fn cancelled(&self, py: Python<'_>) -> bool {
        self.wait_not_running(py);
        self.is_cancelled(py)
    }

    /// New in asyncio 3.12: absent from builds for older interpreters, as there.
    #[cfg(Py_3_12)]
    fn get_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.context(py)
    }

    /// Runs the callback now, reporting errors to the loop (asyncio's `Handle._run`).
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::run(slf)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow(py)
            .callback
            .as_ref()
            .map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.state.borrow(py).args.as_ref().map(|a| a.clone_ref(py))
    }

    #[getter]
    fn _cancelled(&self, py: Python<'_>) -> bool {
        self.is_cancelled(py)
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow(py)
            .loop_
            .as_ref()
            .map(|l| l.clone_ref(py))
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.context(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow(py)
            .source_traceback
            .as_ref()
            .map(|t| t.clone_ref(py))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        if let Some(r) = &slf.get().state.borrow(py).repr {
            return Ok(r.clone());
        }
        let mut info = Self::repr_info(slf, py)?;
        if let Ok(timer) = slf.cast::<TimerHandle>() {
            let pos = if slf.get().is_cancelled(py) { 2 } else { 1 };
            // asyncio: f'when={self._when}'.
            let when = format!("when={}", timer.get().when_object(py).bind(py).str()?);
            info.insert(pos.min(info.len()), when);
        }
        Ok(format!("<{}>", info.join(" ")))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.traverse_state(&visit)
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let taken = {
                let mut s = self.state.borrow_mut(py);
                (
                    s.callback.take(),
                    s.args.take(),
                    s.context.take(),
                    s.loop_.take(),
                    s.source_traceback.take(),
                )
            };
            drop(taken);
        })
    }
}

impl TimerHandle {
    #[inline]
    pub(crate) fn deadline(&self) -> f64 {
        f64::from_bits(self.when.load(Ordering::Relaxed))
    }

    /// The deadline as asyncio's `_when` holds it: the object given, else the key.
    pub(crate) fn when_object(&self, py: Python<'_>) -> Py<PyAny> {
        match &*self.when_obj.borrow(py) {
            Some(obj) => obj.clone_ref(py),
            None => PyFloat::new(py, self.deadline()).into_any().unbind(),
        }
    }

    /// Re-arms a recycled timer for `when` (`obj`: the deadline object, if kept);
    /// returns the (empty) previous state.
    pub(crate) fn rearm(
        slf: &Bound<'_, TimerHandle>,
        state: HandleState,
        when: f64,
        obj: Option<Py<PyAny>>,
    ) -> HandleState {
        let py = slf.py();
        slf.get().when.store(when.to_bits(), Ordering::Relaxed);
        // Recycled timers hold no deadline object (see `take_when_object`).
        *slf.get().when_obj.borrow_mut(py) = obj;
        slf.as_super().get().rearm(py, state)
    }

    /// Empties the deadline object of a timer being recycled; the caller drops it once
    /// no borrow is held.
    pub(crate) fn take_when_object(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.when_obj.borrow_mut(py).take()
    }

    pub(crate) fn new_init(
        base: Handle,
        when: f64,
        obj: Option<Py<PyAny>>,
    ) -> PyClassInitializer<TimerHandle> {
        PyClassInitializer::from(base).add_subclass(TimerHandle {
            when: AtomicU64::new(when.to_bits()),
            when_obj: GilCell::new(obj),
            scheduled: GilCell::new(false),
        })
    }
}

#[pymethods]
impl TimerHandle {
    fn when(&self, py: Python<'_>) -> Py<PyAny> {
        self.when_object(py)
    }

    #[getter]
    fn _when(&self, py: Python<'_>) -> Py<PyAny> {
        self.when_object(py)
    }

    #[getter]
    fn _scheduled(&self, py: Python<'_>) -> bool {
        *self.scheduled.borrow(py)
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let base = slf.as_super();
        if !base.get().is_cancelled(py) && *slf.get().scheduled.borrow(py) {
            let loop_ = base
                .get()
                .state
                .borrow(py)
                .loop_
                .as_ref()
                .map(|l| l.clone_ref(py));
            if let Some(loop_) = loop_ {
                if let Ok(core) = loop_.bind(py).cast::<LoopCore>() {
                    core.get().timer_cancelled(py);
                }
            }
        }
        Handle::do_cancel(base)
    }

    /// asyncio: `hash(self._when)`.
    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        self.when_object(py).bind(py).hash()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(obj) = self.when_obj.try_borrow_for_gc(&visit) {
            if let Some(obj) = &*obj {
                visit.call(obj)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| drop(self.take_when_object(py)))
    }

    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.get().deadline(), other.get().deadline());
        let eq = || -> PyResult<bool> {
            if a != b {
                return Ok(false);
            }
            // Clone out of both cells first: `==` on callbacks may run Python code.
            let parts = |h: &Bound<'_, TimerHandle>| {
                let s = h.as_super().get().state.borrow(py);
                (
                    s.cancelled,
                    s.callback.as_ref().map(|c| c.clone_ref(py)),
                    s.args.as_ref().map(|t| t.clone_ref(py).into_any()),
                )
            };
            let (ca, cba, aa) = parts(slf);
            let (cb, cbb, ab) = parts(other);
            if ca != cb {
                return Ok(false);
            }
            let same = |x: Option<Py<PyAny>>, y: Option<Py<PyAny>>| -> PyResult<bool> {
                match (x, y) {
                    (None, None) => Ok(true),
                    (Some(x), Some(y)) => x.bind(py).eq(y.bind(py)),
                    _ => Ok(false),
                }
            };
            Ok(same(cba, cbb)? && same(aa, ab)?)
        };
        let result = match op {
            CompareOp::Lt => a < b,
            CompareOp::Gt => a > b,
            CompareOp::Le => a < b || eq()?,
            CompareOp::Ge => a > b || eq()?,
            CompareOp::Eq => eq()?,
            CompareOp::Ne => !eq()?,
        };
        Ok(pyo3::types::PyBool::new(py, result)
            .to_owned()
            .into_any()
            .unbind())
    }
}
