//! Conversions from OS errors to the exact Python exceptions asyncio raises.

use pyo3::exceptions::{
    PyKeyboardInterrupt, PyOSError, PyRuntimeError, PySystemExit, PyValueError,
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

/// `selectors._fileobj_to_fd`: an int, or an object whose `fileno()` gives one.
pub fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<i32> {
    let fd: i64 = if obj.is_instance_of::<PyInt>() {
        obj.extract()?
    } else {
        obj.call_method0("fileno")
            .and_then(|n| {
                n.call_method0("__index__")
                    .or_else(|_| n.call_method0("__int__"))
            })
            .and_then(|n| n.extract())
            .map_err(|_| PyValueError::new_err(format!("Invalid file object: {}", repr(obj))))?
    };
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {fd}"
        )));
    }
    i32::try_from(fd).map_err(|_| PyValueError::new_err(format!("Invalid file descriptor: {fd}")))
}

/// `repr(obj)`, falling back to a placeholder when `__repr__` itself fails.
pub fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<object with a failing __repr__>".to_owned())
}
