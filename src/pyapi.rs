//! The few raw CPython calls ferroloop makes, behind safe wrappers.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple};

/// `contextvars.copy_context()`.
#[inline]
pub fn copy_context(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: the GIL is held (we have `py`); PyContext_CopyCurrent returns a new reference
    // or NULL with an exception set, which `from_owned_ptr_or_err` turns into a `PyErr`.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()) }
}

/// `context.run(callback, *args)`, without the method lookup and argument repacking when
/// `context` is a real `contextvars.Context`.
#[inline]
pub fn run_in_context<'py>(
    py: Python<'py>,
    context: &Bound<'py, PyAny>,
    callback: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `context` is a live object and the GIL is held.
    let exact = unsafe { ffi::PyContext_CheckExact(context.as_ptr()) } != 0;
    if !exact {
        let mut full = Vec::with_capacity(args.len() + 1);
        full.push(callback.clone());
        full.extend(args.iter());
        return context.call_method1("run", PyTuple::new(py, full)?);
    }
    // SAFETY: `context` is a Context (checked above) and the GIL is held; a failure to
    // enter (already entered elsewhere) sets an exception, as Context.run raises it.
    if unsafe { ffi::PyContext_Enter(context.as_ptr()) } != 0 {
        return Err(PyErr::fetch(py));
    }
    let result = callback.call1(args);
    // SAFETY: we entered this context just above on this thread and the GIL is held.
    if unsafe { ffi::PyContext_Exit(context.as_ptr()) } != 0 {
        return Err(PyErr::fetch(py));
    }
    result
}

/// Whether the cyclic GC tracks `obj`.
#[inline]
pub fn gc_is_tracked(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `obj` is live and the GIL is held; the call reads the object's GC header
    // (or answers 0 for a type without one).
    unsafe { ffi::PyObject_GC_IsTracked(obj.as_ptr()) != 0 }
}

/// Stops the cyclic GC tracking `obj`, an instance of a GC type (no-op if untracked).
/// The caller keeps the references it holds visible to the GC some other way, or
/// accepts that cycles through it are not collected until `gc_track`.
#[inline]
pub fn gc_untrack(obj: &Bound<'_, PyAny>) {
    // SAFETY: `obj` is live, the GIL is held, and PyObject_GC_UnTrack checks whether the
    // object is tracked before unlinking it (safe to call twice).
    unsafe { ffi::PyObject_GC_UnTrack(obj.as_ptr().cast()) }
}

/// Tracks `obj` again (an instance of a GC type) if `gc_untrack` stopped it; returns
/// whether it did.
#[inline]
pub fn gc_track(obj: &Bound<'_, PyAny>) -> bool {
    if gc_is_tracked(obj) {
        return false;
    }
    // SAFETY: `obj` is live, of a GC type (the only objects we untrack), the GIL is held,
    // and it is not tracked (tracking a tracked object is a fatal error).
    unsafe { ffi::PyObject_GC_Track(obj.as_ptr().cast()) };
    true
}

/// For a traverse (which holds no `Python` token): whether `obj` is untracked and
/// referenced only by the caller's one reference, so that the caller may visit what it
/// references as its own.
#[inline]
pub fn untracked_and_alone<T>(obj: &Py<T>) -> bool {
    let ptr = obj.as_ptr();
    // SAFETY: a traverse runs with the GIL held (during a collection), and `obj` is live
    // (the caller holds a reference); both calls only read the object's header.
    unsafe { ffi::Py_REFCNT(ptr) == 1 && ffi::PyObject_GC_IsTracked(ptr) == 0 }
}

/// The object's reference count.
#[inline]
pub fn refcnt(obj: &Bound<'_, PyAny>) -> isize {
    // SAFETY: `obj` is a live object (we hold a reference) and the GIL is held.
    unsafe { ffi::Py_REFCNT(obj.as_ptr()) }
}

/// Whether weak references to `obj` may exist. Conservative: types whose weakref list
/// is not at a plain offset (managed weakrefs) answer true.
#[inline]
pub fn may_have_weakrefs(obj: &Bound<'_, PyAny>) -> bool {
    let ptr = obj.as_ptr();
    // SAFETY: `obj` is live and the GIL is held; a positive tp_weaklistoffset is the
    // offset of the object's weakref-list head (a PyObject* that is NULL when no weak
    // reference exists), as CPython's own _PyObject_GET_WEAKREFS_LISTPTR reads it.
    unsafe {
        let offset = (*ffi::Py_TYPE(ptr)).tp_weaklistoffset;
        if offset <= 0 {
            return true;
        }
        let head = ptr.cast::<u8>().offset(offset).cast::<*mut ffi::PyObject>();
        !(*head).is_null()
    }
}

/// The bytes of a C-contiguous buffer view, borrowed for as long as the view is held.
#[inline]
pub fn buffer_bytes(view: &pyo3::buffer::PyUntypedBuffer) -> &[u8] {
    debug_assert!(view.is_c_contiguous());
    // SAFETY: a held view pins its exporter's memory (bytearray refuses to resize while
    // exported, and every exporter keeps the memory alive until release); the view is
    // C-contiguous (checked by the caller), so `buf_ptr()..+len_bytes()` is one readable
    // block, and the borrow cannot outlive `view`.
    unsafe { std::slice::from_raw_parts(view.buf_ptr().cast::<u8>(), view.len_bytes()) }
}

/// `module.name`, imported once and kept in `cell` (for functions and types, which
/// code does not replace at run time).
pub fn cached_attr<'py>(
    py: Python<'py>,
    cell: &'static pyo3::sync::PyOnceLock<Py<PyAny>>,
    module: &str,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || py.import(module)?.getattr(name).map(Bound::unbind))
        .map(|obj| obj.bind(py).clone())
}

/// `asyncio.log.logger`, looked up on each use so that code and tests that replace it see
/// ferroloop's messages (only cold paths log).
pub fn asyncio_logger(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("asyncio.log")?.getattr("logger")
}

/// The interpreter's `(major, minor, micro)`, read once.
pub fn version(py: Python<'_>) -> (u8, u8, u8) {
    static VERSION: std::sync::OnceLock<(u8, u8, u8)> = std::sync::OnceLock::new();
    *VERSION.get_or_init(|| {
        let v = py.version_info();
        (v.major, v.minor, v.patch)
    })
}

/// `PyLong_AsDouble`: an int's value as a float, never through a subclass's `__float__`
/// (OverflowError beyond the float range, as float arithmetic raises).
pub fn long_as_double(i: &Bound<'_, PyInt>) -> PyResult<f64> {
    // SAFETY: `i` is a live int (subclasses included) and the GIL is held; -1.0 with an
    // exception set is the failure value.
    let v = unsafe { ffi::PyLong_AsDouble(i.as_ptr()) };
    if v == -1.0 {
        if let Some(err) = PyErr::take(i.py()) {
            return Err(err);
        }
    }
    Ok(v)
}

/// `object.__setattr__(obj, name, value)`, or `object.__delattr__(obj, name)` when
/// `value` is None.
pub fn generic_setattr(
    obj: &Bound<'_, PyAny>,
    name: &Bound<'_, PyAny>,
    value: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let value = value.map_or(std::ptr::null_mut(), |v| v.as_ptr());
    // SAFETY: live objects and the GIL held; a NULL value asks for deletion, as the C API
    // documents; -1 means an exception is set.
    if unsafe { ffi::PyObject_GenericSetAttr(obj.as_ptr(), name.as_ptr(), value) } < 0 {
        return Err(PyErr::fetch(obj.py()));
    }
    Ok(())
}
