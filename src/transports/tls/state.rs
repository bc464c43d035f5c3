//! The TLS layer's state (asyncio's `SSLProtocol` attributes), its two state machines'
//! states, the water marks, and the helpers every flow uses.

use std::collections::VecDeque;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyDict, PyTuple};

use super::bio::{Records, Ssl};
use super::SslProtocol;
use crate::loop_core::LoopCore;
use crate::pyapi;
use crate::transports::stream::StreamTransport;

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
pub(super) const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;
/// asyncio's `constants.FLOW_CONTROL_HIGH_WATER_SSL_READ`/`_WRITE`, in KiB.
pub(super) const HIGH_WATER_READ_KB: usize = 256;
pub(super) const HIGH_WATER_WRITE_KB: usize = 512;

/// asyncio's `SSLProtocolState`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Phase {
    Unwrapped,
    DoHandshake,
    Wrapped,
    Flushing,
    Shutdown,
}

impl Phase {
    pub(super) fn name(self) -> &'static str {
        match self {
            Phase::Unwrapped => "UNWRAPPED",
            Phase::DoHandshake => "DO_HANDSHAKE",
            Phase::Wrapped => "WRAPPED",
            Phase::Flushing => "FLUSHING",
            Phase::Shutdown => "SHUTDOWN",
        }
    }
}

/// asyncio's `AppProtocolState`: INIT -connection_made-> CON_MADE [-eof_received-> EOF]
/// -connection_lost-> CON_LOST.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum AppState {
    Init,
    ConMade,
    Eof,
    ConLost,
}

/// A pair of water marks as given (returned by the getters) and as compared.
pub(super) struct Limits {
    pub(super) high: Py<PyAny>,
    pub(super) low: Py<PyAny>,
    pub(super) high_cmp: f64,
    pub(super) low_cmp: f64,
}

pub(super) struct TlsState {
    pub(super) loop_: Option<Py<LoopCore>>,
    pub(super) ssl: Option<Ssl>,
    pub(super) sslcontext: Option<Py<PyAny>>,
    /// `get_extra_info()`'s own keys (the rest come from the transport underneath).
    pub(super) extra: Option<Py<PyDict>>,
    pub(super) server_side: bool,
    pub(super) app_protocol: Option<Py<PyAny>>,
    pub(super) app_buffered: bool,
    pub(super) app_transport: Option<Py<PyAny>>,
    pub(super) app_transport_created: bool,
    /// The application transport's `_closed`.
    pub(super) app_closed: bool,
    /// The transport underneath, and its Rust core when it is ferroloop's stream transport.
    pub(super) transport: Option<Py<PyAny>>,
    pub(super) native: Option<Py<StreamTransport>>,
    pub(super) waiter: Option<Py<PyAny>>,
    pub(super) phase: Phase,
    pub(super) app_state: AppState,
    pub(super) conn_lost: u32,
    /// Application data not yet taken by the TLS object, with each item's `len()`.
    pub(super) backlog: VecDeque<(Py<PyAny>, usize)>,
    pub(super) backlog_size: usize,
    pub(super) ssl_writing_paused: bool,
    pub(super) app_reading_paused: bool,
    pub(super) ssl_reading_paused: bool,
    pub(super) eof_received: bool,
    pub(super) app_writing_paused: bool,
    pub(super) incoming_limits: Limits,
    pub(super) outgoing_limits: Limits,
    pub(super) handshake_timeout: Py<PyAny>,
    pub(super) shutdown_timeout: Py<PyAny>,
    pub(super) handshake_timeout_handle: Option<Py<PyAny>>,
    pub(super) shutdown_timeout_handle: Option<Py<PyAny>>,
    pub(super) handshake_start: Option<f64>,
    /// The context callbacks are scheduled in (3.15: the connection's); None: a copy of
    /// the current one, as before 3.15.
    pub(super) context: Option<Py<PyAny>>,
    pub(super) records: Records,
    /// Inside an event (`batch`): encrypted output waits in the outgoing BIO until it
    /// ends, so that everything written meanwhile leaves in one send.
    pub(super) batching: bool,
    /// Output is waiting in the outgoing BIO for the end of the event; counted as handed
    /// to the transport underneath, where asyncio would have put it already.
    pub(super) deferred: bool,
    /// A read filled the application's whole buffer: OpenSSL may hold decrypted bytes.
    pub(super) plain_pending: bool,
    /// The buffer `get_buffer()` hands a transport that is not ferroloop's own.
    pub(super) read_buffer: Option<Py<PyByteArray>>,
}

static BUFFERED_PROTOCOL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(super) fn is_buffered_protocol(protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = protocol.py();
    let cls = pyapi::cached_attr(py, &BUFFERED_PROTOCOL, "asyncio", "BufferedProtocol")?;
    // asyncio: a fast hasattr() check first, then the isinstance().
    Ok(protocol.hasattr(pyo3::intern!(py, "get_buffer"))? && protocol.is_instance(&cls)?)
}

impl SslProtocol {
    pub(super) fn loop_of<'py>(&self, py: Python<'py>) -> Option<Bound<'py, LoopCore>> {
        self.st
            .borrow(py)
            .loop_
            .as_ref()
            .map(|l| l.bind(py).clone())
    }

    pub(super) fn ssl(&self, py: Python<'_>) -> Option<Ssl> {
        self.st.borrow(py).ssl.as_ref().map(|s| s.clone_ref(py))
    }

    pub(super) fn phase(&self, py: Python<'_>) -> Phase {
        self.st.borrow(py).phase
    }

    pub(super) fn app_protocol<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let st = self.st.borrow(py);
        st.app_protocol.as_ref().map(|p| p.bind(py).clone())
    }

    pub(super) fn transport<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let st = self.st.borrow(py);
        st.transport.as_ref().map(|t| t.bind(py).clone())
    }

    pub(super) fn debug(&self, py: Python<'_>) -> bool {
        self.loop_of(py).is_some_and(|l| l.get().debug(py))
    }

    pub(super) fn context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st.borrow(py).context.as_ref().map(|c| c.clone_ref(py))
    }

    /// `loop.call_soon(callback, *args)` in the connection's context.
    pub(super) fn call_soon(
        &self,
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Option<Py<PyAny>>> {
        let Some(lp) = self.loop_of(py) else {
            return Ok(None);
        };
        let context = self.context(py);
        let handle =
            LoopCore::call_soon(&lp, callback, args, context.as_ref().map(|c| c.bind(py)))?;
        Ok(Some(handle.into_any()))
    }

    /// `loop.call_later(delay, callback)`, through the loop's Python method as asyncio
    /// calls it.
    pub(super) fn call_later(
        &self,
        py: Python<'_>,
        delay: &Py<PyAny>,
        callback: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Py<PyAny>>> {
        let Some(lp) = self.loop_of(py) else {
            return Ok(None);
        };
        let kwargs = PyDict::new(py);
        if let Some(c) = self.context(py) {
            kwargs.set_item("context", c)?;
        }
        let handle = lp.call_method("call_later", (delay, callback), Some(&kwargs))?;
        Ok(Some(handle.unbind()))
    }

    pub(super) fn set_app_protocol(
        &self,
        py: Python<'_>,
        protocol: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let buffered = is_buffered_protocol(protocol)?;
        let old = {
            let mut st = self.st.borrow_mut(py);
            st.app_buffered = buffered;
            st.app_protocol.replace(protocol.clone().unbind())
        };
        drop(old);
        Ok(())
    }
}

/// The marks asyncio's `add_flowcontrol_defaults` computes, in Python's arithmetic.
pub(super) fn flow_limits(
    py: Python<'_>,
    high: Option<&Bound<'_, PyAny>>,
    low: Option<&Bound<'_, PyAny>>,
    kb: usize,
) -> PyResult<Limits> {
    let high = high.filter(|h| !h.is_none());
    let low = low.filter(|l| !l.is_none());
    let hi = match (high, low) {
        (Some(h), _) => h.clone(),
        (None, None) => pyo3::types::PyInt::new(py, kb * 1024).into_any(),
        (None, Some(l)) => pyo3::types::PyInt::new(py, 4).into_any().mul(l)?,
    };
    let lo = match low {
        Some(l) => l.clone(),
        None => hi.floor_div(4)?,
    };
    // `if not hi >= lo >= 0:`
    if !(hi.ge(&lo)? && lo.ge(0)?) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "high ({}) must be >= low ({}) must be >= 0",
            crate::errors::repr(&hi),
            crate::errors::repr(&lo)
        )));
    }
    let as_f64 = |v: &Bound<'_, PyAny>| -> PyResult<f64> {
        Ok(py
            .get_type::<pyo3::types::PyFloat>()
            .call1((v,))
            .and_then(|f| f.extract::<f64>())
            .unwrap_or(f64::INFINITY))
    };
    Ok(Limits {
        high_cmp: as_f64(&hi)?,
        low_cmp: as_f64(&lo)?,
        high: hi.unbind(),
        low: lo.unbind(),
    })
}
