//! Deadlines as asyncio computes them: `call_later` adds the delay to `loop.time()`,
//! `call_at` keeps the object it is given, and the timer heap sorts by an f64 key taken
//! from that object the way asyncio's run step uses it.

use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt};

use crate::pyapi;

/// A timer's deadline before it is scheduled.
pub(crate) enum When<'py> {
    /// A float deadline the loop computed (`call_later` with a float or int delay).
    Computed(f64),
    /// The object `call_at` was given, or `loop.time() + delay` for other delays.
    Object(Bound<'py, PyAny>),
}

impl<'py> When<'py> {
    /// The heap key and the object to keep for `when()`/`_when`. `now` is called only
    /// for objects that are neither floats nor ints.
    pub(crate) fn resolve(
        self,
        now: impl FnOnce() -> PyResult<f64>,
    ) -> PyResult<(f64, Option<Py<PyAny>>)> {
        match self {
            When::Computed(key) => Ok((finite_or_due(key), None)),
            When::Object(obj) => Ok((finite_or_due(key_of(&obj, now)?), Some(obj.unbind()))),
        }
    }
}

/// `float(int)` as float arithmetic converts an int operand: by its value, never by an
/// int subclass's own `__float__` (asyncio adds the delay as a number).
pub(crate) fn int_value(i: &Bound<'_, PyInt>) -> PyResult<f64> {
    pyapi::long_as_double(i)
}

/// The sort key of a deadline object. Floats (subclasses too) and ints are read
/// directly; anything else goes through `when - now`, as asyncio's poll timeout does,
/// so what asyncio's run step would raise (TypeError for a Decimal or a str, whose
/// subtraction from a float fails) is raised here, at the call.
fn key_of(when: &Bound<'_, PyAny>, now: impl FnOnce() -> PyResult<f64>) -> PyResult<f64> {
    if let Ok(f) = when.cast::<PyFloat>() {
        return Ok(f.value());
    }
    if let Ok(i) = when.cast::<PyInt>() {
        return int_value(i);
    }
    let now = now()?;
    let diff = when.sub(PyFloat::new(when.py(), now))?;
    let diff = match diff.cast::<PyInt>() {
        Ok(i) => int_value(i)?,
        // float or float subclass by value; others (complex: TypeError) by __float__.
        Err(_) => diff.extract::<f64>()?,
    };
    Ok(now + diff)
}

/// asyncio's run step treats a NaN deadline as due (`nan >= end_time` is false): due
/// means first in the heap. (3.13's selector raises ValueError instead when it has to
/// wait on a NaN timeout, with nothing else ready; ferroloop runs the timer there too.)
fn finite_or_due(key: f64) -> f64 {
    if key.is_nan() {
        f64::NEG_INFINITY
    } else {
        key
    }
}
