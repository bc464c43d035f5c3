//! Scheduling: the handles `call_soon` and the timers `call_at`/`call_later` make (with
//! asyncio's debug-mode checks), tasks, and the loop's time, which a replaced `time()`
//! decides.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::deadline::When;
use super::handles::{self, Handle, HandleState, TimerHandle};
use super::{LoopCore, CORE_TIME, TASK_TYPE};
use crate::clock;
use crate::pyapi;

impl LoopCore {
    /// Builds a handle for `callback(*args)` in `context` (a copy of the current one if
    /// None), with the debug-mode checks asyncio makes on the way.
    pub(super) fn new_handle(
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
    pub(super) fn handle_for(slf: &Bound<'_, Self>, state: HandleState) -> PyResult<Py<Handle>> {
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

    pub(super) fn schedule_soon(slf: &Bound<'_, Self>, state: HandleState) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let handle = Self::handle_for(slf, state)?;
        slf.get()
            .st
            .borrow_mut(py)
            .ready
            .push_back(handle.clone_ref(py));
        Ok(handle)
    }

    /// A timer for `callback(*args)` at `when`; `method` names the public method for
    /// asyncio's debug-mode checks (None: the loop's own timer, unchecked).
    pub(super) fn schedule_at(
        slf: &Bound<'_, Self>,
        when: When<'_>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
        method: Option<&str>,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        slf.get().check_closed(py)?;
        let base = Self::new_handle(slf, callback, args, context, method)?;
        // After asyncio's own checks: a deadline its run step would fail on (a str, a
        // Decimal, 10**400) raises the same exception type here, at the call.
        let (when, obj) = when.resolve(|| Self::now(slf))?;
        let pooled = slf.get().st.borrow_mut(py).timer_pool.pop();
        let timer = match pooled {
            Some(timer) => {
                let _empty = TimerHandle::rearm(timer.bind(py), base, when, obj);
                timer
            }
            None => Py::new(py, TimerHandle::new_init(Handle::new(base), when, obj))?,
        };
        slf.get()
            .st
            .borrow_mut(py)
            .timers
            .push(py, when, timer.clone_ref(py));
        Ok(timer)
    }

    /// Whether `time()` is not the core's own: replaced on the instance or overridden
    /// by a subclass (asyncio's run step calls `self.time()`, and test tools replace
    /// it). Known until `time` or `__class__` is set or deleted on the instance.
    #[inline]
    pub(super) fn custom_time(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let known = slf.get().st.borrow(slf.py()).custom_time;
        match known {
            Some(custom) => Ok(custom),
            None => Self::find_custom_time(slf),
        }
    }

    pub(super) fn attribute_changed(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        if name.eq(pyo3::intern!(py, "time"))? || name.eq(pyo3::intern!(py, "__class__"))? {
            slf.get().st.borrow_mut(py).custom_time = None;
        }
        Ok(())
    }

    #[cold]
    fn find_custom_time(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        let name = pyo3::intern!(py, "time");
        let on_instance = match slf.getattr(pyo3::intern!(py, "__dict__")) {
            Ok(dict) => dict.contains(name)?,
            Err(_) => false,
        };
        let core_time = CORE_TIME.get_or_try_init(py, || {
            py.get_type::<LoopCore>().getattr("time").map(Bound::unbind)
        })?;
        let custom = on_instance || !slf.get_type().getattr(name)?.is(core_time.bind(py));
        slf.get().st.borrow_mut(py).custom_time = Some(custom);
        Ok(custom)
    }

    /// The loop's time: the monotonic clock, or the `time()` that replaced it.
    pub(crate) fn now(slf: &Bound<'_, Self>) -> PyResult<f64> {
        if Self::custom_time(slf)? {
            return slf.call_method0(pyo3::intern!(slf.py(), "time"))?.extract();
        }
        Ok(clock::monotonic())
    }

    /// `create_task()`: through the task factory if one is set, else `asyncio.Task`.
    pub(super) fn new_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
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
        let name = name.filter(|n| !n.is_none());
        let context = context.filter(|c| !c.is_none());
        if let Some(factory) = factory {
            let task = match context {
                None => factory.bind(py).call1((slf, coro))?,
                Some(ctx) => {
                    let kwargs = PyDict::new(py);
                    kwargs.set_item("context", ctx)?;
                    factory.bind(py).call((slf, coro), Some(&kwargs))?
                }
            };
            if let Some(name) = name {
                task.call_method1("set_name", (name,))?;
            }
            return Ok(task);
        }
        let kwargs = PyDict::new(py);
        kwargs.set_item(pyo3::intern!(py, "loop"), slf)?;
        if let Some(name) = name {
            kwargs.set_item(pyo3::intern!(py, "name"), name)?;
        }
        if let Some(ctx) = context {
            kwargs.set_item(pyo3::intern!(py, "context"), ctx)?;
        }
        pyapi::cached_attr(py, &TASK_TYPE, "asyncio", "Task")?.call((coro,), Some(&kwargs))
    }
}
