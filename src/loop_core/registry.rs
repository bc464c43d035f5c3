//! The fds that transports own (asyncio's `loop._transports`, a WeakValueDictionary),
//! kept natively: asyncio 3.12+ refuses `add_reader`/`sock_*` on an fd whose transport is
//! still open. A Python WeakValueDictionary cost each connection ~2.5k instructions (its
//! `KeyedRef` made in Python, the removal callback run in Python on collection); here an
//! entry is a plain weak reference, dropped when the transport releases its socket.

use rustc_hash::FxHashMap;
use std::os::fd::RawFd;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyWeakrefMethods, PyWeakrefReference};

use super::LoopCore;

/// fd → the transport (weakly: an abandoned transport is still collected and warns).
#[derive(Default)]
pub(crate) struct Transports {
    map: FxHashMap<RawFd, Py<PyWeakrefReference>>,
}

impl Transports {
    /// The live transport of `fd`, if any.
    fn get<'py>(&self, py: Python<'py>, fd: RawFd) -> Option<Bound<'py, PyAny>> {
        self.map.get(&fd).and_then(|r| r.bind(py).upgrade())
    }
}

impl LoopCore {
    pub(crate) fn transport_add(
        &self,
        py: Python<'_>,
        fd: RawFd,
        transport: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let r = PyWeakrefReference::new(transport)?.unbind();
        let old = self.st.borrow_mut(py).transports.map.insert(fd, r);
        drop(old);
        Ok(())
    }

    /// Forgets `fd`'s entry if it is `transport`'s (None: whoever's it is).
    pub(crate) fn transport_remove(
        &self,
        py: Python<'_>,
        fd: RawFd,
        transport: Option<&Bound<'_, PyAny>>,
    ) {
        let old = {
            let mut st = self.st.borrow_mut(py);
            let map = &mut st.transports.map;
            let mine = match (transport, map.get(&fd)) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(t), Some(r)) => r.bind(py).upgrade().is_none_or(|o| o.is(t)),
            };
            if mine {
                map.remove(&fd)
            } else {
                None
            }
        };
        drop(old);
    }

    /// asyncio's `_ensure_fd_no_transport` once the fd is a number: a RuntimeError if a
    /// transport still open owns `fd` (`shown`: the fd as the caller gave it, for the
    /// message).
    pub(crate) fn refuse_fd_of_transport(
        &self,
        py: Python<'_>,
        fd: RawFd,
        shown: impl FnOnce() -> String,
    ) -> PyResult<()> {
        let Some(transport) = self.st.borrow(py).transports.get(py, fd) else {
            return Ok(());
        };
        if transport
            .call_method0(pyo3::intern!(py, "is_closing"))?
            .is_truthy()?
        {
            return Ok(());
        }
        Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
            "File descriptor {} is used by transport {}",
            shown(),
            crate::errors::repr(&transport)
        )))
    }

    /// The live entries, as a dict (what `loop._transports` shows).
    pub(crate) fn transports_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let live: Vec<_> = {
            let st = self.st.borrow(py);
            st.transports
                .map
                .iter()
                .filter_map(|(fd, r)| r.bind(py).upgrade().map(|t| (*fd, t)))
                .collect()
        };
        for (fd, t) in live {
            d.set_item(fd, t)?;
        }
        Ok(d)
    }
}
