//! `CoreMethod`: a class attribute of a Python transport that hands out its native core's
//! bound method, so that `transport.write(data)` calls into Rust with no Python frame.
//!
//! The bound method is made on first use and kept in the instance's `__dict__`, which
//! takes precedence over this (non-data) descriptor from then on. Binding all of them in
//! `__init__` instead cost each connection ~6k instructions (seven method objects made,
//! stored and freed), mostly for methods a short connection never calls.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

#[pyclass(name = "CoreMethod", module = "ferroloop._core", frozen)]
pub struct CoreMethod {
    name: Py<PyString>,
}

#[pymethods]
impl CoreMethod {
    #[new]
    fn new(name: Bound<'_, PyString>) -> Self {
        CoreMethod {
            name: name.unbind(),
        }
    }

    /// `obj._core.<name>`, kept on `obj`; the descriptor itself on the class.
    fn __get__(
        slf: &Bound<'_, Self>,
        obj: Option<&Bound<'_, PyAny>>,
        _owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Some(obj) = obj.filter(|o| !o.is_none()) else {
            return Ok(slf.clone().into_any().unbind());
        };
        let name = slf.get().name.bind(py);
        let method = obj.getattr(pyo3::intern!(py, "_core"))?.getattr(name)?;
        // Kept only where this is what the instance's class resolves the name to: reached
        // through `super()` from a subclass's override, keeping it would shadow that.
        if obj.get_type().getattr(name)?.is(slf) {
            obj.setattr(name, &method)?;
        }
        Ok(method.unbind())
    }

    /// Called from the class (`SocketTransport.write(transport, data)`, `super().write`
    /// resolved on the class): the core's method of the transport given.
    #[pyo3(signature = (obj, *args, **kwargs))]
    fn __call__(
        &self,
        obj: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let py = obj.py();
        let core = obj.getattr(pyo3::intern!(py, "_core"))?;
        Ok(core
            .getattr(self.name.bind(py))?
            .call(args, kwargs)?
            .unbind())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("<core method {}>", self.name.bind(py))
    }
}
