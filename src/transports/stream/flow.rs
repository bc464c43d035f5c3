//! Flow control, as asyncio's `_FlowControlMixin`: the water marks and the protocol's
//! `pause_writing()`/`resume_writing()`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt};

use super::{StreamTransport, DEFAULT_HIGH_WATER};
use crate::errors;

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

impl StreamTransport {
    pub(super) fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let pause = {
            let mut st = slf.get().st.borrow_mut(py);
            if st.pending() <= st.high_water || st.protocol_paused {
                false
            } else {
                st.protocol_paused = true;
                true
            }
        };
        if pause {
            Self::notify_flow(slf, "pause_writing")?;
        }
        Ok(())
    }

    pub(super) fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let resume = {
            let mut st = slf.get().st.borrow_mut(py);
            if st.protocol_paused && st.pending() <= st.low_water {
                st.protocol_paused = false;
                true
            } else {
                false
            }
        };
        if resume {
            Self::notify_flow(slf, "resume_writing")?;
        }
        Ok(())
    }

    /// Calls `protocol.pause_writing()`/`resume_writing()`, reporting its failures.
    fn notify_flow(slf: &Bound<'_, Self>, method: &str) -> PyResult<()> {
        let py = slf.py();
        let Some(protocol) = slf.get().protocol(py) else {
            return Ok(());
        };
        if let Err(err) = protocol.call_method0(method) {
            if errors::propagates(py, &err) {
                return Err(err);
            }
            if let Some(lp) = slf.get().loop_of(py) {
                let exc = err.into_value(py).into_any();
                Self::report(
                    slf,
                    &lp,
                    &format!("protocol.{method}() failed"),
                    exc.bind(py),
                )?;
            }
        }
        Ok(())
    }

    /// `get_write_buffer_limits()`: (low, high) as they were given.
    pub(super) fn limits(&self, py: Python<'_>) -> (Py<PyAny>, Py<PyAny>) {
        let st = self.st.borrow(py);
        match &st.limits {
            Some((low, high)) => (low.clone_ref(py), high.clone_ref(py)),
            None => (
                PyInt::new(py, st.low_water).into_any().unbind(),
                PyInt::new(py, st.high_water).into_any().unbind(),
            ),
        }
    }

    /// asyncio's `_set_write_buffer_limits`, in Python's arithmetic: any numbers that
    /// compare go (floats, ints past 64 bits), kept as given.
    pub(super) fn set_limits(
        slf: &Bound<'_, Self>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
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
        let (high_water, low_water) = (water_mark(&high)?, water_mark(&low)?);
        let old = {
            let mut st = slf.get().st.borrow_mut(py);
            st.high_water = high_water;
            st.low_water = low_water;
            st.limits.replace((low.unbind(), high.unbind()))
        };
        drop(old);
        Self::maybe_pause_protocol(slf)
    }
}
