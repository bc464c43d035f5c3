//! Write flow control shared by the native transports, as asyncio's `_FlowControlMixin`:
//! the water marks in Python's arithmetic, and the protocol's `pause_writing()` and
//! `resume_writing()` calls.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt};

use crate::errors;

/// asyncio's default high-water mark; the low one is a quarter of it.
pub(crate) const DEFAULT_HIGH_WATER: usize = 64 * 1024;

/// The marks a transport compares its buffer's size with, and the objects they were set
/// from, which `get_write_buffer_limits()` returns as given (None: the defaults).
pub(crate) struct WaterMarks {
    pub(crate) high: usize,
    pub(crate) low: usize,
    pub(crate) given: Option<(Py<PyAny>, Py<PyAny>)>,
}

impl Default for WaterMarks {
    fn default() -> Self {
        WaterMarks {
            high: DEFAULT_HIGH_WATER,
            low: DEFAULT_HIGH_WATER / 4,
            given: None,
        }
    }
}

/// A water mark (non-negative, checked) as a byte count to compare sizes with: for an
/// integer size, `size > mark` and `size <= mark` hold exactly when they hold for the
/// mark's floor. Past usize: usize::MAX (no buffer gets there).
fn water_mark(mark: &Bound<'_, PyAny>) -> PyResult<usize> {
    let py = mark.py();
    if let Ok(f) = mark.cast::<PyFloat>() {
        // `as` saturates: inf and anything past usize give usize::MAX.
        return Ok(f.value().floor() as usize);
    }
    let floor = if mark.is_instance_of::<PyInt>() {
        mark.clone()
    } else {
        py.import("math")?.call_method1("floor", (mark,))?
    };
    Ok(floor.extract::<usize>().unwrap_or(usize::MAX))
}

impl WaterMarks {
    /// asyncio's `_set_write_buffer_limits`, in Python's arithmetic: any numbers that
    /// compare go (floats, ints past 64 bits), kept as given. Calls Python code: no
    /// transport state may be borrowed meanwhile.
    pub(crate) fn parse(
        py: Python<'_>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<WaterMarks> {
        let high = high.filter(|h| !h.is_none());
        let low = low.filter(|l| !l.is_none());
        let int = |n: usize| PyInt::new(py, n).into_any();
        let (high, low) = match (high, low) {
            (None, None) => (int(DEFAULT_HIGH_WATER), int(DEFAULT_HIGH_WATER / 4)),
            (None, Some(l)) => (int(4).mul(l)?, l.clone()),
            (Some(h), None) => (h.clone(), h.floor_div(4)?),
            (Some(h), Some(l)) => (h.clone(), l.clone()),
        };
        // `if not high >= low >= 0:`
        if !(high.ge(&low)? && low.ge(0)?) {
            return Err(PyValueError::new_err(format!(
                "high ({}) must be >= low ({}) must be >= 0",
                errors::repr(&high),
                errors::repr(&low)
            )));
        }
        Ok(WaterMarks {
            high: water_mark(&high)?,
            low: water_mark(&low)?,
            given: Some((low.unbind(), high.unbind())),
        })
    }

    /// `get_write_buffer_limits()`: (low, high) as they were given.
    pub(crate) fn get(&self, py: Python<'_>) -> (Py<PyAny>, Py<PyAny>) {
        match &self.given {
            Some((low, high)) => (low.clone_ref(py), high.clone_ref(py)),
            None => (
                PyInt::new(py, self.low).into_any().unbind(),
                PyInt::new(py, self.high).into_any().unbind(),
            ),
        }
    }

    pub(crate) fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some((low, high)) = &self.given {
            visit.call(low)?;
            visit.call(high)?;
        }
        Ok(())
    }
}

/// Calls `protocol.<method>()` (`pause_writing`/`resume_writing`). A failure comes back
/// to be reported as asyncio reports it ("protocol.pause_writing() failed"), except
/// KeyboardInterrupt and SystemExit, which propagate.
pub(crate) fn notify(protocol: &Bound<'_, PyAny>, method: &str) -> PyResult<Option<PyErr>> {
    match protocol.call_method0(method) {
        Ok(_) => Ok(None),
        Err(err) if errors::propagates(protocol.py(), &err) => Err(err),
        Err(err) => Ok(Some(err)),
    }
}
