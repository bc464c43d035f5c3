//! The TLS state machine, step for step asyncio's `SSLProtocol` (3.11+): the handshake,
//! the read and write flows, flow control across both layers, and the shutdown.

use pyo3::exceptions::{PyException, PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PySlice, PyTuple};

use super::bio::{self, Available, Filled, InputBuf, MAX_SIZE, READ_CHUNK};
use super::{AppState, Phase, SslProtocol, LOG_THRESHOLD_FOR_CONNLOST_WRITES};
use crate::errors;
use crate::pyapi;
use crate::transports::stream::StreamTransport;

static CERTIFICATE_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static CANCELLED_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TIMEOUT_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static JOIN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

type Tls<'py> = Bound<'py, SslProtocol>;

/// `except Exception:` (KeyboardInterrupt, SystemExit, CancelledError go on up).
fn is_exception(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyException>(py)
}

/// Runs `f` as one event: what it writes is encrypted as it goes and leaves in one
/// `outgoing.read()` and one write to the transport underneath when it returns (the
/// outermost batch flushes; `flush_deferred` also runs before any other call down).
pub(super) fn batch<R>(slf: &Tls<'_>, f: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    let py = slf.py();
    let outer = !std::mem::replace(&mut slf.get().st.borrow_mut(py).batching, true);
    let result = f();
    if !outer {
        return result;
    }
    slf.get().st.borrow_mut(py).batching = false;
    let flushed = flush_deferred(slf);
    let value = result?;
    flushed?;
    Ok(value)
}

/// Sends what waits in the outgoing BIO for the end of the event.
pub(super) fn flush_deferred(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    if !std::mem::take(&mut slf.get().st.borrow_mut(py).deferred) {
        return Ok(());
    }
    process_outgoing(slf)
}

/// Bytes for the incoming BIO, through the record tracker.
pub(super) fn feed(this: &SslProtocol, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let Some(ssl) = this.ssl(py) else {
        return Ok(());
    };
    let view = pyo3::buffer::PyUntypedBuffer::get(data)?;
    let contiguous;
    let bytes: &[u8] = if view.is_c_contiguous() {
        pyapi::buffer_bytes(&view)
    } else {
        contiguous = data.call_method0("tobytes")?.cast_into::<PyBytes>()?;
        contiguous.as_bytes()
    };
    ssl.incoming_write(py, data)?;
    this.st.borrow_mut(py).records.feed(bytes);
    Ok(())
}

// -- the transport underneath ----------------------------------------------------------

pub(super) fn connection_made(slf: &Tls<'_>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    let native = transport
        .getattr(pyo3::intern!(py, "_core"))
        .ok()
        .and_then(|c| c.cast_into::<StreamTransport>().ok())
        .map(Bound::unbind);
    let old = {
        let mut st = slf.get().st.borrow_mut(py);
        st.native = native;
        st.transport.replace(transport.clone().unbind())
    };
    drop(old);
    start_handshake(slf)
}

pub(super) fn connection_lost(slf: &Tls<'_>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let (backlog, ssl) = {
        let mut st = this.st.borrow_mut(py);
        st.backlog_size = 0;
        st.deferred = false;
        st.conn_lost += 1;
        (
            std::mem::take(&mut st.backlog),
            st.ssl.as_ref().map(|s| s.clone_ref(py)),
        )
    };
    drop(backlog);
    if let Some(ssl) = ssl {
        ssl.outgoing_read(py)?;
    }
    let (notify, app_protocol) = {
        let mut st = this.st.borrow_mut(py);
        if st.app_transport.is_some() {
            st.app_closed = true;
        }
        let notify = st.phase != Phase::DoHandshake
            && matches!(st.app_state, AppState::ConMade | AppState::Eof);
        if notify {
            st.app_state = AppState::ConLost;
        }
        (notify, st.app_protocol.as_ref().map(|p| p.clone_ref(py)))
    };
    if notify {
        if let Some(p) = &app_protocol {
            let cb = p.bind(py).getattr(pyo3::intern!(py, "connection_lost"))?;
            this.call_soon(py, &cb, &PyTuple::new(py, [exc])?)?;
        }
    }
    set_state(this, py, Phase::Unwrapped)?;
    let released = {
        let mut st = this.st.borrow_mut(py);
        (
            st.transport.take(),
            st.native.take(),
            st.app_transport.take(),
            st.app_protocol.take(),
        )
    };
    drop(released);
    drop(app_protocol);
    wakeup_waiter(this, py, Some(exc).filter(|e| !e.is_none()))?;
    cancel_timers(this, py)
}

fn cancel_timers(this: &SslProtocol, py: Python<'_>) -> PyResult<()> {
    let (a, b) = {
        let mut st = this.st.borrow_mut(py);
        (
            st.shutdown_timeout_handle.take(),
            st.handshake_timeout_handle.take(),
        )
    };
    for h in [a, b].into_iter().flatten() {
        h.bind(py).call_method0("cancel")?;
    }
    Ok(())
}

/// For a transport that is not ferroloop's own: asyncio's `get_buffer()`.
pub(super) fn get_buffer(this: &SslProtocol, py: Python<'_>, _n: isize) -> PyResult<Py<PyAny>> {
    let buf = {
        let st = this.st.borrow(py);
        st.read_buffer.as_ref().map(|b| b.clone_ref(py))
    };
    let buf = match buf {
        Some(b) => b,
        None => {
            let b = PyByteArray::new_with(py, MAX_SIZE, |_| Ok(()))?.unbind();
            this.st.borrow_mut(py).read_buffer = Some(b.clone_ref(py));
            b
        }
    };
    Ok(PyMemoryView::from(buf.bind(py).as_any())?
        .into_any()
        .unbind())
}

pub(super) fn buffer_updated(slf: &Tls<'_>, nbytes: usize) -> PyResult<()> {
    let py = slf.py();
    let buf = {
        let st = slf.get().st.borrow(py);
        st.read_buffer.as_ref().map(|b| b.clone_ref(py))
    };
    let Some(buf) = buf else {
        return Ok(());
    };
    let view = PyMemoryView::from(buf.bind(py).as_any())?;
    let part = view.get_item(PySlice::new(py, 0, nbytes.min(MAX_SIZE) as isize, 1))?;
    data_received(slf, &part)
}

pub(super) fn data_received(slf: &Tls<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    batch(slf, || {
        feed(slf.get(), slf.py(), data)?;
        dispatch(slf)
    })
}

/// The stream transport underneath read `n` bytes into the shared input buffer.
pub(crate) fn received(slf: &Tls<'_>, input: &InputBuf, n: usize) -> PyResult<()> {
    let py = slf.py();
    batch(slf, || {
        let Some(ssl) = slf.get().ssl(py) else {
            return Ok(());
        };
        // stats: TLS bytes in (n)
        input.expose(py, n);
        let input_obj = InputBuf::get(py)?.bind(py);
        ssl.incoming_write(py, input_obj.as_any())?;
        slf.get().st.borrow_mut(py).records.feed(input.bytes(n));
        dispatch(slf)
    })
}

/// asyncio's `buffer_updated()` after the write to the incoming BIO.
fn dispatch(slf: &Tls<'_>) -> PyResult<()> {
    match slf.get().phase(slf.py()) {
        Phase::DoHandshake => do_handshake(slf),
        Phase::Wrapped => do_read(slf),
        Phase::Flushing => do_flush(slf),
        Phase::Shutdown => do_shutdown(slf),
        Phase::Unwrapped => Ok(()),
    }
}

pub(super) fn eof_received(slf: &Tls<'_>) -> PyResult<Option<bool>> {
    let py = slf.py();
    let this = slf.get();
    this.st.borrow_mut(py).eof_received = true;
    let result = batch(slf, || {
        if this.debug(py) {
            pyapi::asyncio_logger(py)?.call_method1("debug", ("%r received EOF", slf))?;
        }
        match this.phase(py) {
            Phase::DoHandshake => {
                let exc = py
                    .get_type::<pyo3::exceptions::PyConnectionResetError>()
                    .call0()?;
                on_handshake_complete(slf, Some(PyErr::from_value(exc)))?;
            }
            Phase::Wrapped => {
                set_state(this, py, Phase::Flushing)?;
                if this.st.borrow(py).app_reading_paused {
                    return Ok(Some(true));
                }
                do_flush(slf)?;
            }
            Phase::Flushing => {
                do_write(slf)?;
                set_state(this, py, Phase::Shutdown)?;
                do_shutdown(slf)?;
            }
            Phase::Shutdown => do_shutdown(slf)?,
            Phase::Unwrapped => {}
        }
        Ok(None)
    });
    match result {
        Err(err) if is_exception(py, &err) => {
            if let Some(t) = this.transport(py) {
                t.call_method0("close")?;
            }
            Err(err)
        }
        other => other,
    }
}

pub(super) fn set_state(this: &SslProtocol, py: Python<'_>, new: Phase) -> PyResult<()> {
    let mut st = this.st.borrow_mut(py);
    let allowed = matches!(
        (st.phase, new),
        (_, Phase::Unwrapped)
            | (Phase::Unwrapped, Phase::DoHandshake)
            | (Phase::DoHandshake, Phase::Wrapped)
            | (Phase::Wrapped, Phase::Flushing)
            | (Phase::Flushing, Phase::Shutdown)
    );
    if !allowed {
        return Err(PyRuntimeError::new_err(format!(
            "cannot switch state from SSLProtocolState.{} to SSLProtocolState.{}",
            st.phase.name(),
            new.name()
        )));
    }
    st.phase = new;
    Ok(())
}

fn wakeup_waiter(
    this: &SslProtocol,
    py: Python<'_>,
    exc: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let Some(waiter) = this.st.borrow_mut(py).waiter.take() else {
        return Ok(());
    };
    let waiter = waiter.bind(py);
    if !waiter.call_method0("cancelled")?.is_truthy()? {
        match exc {
            Some(e) => waiter.call_method1("set_exception", (e,))?,
            None => waiter.call_method1("set_result", (py.None(),))?,
        };
    }
    Ok(())
}

// -- handshake -------------------------------------------------------------------------

fn start_handshake(slf: &Tls<'_>) -> PyResult<()> {
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

fn do_handshake(slf: &Tls<'_>) -> PyResult<()> {
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

fn on_handshake_complete(slf: &Tls<'_>, handshake_exc: Option<PyErr>) -> PyResult<()> {
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

// -- shutdown --------------------------------------------------------------------------

pub(super) fn start_shutdown(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let phase = {
        let mut st = this.st.borrow_mut(py);
        if matches!(
            st.phase,
            Phase::Flushing | Phase::Shutdown | Phase::Unwrapped
        ) {
            return Ok(());
        }
        if st.app_transport.is_some() {
            st.app_closed = true;
        }
        st.phase
    };
    if phase == Phase::DoHandshake {
        return abort(slf, None);
    }
    set_state(this, py, Phase::Flushing)?;
    arm_shutdown_timeout(slf)?;
    do_flush(slf)
}

fn arm_shutdown_timeout(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let timeout = this.st.borrow(py).shutdown_timeout.clone_ref(py);
    let cb = slf.getattr(pyo3::intern!(py, "_check_shutdown_timeout"))?;
    let handle = this.call_later(py, &timeout, &cb)?;
    let old = std::mem::replace(&mut this.st.borrow_mut(py).shutdown_timeout_handle, handle);
    drop(old);
    Ok(())
}

pub(super) fn check_shutdown_timeout(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    if !matches!(slf.get().phase(py), Phase::Flushing | Phase::Shutdown) {
        return Ok(());
    }
    let cls = pyapi::cached_attr(py, &TIMEOUT_ERROR, "asyncio.exceptions", "TimeoutError")?;
    let exc = cls.call1(("SSL shutdown timed out",))?;
    force_close_transport(slf, Some(&exc))
}

pub(super) fn do_flush(slf: &Tls<'_>) -> PyResult<()> {
    do_read(slf)?;
    set_state(slf.get(), slf.py(), Phase::Shutdown)?;
    do_shutdown(slf)
}

pub(super) fn do_shutdown(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let Some(ssl) = this.ssl(py) else {
        return Ok(());
    };
    let result = if this.st.borrow(py).eof_received {
        Ok(())
    } else {
        discard_incoming(this, py, &ssl)
            .and_then(|()| ssl.obj.bind(py).call_method0("unwrap").map(drop))
    };
    match result {
        Ok(()) => {
            process_outgoing(slf)?;
            call_eof_received(slf)?;
            on_shutdown_complete(slf, None)
        }
        Err(err) if bio::is_again(py, &err)? => process_outgoing(slf),
        Err(err) if bio::is_ssl_error(py, &err)? => on_shutdown_complete(slf, Some(err)),
        Err(err) => Err(err),
    }
}

/// uvloop's fix of bpo-39951 (asyncio still has the bug): application data that comes
/// after the application closed the transport is read and dropped before `unwrap()`,
/// which would otherwise fail with "application data after close notify".
fn discard_incoming(this: &SslProtocol, py: Python<'_>, ssl: &bio::Ssl) -> PyResult<()> {
    let mut first = true;
    while let Some(cap) = available(this, py, ssl)? {
        let mut more = || -> PyResult<bool> {
            if std::mem::take(&mut first) {
                return Ok(true);
            }
            Ok(available(this, py, ssl)?.is_some())
        };
        match ssl.read_bytes(py, cap, &mut more)?.1 {
            Filled::Full => this.st.borrow_mut(py).plain_pending = true,
            Filled::More => {}
            _ => return Ok(()),
        }
        first = true;
    }
    Ok(())
}

fn on_shutdown_complete(slf: &Tls<'_>, exc: Option<PyErr>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    if let Some(err) = exc {
        let handle = this.st.borrow_mut(py).shutdown_timeout_handle.take();
        if let Some(h) = handle {
            h.bind(py).call_method0("cancel")?;
        }
        return fatal_error(slf, err, "Fatal error on transport");
    }
    // gh-160520 (CPython 3.14.10): transport.close() flushes its write buffer first,
    // which a peer that does not read can delay forever: the timeout stays (or starts,
    // when the peer began the shutdown) until connection_lost(). Taken on every version.
    if this.st.borrow(py).shutdown_timeout_handle.is_none() {
        arm_shutdown_timeout(slf)?;
    }
    if let Some(t) = this.transport(py) {
        let close = t.getattr(pyo3::intern!(py, "close"))?;
        this.call_soon(py, &close, &PyTuple::empty(py))?;
    }
    Ok(())
}

pub(super) fn abort(slf: &Tls<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    set_state(slf.get(), slf.py(), Phase::Unwrapped)?;
    force_close_transport(slf, exc)
}

/// `transport._force_close(exc)` on the transport underneath, once what waits for the
/// end of the event has gone to it (asyncio would have handed it over already).
fn force_close_transport(slf: &Tls<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    let py = slf.py();
    flush_deferred(slf)?;
    if let Some(t) = slf.get().transport(py) {
        let none = py.None().into_bound(py);
        t.call_method1(pyo3::intern!(py, "_force_close"), (exc.unwrap_or(&none),))?;
    }
    Ok(())
}

// -- outgoing --------------------------------------------------------------------------

/// asyncio's `_write_appdata` for items already counted into the backlog.
pub(super) fn write_backlog(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    if slf.get().phase(py) != Phase::Wrapped {
        return Ok(());
    }
    match do_write(slf) {
        Err(err) if is_exception(py, &err) => fatal_error(slf, err, "Fatal error on SSL protocol"),
        other => other,
    }
}

/// The write-to-closed check of `_write_appdata`: true if the data is to be dropped.
pub(super) fn write_refused(this: &SslProtocol, py: Python<'_>) -> PyResult<bool> {
    let warn = {
        let mut st = this.st.borrow_mut(py);
        if !matches!(
            st.phase,
            Phase::Flushing | Phase::Shutdown | Phase::Unwrapped
        ) {
            return Ok(false);
        }
        let warn = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
        st.conn_lost += 1;
        warn
    };
    if warn {
        pyapi::asyncio_logger(py)?.call_method1("warning", ("SSL connection is closed",))?;
    }
    Ok(true)
}

pub(super) fn do_write(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    if let Some(ssl) = this.ssl(py) {
        loop {
            let front = {
                let st = this.st.borrow(py);
                st.backlog.front().map(|(d, n)| (d.clone_ref(py), *n))
            };
            let Some((data, len)) = front else {
                break;
            };
            let count = match ssl.write(py, data.bind(py)) {
                Ok(c) => c,
                Err(err) if bio::is_again(py, &err)? => break,
                Err(err) => return Err(err),
            };
            let rest = if count < len {
                let view = PyMemoryView::from(data.bind(py))?;
                Some(view.get_item(PySlice::new(py, count as isize, isize::MAX, 1))?)
            } else {
                None
            };
            let mut st = this.st.borrow_mut(py);
            match rest {
                Some(rest) => {
                    st.backlog_size -= count.min(st.backlog_size);
                    if let Some(front) = st.backlog.front_mut() {
                        *front = (rest.unbind(), len - count);
                    }
                }
                None => {
                    st.backlog.pop_front();
                    st.backlog_size -= len.min(st.backlog_size);
                }
            }
        }
    }
    process_outgoing(slf)
}

/// asyncio's `_process_outgoing`: what the TLS object wrote goes to the transport
/// underneath (at the end of the event when inside one), then the application's flow
/// control.
pub(super) fn process_outgoing(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let (paused, batching) = {
        let st = this.st.borrow(py);
        (st.ssl_writing_paused, st.batching)
    };
    let mut emptied = false;
    if !paused {
        if batching {
            this.st.borrow_mut(py).deferred = true;
        } else if let Some(ssl) = this.ssl(py) {
            let data = ssl.outgoing_read(py)?;
            emptied = true;
            if !data.as_bytes().is_empty() {
                write_down(slf, &data)?;
            }
        }
    }
    control_app_writing(slf, emptied.then_some(0))
}

/// `transport.write(data)` on the transport underneath: natively on ferroloop's own.
fn write_down(slf: &Tls<'_>, data: &Bound<'_, PyBytes>) -> PyResult<()> {
    let py = slf.py();
    let (native, transport) = {
        let st = slf.get().st.borrow(py);
        (
            st.native.as_ref().map(|n| n.clone_ref(py)),
            st.transport.as_ref().map(|t| t.clone_ref(py)),
        )
    };
    // stats: TLS bytes out (data.len())
    match (native, transport) {
        (Some(n), _) => StreamTransport::write_bytes(n.bind(py), data),
        (None, Some(t)) => t.bind(py).call_method1("write", (data,)).map(drop),
        (None, None) => Ok(()),
    }
}

pub(super) fn write_buffer_size(this: &SslProtocol, py: Python<'_>) -> PyResult<usize> {
    let (deferred, size, ssl) = {
        let st = this.st.borrow(py);
        (
            st.deferred,
            st.backlog_size,
            st.ssl.as_ref().map(|s| s.clone_ref(py)),
        )
    };
    let pending = match ssl {
        Some(ssl) if !deferred => ssl.outgoing_pending(py)?,
        _ => 0,
    };
    Ok(pending + size)
}

/// asyncio's `_control_app_writing`; `outgoing`: the outgoing BIO's count when known.
pub(super) fn control_app_writing(slf: &Tls<'_>, outgoing: Option<usize>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let size = match outgoing {
        Some(n) => n + this.st.borrow(py).backlog_size,
        None => write_buffer_size(this, py)?,
    } as f64;
    let method = {
        let mut st = this.st.borrow_mut(py);
        if size >= st.outgoing_limits.high_cmp && !st.app_writing_paused {
            st.app_writing_paused = true;
            "pause_writing"
        } else if size <= st.outgoing_limits.low_cmp && st.app_writing_paused {
            st.app_writing_paused = false;
            "resume_writing"
        } else {
            return Ok(());
        }
    };
    let Some(protocol) = this.app_protocol(py) else {
        return Ok(());
    };
    if let Err(err) = protocol.call_method0(method) {
        if errors::propagates(py, &err) {
            return Err(err);
        }
        let ctx = PyDict::new(py);
        ctx.set_item("message", format!("protocol.{method}() failed"))?;
        ctx.set_item("exception", err.value(py))?;
        ctx.set_item(
            "transport",
            this.st
                .borrow(py)
                .app_transport
                .as_ref()
                .map(|t| t.clone_ref(py)),
        )?;
        ctx.set_item("protocol", slf)?;
        if let Some(lp) = this.loop_of(py) {
            lp.call_method1("call_exception_handler", (ctx,))?;
        }
    }
    Ok(())
}

// -- incoming --------------------------------------------------------------------------

pub(super) fn do_read(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    if !matches!(this.phase(py), Phase::Wrapped | Phase::Flushing) {
        return Ok(());
    }
    let result = (|| {
        let (paused, buffered) = {
            let st = this.st.borrow(py);
            (st.app_reading_paused, st.app_buffered)
        };
        if !paused {
            if buffered {
                read_buffered(slf)?;
            } else {
                read_copied(slf)?;
            }
            if this.st.borrow(py).backlog.is_empty() {
                process_outgoing(slf)?;
            } else {
                do_write(slf)?;
            }
        }
        control_ssl_reading(slf)
    })();
    match result {
        Err(err) if is_exception(py, &err) => fatal_error(slf, err, "Fatal error on SSL protocol"),
        other => other,
    }
}

/// How much a read can get now, None if nothing (see `Records`): asyncio reads until
/// `SSLWantReadError`, which this spares.
fn available(this: &SslProtocol, py: Python<'_>, ssl: &bio::Ssl) -> PyResult<Option<usize>> {
    if std::mem::take(&mut this.st.borrow_mut(py).plain_pending) {
        return Ok(Some(READ_CHUNK));
    }
    let pending = ssl.incoming_pending(py)?;
    Ok(match this.st.borrow_mut(py).records.available(pending) {
        Available::Nothing => None,
        Available::AtMost(n) => Some(n.max(1)),
        Available::Unknown => Some(READ_CHUNK),
    })
}

/// Everything decrypted goes to one `data_received()`.
fn read_copied(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let Some(ssl) = this.ssl(py) else {
        return Ok(());
    };
    let mut parts: Vec<Bound<'_, PyBytes>> = Vec::new();
    let mut eof = false;
    let mut first = true;
    while let Some(cap) = available(this, py, &ssl)? {
        // Checked for the first read just now; for the next ones, once each is done.
        let mut more = || -> PyResult<bool> {
            if std::mem::take(&mut first) {
                return Ok(true);
            }
            Ok(available(this, py, &ssl)?.is_some())
        };
        let (bytes, outcome) = ssl.read_bytes(py, cap, &mut more)?;
        parts.extend(bytes);
        match outcome {
            Filled::Eof => {
                eof = true;
                break;
            }
            Filled::Again | Filled::Drained => break,
            // OpenSSL may hold the rest of a record.
            Filled::Full => this.st.borrow_mut(py).plain_pending = true,
            Filled::More => {}
        }
        first = true;
    }
    // stats: TLS application bytes read
    let data = match parts.len() {
        0 => None,
        1 => parts.pop().map(Bound::into_any),
        _ => {
            let join = pyapi::cached_attr(py, &JOIN, "builtins", "bytes")?.getattr("join")?;
            Some(join.call1((PyBytes::new(py, b""), parts))?)
        }
    };
    if let Some(data) = data {
        if let Some(p) = this.app_protocol(py) {
            p.call_method1(pyo3::intern!(py, "data_received"), (data,))?;
        }
    }
    if eof {
        call_eof_received(slf)?;
        start_shutdown(slf)?;
    }
    Ok(())
}

fn read_buffered(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let Some(ssl) = this.ssl(py) else {
        return Ok(());
    };
    if available(this, py, &ssl)?.is_none() {
        return Ok(());
    }
    let Some(protocol) = this.app_protocol(py) else {
        return Ok(());
    };
    let hint = ssl.incoming_pending(py)?;
    let buf = protocol.call_method1(pyo3::intern!(py, "get_buffer"), (hint,))?;
    let wants = buf.len()?;
    let mut offset = 0;
    let mut count = 1;
    let attempt = (|| -> PyResult<()> {
        count = ssl.read_into(py, wants, &buf)?;
        if count == 0 {
            return Ok(());
        }
        offset = count;
        let view = PyMemoryView::from(&buf)?;
        while offset < wants {
            if available(this, py, &ssl)?.is_none() {
                return Ok(());
            }
            let rest = view.get_item(PySlice::new(py, offset as isize, isize::MAX, 1))?;
            count = ssl.read_into(py, wants - offset, &rest)?;
            if count == 0 {
                return Ok(());
            }
            offset += count;
        }
        // The buffer is full: OpenSSL may hold more, read on the next iteration.
        this.st.borrow_mut(py).plain_pending = true;
        let again = slf.getattr(pyo3::intern!(py, "_do_read"))?;
        this.call_soon(py, &again, &PyTuple::empty(py))?;
        Ok(())
    })();
    match attempt {
        Err(err) if bio::is_again(py, &err)? => {}
        Err(err) => return Err(err),
        Ok(()) => {}
    }
    if offset > 0 {
        protocol.call_method1(pyo3::intern!(py, "buffer_updated"), (offset,))?;
    }
    if count == 0 {
        call_eof_received(slf)?;
        start_shutdown(slf)?;
    }
    Ok(())
}

fn call_eof_received(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let protocol = {
        let mut st = this.st.borrow_mut(py);
        if st.app_state != AppState::ConMade {
            return Ok(());
        }
        st.app_state = AppState::Eof;
        st.app_protocol.as_ref().map(|p| p.clone_ref(py))
    };
    let Some(protocol) = protocol else {
        return Ok(());
    };
    match protocol
        .bind(py)
        .call_method0(pyo3::intern!(py, "eof_received"))
    {
        Ok(keep_open) => {
            if keep_open.is_truthy()? {
                pyapi::asyncio_logger(py)?.call_method1(
                    "warning",
                    ("returning true from eof_received() has no effect when using ssl",),
                )?;
            }
            Ok(())
        }
        Err(err) if errors::propagates(py, &err) => Err(err),
        Err(err) => fatal_error(slf, err, "Error calling eof_received()"),
    }
}

/// asyncio's `_control_ssl_reading`: the transport underneath pauses while the incoming
/// BIO holds more than its high-water mark.
pub(super) fn control_ssl_reading(slf: &Tls<'_>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let Some(ssl) = this.ssl(py) else {
        return Ok(());
    };
    let size = ssl.incoming_pending(py)? as f64;
    let method = {
        let mut st = this.st.borrow_mut(py);
        if size >= st.incoming_limits.high_cmp && !st.ssl_reading_paused {
            st.ssl_reading_paused = true;
            "pause_reading"
        } else if size <= st.incoming_limits.low_cmp && st.ssl_reading_paused {
            st.ssl_reading_paused = false;
            "resume_reading"
        } else {
            return Ok(());
        }
    };
    if let Some(t) = this.transport(py) {
        flush_deferred(slf)?;
        t.call_method0(method)?;
    }
    Ok(())
}

pub(super) fn fatal_error(slf: &Tls<'_>, err: PyErr, message: &str) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let exc = err.into_value(py).into_any();
    let exc = exc.bind(py);
    if let Some(t) = this.transport(py) {
        flush_deferred(slf)?;
        t.call_method1(pyo3::intern!(py, "_force_close"), (exc,))?;
    }
    if exc.is_instance_of::<PyOSError>() {
        if this.debug(py) {
            let kw = PyDict::new(py);
            kw.set_item("exc_info", exc)?;
            pyapi::asyncio_logger(py)?.call_method("debug", ("%r: %s", slf, message), Some(&kw))?;
        }
        return Ok(());
    }
    let cancelled =
        pyapi::cached_attr(py, &CANCELLED_ERROR, "asyncio.exceptions", "CancelledError")?;
    if exc.is_instance(&cancelled)? {
        return Ok(());
    }
    let ctx = PyDict::new(py);
    ctx.set_item("message", message)?;
    ctx.set_item("exception", exc)?;
    ctx.set_item("transport", this.transport(py))?;
    ctx.set_item("protocol", slf)?;
    if let Some(lp) = this.loop_of(py) {
        lp.call_method1("call_exception_handler", (ctx,))?;
    }
    Ok(())
}
