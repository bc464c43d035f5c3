//! The TLS handshake: started when the transport underneath is made, bounded by
//! `ssl_handshake_timeout`, completed by `connection_made()` of the application (or the
//! wakeup of `start_tls()`).

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

use super::bio;
use super::machine::{fatal_error, is_exception, set_state, wakeup_waiter, Tls};
use super::write::{batch, process_outgoing};
use super::{AppState, Phase};
use crate::pyapi;

static CERTIFICATE_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(super) fn start_handshake(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let start = if this.debug(py) {
        pyapi::asyncio_logger(py)?.call_method1("debug", ("%r starts SSL handshake", slf))?;
        match this.loop_of(py) {
            Some(lp) => Some(lp.call_method0("time")?.extract::<f64>()?),
            None => None,
        }
    } else {
        None
    };
    this.st.borrow_mut(py).handshake_start = start;
    set_state(this, py, Phase::DoHandshake)?;
    let timeout = this.st.borrow(py).handshake_timeout.clone_ref(py);
    let cb = slf.getattr(pyo3::intern!(py, "_check_handshake_timeout"))?;
    let handle = this.call_later(py, &timeout, &cb)?;
    let old = std::mem::replace(&mut this.st.borrow_mut(py).handshake_timeout_handle, handle);
    drop(old);
    batch(slf, || do_handshake(slf))
}

pub(super) fn check_handshake_timeout(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    if slf.get().phase(py) != Phase::DoHandshake {
        return Ok(());
    }
    let timeout = slf.get().st.borrow(py).handshake_timeout.clone_ref(py);
    let msg = format!(
        "SSL handshake is taking longer than {} seconds: aborting the connection",
        timeout.bind(py).str()?
    );
    let exc = py
        .get_type::<pyo3::exceptions::PyConnectionAbortedError>()
        .call1((msg,))?;
    fatal_error(slf, PyErr::from_value(exc), "Fatal error on transport")
}

pub(super) fn do_handshake(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let Some(ssl) = slf.get().ssl(py) else {
        return Ok(());
    };
    match ssl.do_handshake(py) {
        Ok(()) => on_handshake_complete(slf, None),
        Err(err) if bio::is_again(py, &err)? => process_outgoing(slf),
        Err(err) if bio::is_ssl_error(py, &err)? => on_handshake_complete(slf, Some(err)),
        Err(err) => Err(err),
    }
}

pub(super) fn on_handshake_complete(slf: &Tls<'_>, handshake_exc: Option<PyErr>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let handle = this.st.borrow_mut(py).handshake_timeout_handle.take();
    if let Some(h) = handle {
        h.bind(py).call_method0("cancel")?;
    }
    let Some(ssl) = this.ssl(py) else {
        return Ok(());
    };
    let peercert = match handshake_exc {
        Some(err) => Err(err),
        None => set_state(this, py, Phase::Wrapped)
            .and_then(|()| ssl.obj.bind(py).call_method0("getpeercert")),
    };
    let peercert = match peercert {
        Ok(p) => p,
        Err(err) if is_exception(py, &err) => {
            set_state(this, py, Phase::Unwrapped)?;
            let cert_error = pyapi::cached_attr(py, &CERTIFICATE_ERROR, "ssl", "CertificateError")?;
            let msg = if err.value(py).is_instance(&cert_error)? {
                "SSL handshake failed on verifying the certificate"
            } else {
                "SSL handshake failed"
            };
            let exc = err.value(py).clone().into_any();
            fatal_error(slf, err, msg)?;
            return wakeup_waiter(this, py, Some(&exc));
        }
        Err(err) => return Err(err),
    };
    let start = this.st.borrow(py).handshake_start;
    if let (true, Some(start), Some(lp)) = (this.debug(py), start, this.loop_of(py)) {
        let dt = lp.call_method0("time")?.extract::<f64>()? - start;
        pyapi::asyncio_logger(py)?
            .call_method1("debug", ("%r: SSL handshake took %.1f ms", slf, dt * 1e3))?;
    }
    let obj = ssl.obj.bind(py);
    let extra = this.st.borrow(py).extra.as_ref().map(|e| e.clone_ref(py));
    if let Some(extra) = extra {
        let extra = extra.bind(py);
        extra.set_item("peercert", peercert)?;
        extra.set_item("cipher", obj.call_method0("cipher")?)?;
        extra.set_item("compression", obj.call_method0("compression")?)?;
        extra.set_item("ssl_object", obj)?;
    }
    let connect = {
        let mut st = this.st.borrow_mut(py);
        if st.app_state == AppState::Init {
            st.app_state = AppState::ConMade;
            Some((
                st.app_protocol.as_ref().map(|p| p.clone_ref(py)),
                st.app_transport.as_ref().map(|t| t.clone_ref(py)),
            ))
        } else {
            None
        }
    };
    if let Some((protocol, transport)) = connect {
        let Some(transport) = transport else {
            return Err(PyRuntimeError::new_err(
                "Creating _SSLProtocolTransport twice",
            ));
        };
        if let Some(p) = protocol {
            p.bind(py)
                .call_method1(pyo3::intern!(py, "connection_made"), (transport,))?;
        }
    }
    wakeup_waiter(this, py, None)?;
    // uvloop's order (test_first_data_after_wakeup), not asyncio's immediate read: the
    // first data (which may have come with the handshake's last flight) is read once the
    // waiter's callbacks have run, so that the code awaiting start_tls() has the new
    // transport before its protocol gets data.
    let read = slf.getattr(pyo3::intern!(py, "_do_read"))?;
    this.call_soon(py, &read, &PyTuple::empty(py))?;
    Ok(())
}
