//! A stream transport's start, as asyncio's `_SelectorSocketTransport.__init__`: its
//! extra info, its core, its server and its fd's registration, then `connection_made`
//! and reading scheduled. Done here rather than in `SocketTransport.__init__` because in
//! Python it cost an accepted connection ~30k instructions (`benchmarks/` accept row),
//! most of it attribute and dict traffic.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

use super::lazy_sock::{self, AcceptedSocket};
use super::StreamTransport;
use crate::loop_core::LoopCore;
use crate::pyapi;
use crate::server::ServerCore;
use crate::transports::base;

static TRANSPORT_SOCKET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SET_NODELAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `sock.getsockname()`/`getpeername()` as asyncio's transport reads them: None when
/// the socket says OSError.
fn address_or_none<'py>(
    py: Python<'py>,
    got: PyResult<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    match got {
        Ok(a) => Ok(a),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyOSError>(py) => {
            Ok(py.None().into_bound(py))
        }
        Err(e) => Err(e),
    }
}

impl StreamTransport {
    /// Starts `owner` (a `SocketTransport` whose `_extra` is set) on `sock`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        owner: &Bound<'_, PyAny>,
        loop_: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        waiter: Option<&Bound<'_, PyAny>>,
        server: Option<&Bound<'_, PyAny>>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = owner.py();
        let extra = owner.getattr(pyo3::intern!(py, "_extra"))?;
        // An accepted connection (`AcceptedSocket`) gets its socket object and the
        // TransportSocket around it when first asked for (SocketTransport.get_extra_info);
        // it has TCP_NODELAY already.
        let accepted = sock.cast::<AcceptedSocket>().ok();
        let fd = match accepted {
            Some(a) => {
                let fd = a.get().fileno(py);
                let name = lazy_sock::sockname(py, fd).map(|n| n.into_bound(py));
                extra.set_item(pyo3::intern!(py, "sockname"), address_or_none(py, name)?)?;
                fd
            }
            None => {
                let ts =
                    pyapi::cached_attr(py, &TRANSPORT_SOCKET, "asyncio.trsock", "TransportSocket")?;
                extra.set_item(pyo3::intern!(py, "socket"), ts.call1((sock,))?)?;
                let name = sock.call_method0(pyo3::intern!(py, "getsockname"));
                extra.set_item(pyo3::intern!(py, "sockname"), address_or_none(py, name)?)?;
                sock.call_method0(pyo3::intern!(py, "fileno"))?.extract()?
            }
        };
        let peername = pyo3::intern!(py, "peername");
        if !extra.contains(peername)? {
            let name = sock.call_method0(pyo3::intern!(py, "getpeername"));
            extra.set_item(peername, address_or_none(py, name)?)?;
        }
        owner.setattr(pyo3::intern!(py, "_sock_fd"), fd)?;
        // 3.15+ passes the context protocol callbacks run in (None before: each callback
        // runs in a copy of the context current when it was scheduled).
        let context = context.filter(|c| !c.is_none());
        let core = Bound::new(
            py,
            StreamTransport::new(loop_, sock, protocol, owner, context)?,
        )?;
        owner.setattr(pyo3::intern!(py, "_core"), &core)?;
        // Kept once attached: attaching asserts that the server is still open, and a
        // transport that failed there must not detach when collected.
        if let Some(server) = server.filter(|s| !s.is_none()) {
            ServerCore::attach_transport(server, owner)?;
            core.get().st.borrow_mut(py).server = Some(server.clone().unbind());
        }
        let Some(lp) = core.get().loop_of(py) else {
            return Ok(()); // its loop was cleared by the collector meanwhile
        };
        lp.get().transport_add(py, fd, owner)?;
        if accepted.is_none() {
            let set_nodelay =
                pyapi::cached_attr(py, &SET_NODELAY, "ferroloop._transports", "_set_nodelay")?;
            set_nodelay.call1((sock,))?;
        }
        let connection_made = protocol.getattr(pyo3::intern!(py, "connection_made"))?;
        LoopCore::call_soon(&lp, &connection_made, &PyTuple::new(py, [owner])?, context)?;
        let start = core.getattr(pyo3::intern!(py, "_start_reading"))?;
        LoopCore::call_soon(&lp, &start, &PyTuple::empty(py), context)?;
        if let Some(w) = waiter.filter(|w| !w.is_none()) {
            base::wake_waiter_soon(&lp, w, context)?;
        }
        Ok(())
    }

    /// Detaches from the server, once (connection lost, or collected while open).
    pub(super) fn detach_server(
        &self,
        py: Python<'_>,
        owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let server = self.st.borrow_mut(py).server.take();
        match server {
            Some(s) => ServerCore::detach_transport(s.bind(py), owner),
            None => Ok(()),
        }
    }
}
