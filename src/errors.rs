//! Conversions from OS errors to the exact Python exceptions asyncio raises.

use pyo3::exceptions::{
    PyAttributeError, PyKeyboardInterrupt, PyOSError, PyOverflowError, PyRuntimeError,
    PySystemExit, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyInt;

/// `OSError(errno, strerror)`: Python picks the subclass (PermissionError, …) from errno.
pub fn os_error(err: nix::Error) -> PyErr {
    PyOSError::new_err((err as i32, strerror(err as i32)))
}

/// The C library's message for `errno`, as Python's own OSErrors carry it.
fn strerror(errno: i32) -> String {
    let full = std::io::Error::from_raw_os_error(errno).to_string();
    // std appends " (os error N)" to strerror_r's text.
    match full.rfind(" (os error ") {
        Some(i) => full[..i].to_owned(),
        None => full,
    }
}

/// KeyboardInterrupt and SystemExit leave the loop; asyncio reports every other error.
pub fn propagates(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

pub fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

/// `selectors._fileobj_to_fd`: an int, or an object whose `int(fileno())` gives one;
/// ValueError for anything else and for negative numbers. `Ok(None)`: a number too big
/// for a C int, which no registration can have (epoll's OverflowError, when added).
pub fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<Option<i32>> {
    let py = obj.py();
    let fd = if obj.is_instance_of::<PyInt>() {
        obj.clone()
    } else {
        let invalid = |e: PyErr| {
            if e.is_instance_of::<PyAttributeError>(py)
                || e.is_instance_of::<PyTypeError>(py)
                || e.is_instance_of::<PyValueError>(py)
            {
                PyValueError::new_err(format!("Invalid file object: {}", repr(obj)))
            } else {
                e
            }
        };
        let fileno = obj.call_method0("fileno").map_err(invalid)?;
        py.get_type::<PyInt>().call1((fileno,)).map_err(invalid)?
    };
    let negative = || PyValueError::new_err(format!("Invalid file descriptor: {fd}"));
    match fd.extract::<i64>() {
        Ok(n) if n < 0 => Err(negative()),
        Ok(n) => Ok(i32::try_from(n).ok()),
        Err(_) if fd.lt(0)? => Err(negative()),
        Err(_) => Ok(None),
    }
}

/// What selectors raises registering an fd number beyond a C int.
pub fn fd_overflow() -> PyErr {
    PyOverflowError::new_err("Python int too large to convert to C int")
}

/// `repr(obj)`, falling back to a placeholder when `__repr__` itself fails.
pub fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<object with a failing __repr__>".to_owned())
}
