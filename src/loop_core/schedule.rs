//! Scheduling: the handles `call_soon` and the timers `call_at`/`call_later` make (with
//! asyncio's debug-mode checks), tasks, and the loop's time, which a replaced `time()`
//! decides.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

use super::deadline::When;
use super::handles::{self, Handle, HandleState, TimerHandle};
use super::{LoopCore, CORE_TIME};
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
                // One that waited untracked was pooled as it was (gc.rs).
                pyapi::gc_track(handle.bind(py).as_any());
                Ok(handle)
            }
            None => Py::new(py, Handle::new(state)),
        }
    }

    /// Queues a plain handle for `state`; in a long queue, untracked by the GC while
    /// it waits (gc.rs says why and how).
    pub(super) fn schedule_soon(slf: &Bound<'_, Self>, state: HandleState) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let handle = Self::handle_for(slf, state)?;
        slf.get().st.borrow_mut(py).queue(handle.bind(py));
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
        slf.get().stats.timer_scheduled();
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

    /// asyncio's `create_task`, with each interpreter's contract for task factories:
    /// before 3.13.3 a factory gets `(loop, coro)` plus `context=` when one is given and
    /// the name is set afterwards; 3.13.3 and 3.14+ pass every keyword on (gh-128307);
    /// 3.13.4+ passes `context=` only when not None and sets the name itself (gh-133745).
    /// The task class is `asyncio.tasks.Task` at each call, as asyncio looks it up.
    pub(super) fn new_task<'py>(
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
}

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
