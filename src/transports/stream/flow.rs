//! Flow control, as asyncio's `_FlowControlMixin`: the water marks and the protocol's
//! `pause_writing()`/`resume_writing()`.

use pyo3::prelude::*;
use pyo3::types::PyInt;

use super::StreamTransport;
use crate::errors;
use crate::transports::flow::WaterMarks;

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

    /// asyncio's `_set_write_buffer_limits` (see `WaterMarks::parse`).
    pub(super) fn set_limits(
        slf: &Bound<'_, Self>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let marks = WaterMarks::parse(py, high, low)?;
        let (high_water, low_water) = (marks.high, marks.low);
        let old = {
            let mut st = slf.get().st.borrow_mut(py);
            st.high_water = high_water;
            st.low_water = low_water;
            std::mem::replace(&mut st.limits, marks.given)
        };
        drop(old);
        Self::maybe_pause_protocol(slf)
    }
}
