//! `ServerCore`: the native half of `ferroloop.Server` (asyncio's `base_events.Server`) —
//! its listening sockets, serving state, the connections it serves and the waiters of
//! `wait_closed()`; the accept loop is `server/accept.rs`.
//!
//! The coroutines (`start_serving`, `serve_forever`, `wait_closed`) are the Python class's
//! (`python/ferroloop/_server.py`); everything they and the transports call is here.

use rustc_hash::FxHashMap;

use pyo3::exceptions::PyAssertionError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyTuple, PyWeakrefMethods, PyWeakrefReference};
use pyo3::{PyTraverseError, PyVisit};

use crate::gil_cell::GilCell;
use crate::loop_core::stats::OpenServer;
use crate::loop_core::LoopCore;
use crate::pyapi;

pub(crate) mod accept;

static TRANSPORT_SOCKET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The connections a server serves: counted before 3.13, a weak set of their transports
/// from 3.13 on (for `close_clients()`/`abort_clients()`; weak, as asyncio's, so that an
/// abandoned transport is still collected and warns).
#[derive(Default)]
struct Clients {
    count: usize,
    /// By the transport's address.
    set: FxHashMap<usize, Py<PyWeakrefReference>>,
}

impl Clients {
    /// How many are served: the live transports of the set (3.13+), or the count.
    fn len(&mut self, py: Python<'_>) -> usize {
        if pyapi::version(py) < (3, 13, 0) {
            return self.count;
        }
        // A transport collected without detaching is gone, as from asyncio's WeakSet.
        self.set.retain(|_, r| r.bind(py).upgrade().is_some());
        self.set.len()
    }

    /// Whether none is served. Unlike `len`, stops at the first live transport: checked
    /// on each connection's detach, where a scan of all of them would make a server's
    /// connections cost O(n²).
    fn is_empty(&mut self, py: Python<'_>) -> bool {
        if pyapi::version(py) < (3, 13, 0) {
            return self.count == 0;
        }
        if self.set.values().any(|r| r.bind(py).upgrade().is_some()) {
            return false;
        }
        self.set.clear();
        true
    }

    #[cfg_attr(not(Py_3_13), allow(dead_code))]
    fn live(&self, py: Python<'_>) -> Vec<Py<PyAny>> {
        self.set
            .values()
            .filter_map(|r| r.bind(py).upgrade().map(Bound::unbind))
            .collect()
    }
}

struct ServerState {
    loop_: Option<Py<PyAny>>,
    /// None once closed.
    sockets: Option<Vec<Py<PyAny>>>,
    protocol_factory: Option<Py<PyAny>>,
    ssl_context: Option<Py<PyAny>>,
    backlog: Option<Py<PyAny>>,
    ssl_handshake_timeout: Option<Py<PyAny>>,
    ssl_shutdown_timeout: Option<Py<PyAny>>,
    serving: bool,
    serving_forever_fut: Option<Py<PyAny>>,
    /// The futures of `wait_closed()`; None once woken (closed and no connection left).
    waiters: Option<Vec<Py<PyAny>>>,
    clients: Clients,
    /// 3.15: the context connections' callbacks run in copies of (captured here).
    context: Option<Py<PyAny>>,
}

/// A stream server's state; `ferroloop.Server` subclasses it.
#[pyclass(name = "ServerCore", module = "ferroloop._core", subclass, frozen)]
pub struct ServerCore {
    /// Counted in its loop's `servers` from creation until `close()` (None: a loop that
    /// is not ferroloop's, which has no stats).
    open: Option<OpenServer>,
    st: GilCell<ServerState>,
}

impl ServerCore {
    fn loop_<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.st
            .borrow(py)
            .loop_
            .as_ref()
            .map(|l| l.bind(py).clone())
    }

    /// Wakes the `wait_closed()` waiters, for good: later calls return at once.
    fn wakeup(&self, py: Python<'_>) -> PyResult<()> {
        let Some(waiters) = self.st.borrow_mut(py).waiters.take() else {
            return Ok(());
        };
        for w in waiters {
            let w = w.bind(py);
            if !w.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
                // asyncio up to 3.11 gives each waiter itself as its result.
                if pyapi::version(py) < (3, 12, 0) {
                    w.call_method1(pyo3::intern!(py, "set_result"), (w,))?;
                } else {
                    w.call_method1(pyo3::intern!(py, "set_result"), (py.None(),))?;
                }
            }
        }
        Ok(())
    }

    /// `server._attach(transport)` as a transport of `transport`'s calls it: natively for
    /// ferroloop's servers; the argument only from 3.13 on, as asyncio's `Server` takes it.
    pub(crate) fn attach_transport(
        server: &Bound<'_, PyAny>,
        transport: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = server.py();
        let transport = (pyapi::version(py) >= (3, 13, 0)).then_some(transport);
        if let Ok(s) = server.cast::<ServerCore>() {
            return s.get()._attach(py, transport);
        }
        Self::call_server(server, pyo3::intern!(py, "_attach"), transport)
    }

    /// `server._detach(transport)`, the same way (`transport` None: collected already,
    /// so gone from a 3.13+ server's weak set).
    pub(crate) fn detach_transport(
        server: &Bound<'_, PyAny>,
        transport: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = server.py();
        let takes = pyapi::version(py) >= (3, 13, 0);
        if takes && transport.is_none() {
            return Ok(());
        }
        let transport = transport.filter(|_| takes);
        if let Ok(s) = server.cast::<ServerCore>() {
            return s.get()._detach(py, transport);
        }
        Self::call_server(server, pyo3::intern!(py, "_detach"), transport)
    }

    /// `server.<name>(transport)`, or `server.<name>()` for None: a server that is not
    /// ferroloop's.
    fn call_server(
        server: &Bound<'_, PyAny>,
        name: &Bound<'_, pyo3::types::PyString>,
        transport: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        match transport {
            Some(t) => server.call_method1(name, (t,))?,
            None => server.call_method0(name)?,
        };
        Ok(())
    }

    fn obj<'py>(py: Python<'py>, o: &Option<Py<PyAny>>) -> Bound<'py, PyAny> {
        match o {
            Some(o) => o.bind(py).clone(),
            None => py.None().into_bound(py),
        }
    }
}

#[pymethods]
impl ServerCore {
    #[new]
    #[pyo3(signature = (loop_, sockets, protocol_factory, ssl_context, backlog, ssl_handshake_timeout, ssl_shutdown_timeout=None, *_args, **_kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        loop_: &Bound<'_, PyAny>,
        sockets: &Bound<'_, PyAny>,
        protocol_factory: &Bound<'_, PyAny>,
        ssl_context: &Bound<'_, PyAny>,
        backlog: &Bound<'_, PyAny>,
        ssl_handshake_timeout: &Bound<'_, PyAny>,
        ssl_shutdown_timeout: Option<&Bound<'_, PyAny>>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let py = loop_.py();
        let socks = sockets
            .try_iter()?
            .map(|s| s.map(Bound::unbind))
            .collect::<PyResult<Vec<_>>>()?;
        // gh-140947 (3.15): the Server captures the context its connections run in.
        let context = if pyapi::version(py) >= (3, 15, 0) {
            Some(pyapi::copy_context(py)?.unbind())
        } else {
            None
        };
        let open = loop_
            .cast::<LoopCore>()
            .ok()
            .map(|lp| OpenServer::opened(&lp.get().stats));
        Ok(ServerCore {
            open,
            st: GilCell::new(ServerState {
                loop_: Some(loop_.clone().unbind()),
                sockets: Some(socks),
                protocol_factory: Some(protocol_factory.clone().unbind()),
                ssl_context: Some(ssl_context.clone().unbind()),
                backlog: Some(backlog.clone().unbind()),
                ssl_handshake_timeout: Some(ssl_handshake_timeout.clone().unbind()),
                ssl_shutdown_timeout: ssl_shutdown_timeout.map(|t| t.clone().unbind()),
                serving: false,
                serving_forever_fut: None,
                waiters: Some(Vec::new()),
                clients: Clients::default(),
                context,
            }),
        })
    }

    /// A connection starts being served (its transport calls this; from 3.13 on with
    /// itself, before with no argument).
    #[pyo3(signature = (transport=None))]
    fn _attach(&self, py: Python<'_>, transport: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let mut st = self.st.borrow_mut(py);
        if st.sockets.is_none() {
            return Err(PyAssertionError::new_err(()));
        }
        match transport {
            Some(t) if pyapi::version(py) >= (3, 13, 0) => {
                let r = PyWeakrefReference::new(t)?.unbind();
                st.clients.set.insert(t.as_ptr() as usize, r);
            }
            _ => st.clients.count += 1,
        }
        Ok(())
    }

    /// A connection is done; the last one of a closed server wakes `wait_closed()`.
    #[pyo3(signature = (transport=None))]
    fn _detach(&self, py: Python<'_>, transport: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let wake = {
            let mut st = self.st.borrow_mut(py);
            match transport {
                Some(t) if pyapi::version(py) >= (3, 13, 0) => {
                    let gone = st.clients.set.remove(&(t.as_ptr() as usize));
                    drop(gone);
                }
                _ => {
                    if st.clients.count == 0 {
                        return Err(PyAssertionError::new_err(()));
                    }
                    st.clients.count -= 1;
                }
            }
            st.sockets.is_none() && st.clients.is_empty(py)
        };
        if wake {
            self.wakeup(py)?;
        }
        Ok(())
    }

    fn _wakeup(&self, py: Python<'_>) -> PyResult<()> {
        self.wakeup(py)
    }

    /// Listens on every socket and has the loop accept on them (asyncio's order: each
    /// socket's `listen()`, then the loop's `_start_serving()`).
    fn _start_serving(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (lp, socks, args, context) = {
            let mut st = slf.get().st.borrow_mut(py);
            if st.serving {
                return Ok(());
            }
            st.serving = true;
            let Some(lp) = st.loop_.as_ref().map(|l| l.clone_ref(py)) else {
                return Ok(());
            };
            // asyncio iterates `self._sockets`, None once closed.
            let Some(socks) = &st.sockets else {
                return Err(pyo3::exceptions::PyTypeError::new_err(
                    "'NoneType' object is not iterable",
                ));
            };
            let socks: Vec<Py<PyAny>> = socks.iter().map(|s| s.clone_ref(py)).collect();
            let args = (
                Self::obj(py, &st.protocol_factory).unbind(),
                Self::obj(py, &st.ssl_context).unbind(),
                Self::obj(py, &st.backlog).unbind(),
                Self::obj(py, &st.ssl_handshake_timeout).unbind(),
                Self::obj(py, &st.ssl_shutdown_timeout).unbind(),
            );
            (
                lp,
                socks,
                args,
                st.context.as_ref().map(|c| c.clone_ref(py)),
            )
        };
        let (factory, ssl, backlog, hs_timeout, sd_timeout) = args;
        let lp = lp.bind(py);
        for sock in socks {
            let sock = sock.bind(py);
            sock.call_method1(pyo3::intern!(py, "listen"), (&backlog,))?;
            let mut call: Vec<Bound<'_, PyAny>> = vec![
                factory.bind(py).clone(),
                sock.clone(),
                ssl.bind(py).clone(),
                slf.clone().into_any(),
                backlog.bind(py).clone(),
                hs_timeout.bind(py).clone(),
            ];
            // asyncio 3.10's _start_serving has no ssl_shutdown_timeout.
            if pyapi::version(py) >= (3, 11, 0) {
                call.push(sd_timeout.bind(py).clone());
            }
            let kwargs = PyDict::new(py);
            if let Some(c) = &context {
                kwargs.set_item("context", c)?;
            }
            lp.call_method(
                pyo3::intern!(py, "_start_serving"),
                PyTuple::new(py, call)?,
                Some(&kwargs),
            )?;
        }
        Ok(())
    }

    fn get_loop(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.loop_(py).map(Bound::unbind)
    }

    fn is_serving(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).serving
    }

    /// The listening sockets as `asyncio.trsock.TransportSocket`s (empty once closed).
    #[getter]
    fn sockets<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let socks: Vec<Py<PyAny>> = match &self.st.borrow(py).sockets {
            Some(s) => s.iter().map(|s| s.clone_ref(py)).collect(),
            None => return Ok(PyTuple::empty(py)),
        };
        let cls = pyapi::cached_attr(py, &TRANSPORT_SOCKET, "asyncio.trsock", "TransportSocket")?;
        let wrapped = socks
            .iter()
            .map(|s| cls.call1((s,)))
            .collect::<PyResult<Vec<_>>>()?;
        PyTuple::new(py, wrapped)
    }

    /// Stops serving: the loop stops accepting and closes the sockets; the running
    /// `serve_forever()` is cancelled; with no connection left, `wait_closed()` returns.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let Some(sockets) = self.st.borrow_mut(py).sockets.take() else {
            return Ok(());
        };
        if let Some(open) = &self.open {
            open.closed();
        }
        if let Some(lp) = self.loop_(py) {
            for sock in &sockets {
                lp.call_method1(pyo3::intern!(py, "_stop_serving"), (sock,))?;
            }
        }
        drop(sockets);
        let fut = {
            let mut st = self.st.borrow_mut(py);
            st.serving = false;
            st.serving_forever_fut.as_ref().map(|f| f.clone_ref(py))
        };
        if let Some(fut) = fut {
            let fut = fut.bind(py);
            if !fut.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
                fut.call_method0(pyo3::intern!(py, "cancel"))?;
                let old = self.st.borrow_mut(py).serving_forever_fut.take();
                drop(old);
            }
        }
        let idle = self.st.borrow_mut(py).clients.is_empty(py);
        if idle {
            self.wakeup(py)?;
        }
        Ok(())
    }

    /// Closes every connection served (asyncio 3.13+, gh-113538).
    #[cfg(Py_3_13)]
    fn close_clients(&self, py: Python<'_>) -> PyResult<()> {
        let clients = self.st.borrow(py).clients.live(py);
        for t in clients {
            t.bind(py).call_method0(pyo3::intern!(py, "close"))?;
        }
        Ok(())
    }

    /// Aborts every connection served (asyncio 3.13+).
    #[cfg(Py_3_13)]
    fn abort_clients(&self, py: Python<'_>) -> PyResult<()> {
        let clients = self.st.borrow(py).clients.live(py);
        for t in clients {
            t.bind(py).call_method0(pyo3::intern!(py, "abort"))?;
        }
        Ok(())
    }

    /// For `wait_closed()`: a future to wait on, or None to return at once. asyncio up
    /// to 3.11 returned at once from a closed server even with connections left; 3.12
    /// waits for both (gh-104344; 3.12.1's form, which 3.12.0 got wrong).
    fn _closed_waiter(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let (lp, returns) = {
            let st = self.st.borrow(py);
            let returns =
                st.waiters.is_none() || (pyapi::version(py) < (3, 12, 0) && st.sockets.is_none());
            (st.loop_.as_ref().map(|l| l.clone_ref(py)), returns)
        };
        let Some(lp) = lp.filter(|_| !returns) else {
            return Ok(None);
        };
        let fut = lp
            .bind(py)
            .call_method0(pyo3::intern!(py, "create_future"))?;
        match &mut self.st.borrow_mut(py).waiters {
            Some(w) => w.push(fut.clone().unbind()),
            None => return Ok(None),
        }
        Ok(Some(fut.unbind()))
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.loop_(py).map(Bound::unbind)
    }

    #[getter]
    fn _sockets<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        let st = self.st.borrow(py);
        match &st.sockets {
            Some(s) => Ok(Some(PyList::new(py, s.iter().map(|s| s.bind(py)))?)),
            None => Ok(None),
        }
    }

    #[getter]
    fn _waiters<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        let st = self.st.borrow(py);
        match &st.waiters {
            Some(w) => Ok(Some(PyList::new(py, w.iter().map(|w| w.bind(py)))?)),
            None => Ok(None),
        }
    }

    #[getter]
    fn _serving(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).serving
    }

    #[getter]
    fn _serving_forever_fut(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st
            .borrow(py)
            .serving_forever_fut
            .as_ref()
            .map(|f| f.clone_ref(py))
    }

    #[setter(_serving_forever_fut)]
    fn set_serving_forever_fut(&self, py: Python<'_>, fut: Option<Py<PyAny>>) {
        let fut = fut.filter(|f| !f.is_none(py));
        let old = std::mem::replace(&mut self.st.borrow_mut(py).serving_forever_fut, fut);
        drop(old);
    }

    #[getter]
    fn _protocol_factory(&self, py: Python<'_>) -> Py<PyAny> {
        Self::obj(py, &self.st.borrow(py).protocol_factory).unbind()
    }

    #[getter]
    fn _ssl_context(&self, py: Python<'_>) -> Py<PyAny> {
        Self::obj(py, &self.st.borrow(py).ssl_context).unbind()
    }

    #[getter]
    fn _backlog(&self, py: Python<'_>) -> Py<PyAny> {
        Self::obj(py, &self.st.borrow(py).backlog).unbind()
    }

    #[getter]
    fn _ssl_handshake_timeout(&self, py: Python<'_>) -> Py<PyAny> {
        Self::obj(py, &self.st.borrow(py).ssl_handshake_timeout).unbind()
    }

    #[getter]
    fn _ssl_shutdown_timeout(&self, py: Python<'_>) -> Py<PyAny> {
        Self::obj(py, &self.st.borrow(py).ssl_shutdown_timeout).unbind()
    }

    /// The connections served: their count before 3.13 (`_active_count`), their
    /// transports from 3.13 on.
    #[getter]
    fn _active_count(&self, py: Python<'_>) -> usize {
        self.st.borrow_mut(py).clients.len(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(st) = self.st.try_borrow_for_gc(&visit) else {
            return Ok(());
        };
        for obj in [
            &st.loop_,
            &st.protocol_factory,
            &st.ssl_context,
            &st.backlog,
            &st.ssl_handshake_timeout,
            &st.ssl_shutdown_timeout,
            &st.serving_forever_fut,
            &st.context,
        ]
        .into_iter()
        .flatten()
        {
            visit.call(obj)?;
        }
        for s in st.sockets.iter().flatten() {
            visit.call(s)?;
        }
        for w in st.waiters.iter().flatten() {
            visit.call(w)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let released = {
                let mut st = self.st.borrow_mut(py);
                (
                    st.loop_.take(),
                    st.protocol_factory.take(),
                    st.ssl_context.take(),
                    st.serving_forever_fut.take(),
                    st.context.take(),
                    st.waiters.take(),
                    st.sockets.take(),
                )
            };
            drop(released);
        })
    }
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ServerCore>()?;
    m.add_class::<accept::Listener>()
}
