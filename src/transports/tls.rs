//! `SSLProtocol`: ferroloop's TLS layer, with the semantics of asyncio 3.11+'s
//! `sslproto.SSLProtocol` (which came from uvloop), driving the user's own
//! `ssl.SSLContext` through an `ssl.SSLObject` over two `ssl.MemoryBIO`s.
//!
//! It is the protocol of the stream transport underneath (as asyncio's is a
//! `BufferedProtocol` of the socket transport): the Rust stream transport recognises it
//! and hands it each read natively, received straight into a buffer the incoming BIO
//! reads from. Over any other transport (TLS over TLS, a user's transport) it is an
//! ordinary protocol. The application sees `ferroloop._tls._SSLProtocolTransport`, a
//! Python `asyncio.Transport` whose hot methods are bound straight to this object.
//!
//! Work is done per readiness event, not per record: everything that arrived is
//! decrypted into one `data_received()`, and what the application writes meanwhile is
//! encrypted as it comes and leaves in one `outgoing.read()` and one send when the event
//! ends (`batch`).

mod app;
mod bio;
mod handshake;
mod machine;
mod read;
mod shutdown;
mod state;
mod write;

use std::collections::VecDeque;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::{PyTraverseError, PyVisit};

use crate::gil_cell::GilCell;
use crate::loop_core::stats::{TransportIo, TransportKind};
use crate::loop_core::LoopCore;
pub(crate) use bio::InputBuf;
use bio::{Records, Ssl};
pub(crate) use machine::received;
use state::{flow_limits, is_buffered_protocol, TlsState, HIGH_WATER_READ_KB, HIGH_WATER_WRITE_KB};
use state::{AppState, Phase, LOG_THRESHOLD_FOR_CONNLOST_WRITES};

#[pyclass(name = "SSLProtocol", module = "ferroloop._core", frozen, weakref)]
pub struct SslProtocol {
    /// Counted under `tls` from creation until the connection underneath is lost, with
    /// the application's plaintext (the records are the transport underneath's to count).
    io: TransportIo,
    st: GilCell<TlsState>,
}

#[pymethods]
impl SslProtocol {
    /// asyncio's `SSLProtocol(loop, app_protocol, sslcontext, waiter, server_side,
    /// server_hostname, call_connection_made, ssl_handshake_timeout,
    /// ssl_shutdown_timeout)`, plus the context of 3.15's connections. `sslcontext` is a
    /// real context here (the Python side makes the default one); the application
    /// transport is set by the Python side once made (`_set_app_transport`).
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (loop_, app_protocol, sslcontext, waiter, server_side, server_hostname,
                        call_connection_made, ssl_handshake_timeout, ssl_shutdown_timeout,
                        context=None))]
    fn new(
        py: Python<'_>,
        loop_: &Bound<'_, PyAny>,
        app_protocol: &Bound<'_, PyAny>,
        sslcontext: &Bound<'_, PyAny>,
        waiter: &Bound<'_, PyAny>,
        server_side: bool,
        server_hostname: &Bound<'_, PyAny>,
        call_connection_made: bool,
        ssl_handshake_timeout: &Bound<'_, PyAny>,
        ssl_shutdown_timeout: &Bound<'_, PyAny>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let lp = loop_
            .cast::<LoopCore>()
            .map_err(|_| PyTypeError::new_err("a ferroloop loop is required"))?;
        let ssl_mod = py.import("ssl")?;
        let incoming = ssl_mod.getattr("MemoryBIO")?.call0()?;
        let outgoing = ssl_mod.getattr("MemoryBIO")?.call0()?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("server_side", server_side)?;
        kwargs.set_item("server_hostname", server_hostname)?;
        let obj = sslcontext.call_method("wrap_bio", (&incoming, &outgoing), Some(&kwargs))?;
        let ssl = Ssl::new(py, obj, incoming, outgoing)?;
        let extra = PyDict::new(py);
        extra.set_item("sslcontext", sslcontext)?;
        Ok(SslProtocol {
            io: TransportIo::opened(&lp.get().stats, TransportKind::Tls),
            st: GilCell::new(TlsState {
                loop_: Some(lp.clone().unbind()),
                ssl: Some(ssl),
                sslcontext: Some(sslcontext.clone().unbind()),
                extra: Some(extra.unbind()),
                server_side,
                app_buffered: is_buffered_protocol(app_protocol)?,
                app_protocol: Some(app_protocol.clone().unbind()),
                app_transport: None,
                app_transport_created: false,
                app_closed: false,
                transport: None,
                native: None,
                waiter: (!waiter.is_none()).then(|| waiter.clone().unbind()),
                phase: Phase::Unwrapped,
                app_state: if call_connection_made {
                    AppState::Init
                } else {
                    AppState::ConMade
                },
                conn_lost: 0,
                backlog: VecDeque::new(),
                backlog_size: 0,
                ssl_writing_paused: false,
                app_reading_paused: false,
                ssl_reading_paused: false,
                eof_received: false,
                app_writing_paused: false,
                incoming_limits: flow_limits(py, None, None, HIGH_WATER_READ_KB)?,
                outgoing_limits: flow_limits(py, None, None, HIGH_WATER_WRITE_KB)?,
                handshake_timeout: ssl_handshake_timeout.clone().unbind(),
                shutdown_timeout: ssl_shutdown_timeout.clone().unbind(),
                handshake_timeout_handle: None,
                shutdown_timeout_handle: None,
                handshake_start: None,
                context: context.filter(|c| !c.is_none()).map(|c| c.clone().unbind()),
                records: Records::new(),
                batching: false,
                deferred: false,
                plain_pending: false,
                read_buffer: None,
            }),
        })
    }

    fn _set_app_transport(&self, py: Python<'_>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut st = self.st.borrow_mut(py);
        if st.app_transport_created {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "Creating _SSLProtocolTransport twice",
            ));
        }
        st.app_transport = Some(transport.clone().unbind());
        st.app_transport_created = true;
        Ok(())
    }

    /// Bytes that arrived before the upgrade (`start_tls` of a stream whose reader
    /// buffered them), for the TLS object to read first.
    fn _feed_incoming(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        machine::feed(self, py, data)
    }

    // -- the protocol of the transport underneath ----------------------------------

    fn connection_made(slf: &Bound<'_, Self>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        machine::connection_made(slf, transport)
    }

    fn connection_lost(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        machine::connection_lost(slf, exc)
    }

    fn get_buffer(&self, py: Python<'_>, n: isize) -> PyResult<Py<PyAny>> {
        machine::get_buffer(self, py, n)
    }

    fn buffer_updated(slf: &Bound<'_, Self>, nbytes: usize) -> PyResult<()> {
        machine::buffer_updated(slf, nbytes)
    }

    fn data_received(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        machine::data_received(slf, data)
    }

    fn eof_received(slf: &Bound<'_, Self>) -> PyResult<Option<bool>> {
        machine::eof_received(slf)
    }

    fn pause_writing(&self, py: Python<'_>) {
        self.st.borrow_mut(py).ssl_writing_paused = true;
    }

    fn resume_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().st.borrow_mut(slf.py()).ssl_writing_paused = false;
        write::process_outgoing(slf)
    }

    // -- callbacks the loop runs ----------------------------------------------------

    fn _check_handshake_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        handshake::check_handshake_timeout(slf)
    }

    fn _check_shutdown_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        shutdown::check_shutdown_timeout(slf)
    }

    fn _do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        write::batch(slf, || read::do_read(slf))
    }

    /// `resume_reading()`'s deferred step.
    fn _resume(slf: &Bound<'_, Self>) -> PyResult<()> {
        write::batch(slf, || match slf.get().phase(slf.py()) {
            Phase::Wrapped => read::do_read(slf),
            Phase::Flushing => shutdown::do_flush(slf),
            Phase::Shutdown => shutdown::do_shutdown(slf),
            _ => Ok(()),
        })
    }

    // -- the application transport (ferroloop._tls._SSLProtocolTransport) -----------

    fn _app_write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        app::write(slf, data)
    }

    fn _write_appdata(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        app::write_appdata(slf, list_of_data)
    }

    fn _app_is_closing(&self, py: Python<'_>) -> PyResult<bool> {
        app::is_closing(self, py)
    }

    fn _app_is_reading(&self, py: Python<'_>) -> bool {
        !self.st.borrow(py).app_reading_paused
    }

    fn _app_close(slf: &Bound<'_, Self>) -> PyResult<()> {
        app::close(slf)
    }

    #[pyo3(signature = (exc=None))]
    fn _app_force_close(slf: &Bound<'_, Self>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        app::force_close(slf, exc)
    }

    fn _pause_reading(&self, py: Python<'_>) {
        self.st.borrow_mut(py).app_reading_paused = true;
    }

    fn _resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        app::resume_reading(slf)
    }

    #[pyo3(signature = (name, default=None))]
    fn _get_extra_info(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        default: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        app::get_extra_info(self, py, name, default)
    }

    fn _set_app_protocol(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        self.set_app_protocol(py, protocol)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn _set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let limits = flow_limits(slf.py(), high, low, HIGH_WATER_WRITE_KB)?;
        let old = std::mem::replace(
            &mut slf.get().st.borrow_mut(slf.py()).outgoing_limits,
            limits,
        );
        drop(old);
        write::control_app_writing(slf, None)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn _set_read_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let limits = flow_limits(slf.py(), high, low, HIGH_WATER_READ_KB)?;
        let old = std::mem::replace(
            &mut slf.get().st.borrow_mut(slf.py()).incoming_limits,
            limits,
        );
        drop(old);
        read::control_ssl_reading(slf)
    }

    fn _get_write_buffer_limits(&self, py: Python<'_>) -> (Py<PyAny>, Py<PyAny>) {
        let st = self.st.borrow(py);
        let l = &st.outgoing_limits;
        (l.low.clone_ref(py), l.high.clone_ref(py))
    }

    fn _get_read_buffer_limits(&self, py: Python<'_>) -> (Py<PyAny>, Py<PyAny>) {
        let st = self.st.borrow(py);
        let l = &st.incoming_limits;
        (l.low.clone_ref(py), l.high.clone_ref(py))
    }

    fn _get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        write::write_buffer_size(self, py)
    }

    fn _get_read_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        match self.ssl(py) {
            Some(ssl) => ssl.incoming_pending(py),
            None => Ok(0),
        }
    }

    #[pyo3(name = "_test__append_write_backlog")]
    fn test_append_write_backlog(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let n = data.len()?;
        let mut st = self.st.borrow_mut(py);
        st.backlog.push_back((data.clone().unbind(), n));
        st.backlog_size += n;
        Ok(())
    }

    // -- state, for the Python side and for code that looks (as at asyncio's) -------

    #[getter]
    fn _app_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.app_protocol(py).map(Bound::unbind)
    }

    #[getter]
    fn _app_transport(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let st = self.st.borrow(py);
        st.app_transport.as_ref().map(|t| t.clone_ref(py))
    }

    #[getter]
    fn _transport(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.transport(py).map(Bound::unbind)
    }

    #[getter]
    fn _app_closed(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).app_closed
    }

    #[setter(_app_closed)]
    fn set_app_closed(&self, py: Python<'_>, value: bool) {
        self.st.borrow_mut(py).app_closed = value;
    }

    #[getter]
    fn _app_writing_paused(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).app_writing_paused
    }

    #[getter]
    fn _app_reading_paused(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).app_reading_paused
    }

    #[getter]
    fn _ssl_writing_paused(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).ssl_writing_paused
    }

    #[getter]
    fn _ssl_reading_paused(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).ssl_reading_paused
    }

    #[getter]
    fn _server_side(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).server_side
    }

    #[getter]
    fn _sslcontext(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let st = self.st.borrow(py);
        st.sslcontext.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _sslobj(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.ssl(py).map(|s| s.obj)
    }

    #[getter]
    fn _incoming(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.ssl(py).map(|s| s.incoming)
    }

    #[getter]
    fn _outgoing(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.ssl(py).map(|s| s.outgoing)
    }

    #[getter]
    fn _write_buffer_size(&self, py: Python<'_>) -> usize {
        self.st.borrow(py).backlog_size
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> u32 {
        self.st.borrow(py).conn_lost
    }

    /// The state's name, as asyncio's `SSLProtocolState` members are named.
    #[getter]
    fn _state_name(&self, py: Python<'_>) -> &'static str {
        self.phase(py).name()
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        self.loop_of(py).map(Bound::unbind)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(st) = self.st.try_borrow_for_gc(&visit) else {
            return Ok(());
        };
        if let Some(l) = &st.loop_ {
            visit.call(l)?;
        }
        if let Some(ssl) = &st.ssl {
            for obj in ssl.objects() {
                visit.call(obj)?;
            }
        }
        if let Some(e) = &st.extra {
            visit.call(e)?;
        }
        if let Some(n) = &st.native {
            visit.call(n)?;
        }
        if let Some(b) = &st.read_buffer {
            visit.call(b)?;
        }
        for obj in [
            &st.sslcontext,
            &st.app_protocol,
            &st.app_transport,
            &st.transport,
            &st.waiter,
            &st.handshake_timeout_handle,
            &st.shutdown_timeout_handle,
            &st.context,
        ]
        .into_iter()
        .flatten()
        {
            visit.call(obj)?;
        }
        for (obj, _) in &st.backlog {
            visit.call(obj)?;
        }
        for l in [&st.incoming_limits, &st.outgoing_limits] {
            visit.call(&l.high)?;
            visit.call(&l.low)?;
        }
        visit.call(&st.handshake_timeout)?;
        visit.call(&st.shutdown_timeout)?;
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let taken = {
                let mut st = self.st.borrow_mut(py);
                (
                    st.loop_.take(),
                    st.ssl.take(),
                    st.extra.take(),
                    st.native.take(),
                    st.read_buffer.take(),
                    (
                        st.sslcontext.take(),
                        st.app_protocol.take(),
                        st.app_transport.take(),
                        st.transport.take(),
                        st.waiter.take(),
                        st.handshake_timeout_handle.take(),
                        st.shutdown_timeout_handle.take(),
                        st.context.take(),
                    ),
                    std::mem::take(&mut st.backlog),
                )
            };
            drop(taken);
        })
    }
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SslProtocol>()?;
    m.add_class::<InputBuf>()
}
