//! The protocol of each pipe of a child (asyncio's `WriteSubprocessPipeProto` and
//! `ReadSubprocessPipeProto`): it hands the pipe transport's events to the subprocess
//! transport, which calls its protocol's `pipe_data_received(fd, data)` and
//! `pipe_connection_lost(fd, exc)`.

use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use super::SubprocessCore;
use crate::gil_cell::GilCell;

struct PipeState {
    /// The subprocess transport's core; None once the pipe is disconnected.
    proc: Option<Py<SubprocessCore>>,
    /// The pipe transport.
    pipe: Option<Py<PyAny>>,
    disconnected: bool,
}

/// The protocol of one pipe (fd 0, 1 or 2) of a child process.
#[pyclass(name = "SubprocessPipeProto", module = "ferroloop._core", frozen)]
pub struct SubprocessPipeProto {
    fd: i32,
    st: GilCell<PipeState>,
}

impl SubprocessPipeProto {
    pub(super) fn new(proc: Py<SubprocessCore>, fd: i32) -> Self {
        SubprocessPipeProto {
            fd,
            st: GilCell::new(PipeState {
                proc: Some(proc),
                pipe: None,
                disconnected: false,
            }),
        }
    }

    pub(super) fn set_pipe(&self, py: Python<'_>, transport: &Bound<'_, PyAny>) {
        let old = self
            .st
            .borrow_mut(py)
            .pipe
            .replace(transport.clone().unbind());
        drop(old);
    }

    pub(super) fn pipe(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st.borrow(py).pipe.as_ref().map(|p| p.clone_ref(py))
    }

    pub(super) fn is_disconnected(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).disconnected
    }

    fn proc(&self, py: Python<'_>) -> Option<Py<SubprocessCore>> {
        self.st.borrow(py).proc.as_ref().map(|p| p.clone_ref(py))
    }

    /// The subprocess protocol's flow-control callback `name` (stdin's buffer).
    fn flow(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        if let Some(proc) = self.proc(py) {
            if let Some(protocol) = proc.get().protocol(py) {
                protocol.call_method0(name)?;
            }
        }
        Ok(())
    }
}

#[pymethods]
impl SubprocessPipeProto {
    fn connection_made(&self, py: Python<'_>, transport: &Bound<'_, PyAny>) {
        self.set_pipe(py, transport);
    }

    fn connection_lost(&self, py: Python<'_>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let proc = {
            let mut st = self.st.borrow_mut(py);
            st.disconnected = true;
            st.proc.take()
        };
        match proc {
            Some(p) => SubprocessCore::pipe_connection_lost(p.bind(py), self.fd, exc),
            None => Ok(()),
        }
    }

    // Not counted here: the pipe transport underneath counts its reads under `pipe`.
    fn data_received(&self, py: Python<'_>, data: Bound<'_, PyAny>) -> PyResult<()> {
        match self.proc(py) {
            Some(p) => p.get().pipe_data_received(py, self.fd, data),
            None => Ok(()),
        }
    }

    /// asyncio's `Protocol.eof_received`: None, so the pipe transport closes.
    fn eof_received(&self) -> Option<bool> {
        None
    }

    fn pause_writing(&self, py: Python<'_>) -> PyResult<()> {
        self.flow(py, "pause_writing")
    }

    fn resume_writing(&self, py: Python<'_>) -> PyResult<()> {
        self.flow(py, "resume_writing")
    }

    #[getter]
    fn fd(&self) -> i32 {
        self.fd
    }

    #[getter]
    fn get_pipe(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.pipe(py)
    }

    #[getter]
    fn disconnected(&self, py: Python<'_>) -> bool {
        self.is_disconnected(py)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        let kind = if slf.get().fd == 0 { "Write" } else { "Read" };
        let pipe = match slf.get().pipe(py) {
            Some(p) => p.bind(py).repr()?.to_string(),
            None => "None".to_owned(),
        };
        Ok(format!(
            "<{kind}SubprocessPipeProto fd={} pipe={pipe}>",
            slf.get().fd
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(st) = self.st.try_borrow_for_gc(&visit) else {
            return Ok(());
        };
        if let Some(p) = &st.proc {
            visit.call(p)?;
        }
        if let Some(p) = &st.pipe {
            visit.call(p)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let released = {
                let mut st = self.st.borrow_mut(py);
                (st.proc.take(), st.pipe.take())
            };
            drop(released);
        })
    }
}
