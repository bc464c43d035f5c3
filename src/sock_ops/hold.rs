//! A waiting call holds its socket: one more io reference, so a `close()` meanwhile only
//! marks it closed, and the loop's count of waiting calls, whose sockets it checks.

use nix::errno::Errno;
use pyo3::prelude::*;

use super::{SockCall, Stage, SOCKET_TYPE};
use crate::errors::os_error;
use crate::loop_core::LoopCore;

impl SockCall {
    /// The call waits: the socket stays open under it, and the loop counts it.
    ///
    /// A `socket.socket` gets one more io reference (`_io_refs`, as `makefile()` and
    /// uvloop take one), so a `close()` meanwhile only marks it closed: the fd cannot be
    /// closed and its number reused while it is watched. The loop's periodic check
    /// (`LoopCore::check_sock_calls`) then ends the call with EBADF, and releasing the
    /// reference closes the socket for real.
    pub(super) fn hold(slf: &Bound<'_, Self>, lp: &Bound<'_, LoopCore>) -> PyResult<()> {
        let py = slf.py();
        let Some((_, sock)) = slf.get().parts(py) else {
            return Ok(());
        };
        let native = slf.get().st.borrow(py).native;
        let is_socket = native || {
            let socket_type = crate::pyapi::cached_attr(py, &SOCKET_TYPE, "socket", "socket")?;
            sock.is_instance(&socket_type)?
        };
        let io_ref = is_socket && add_io_ref(&sock);
        {
            let mut st = slf.get().st.borrow_mut(py);
            st.held = true;
            st.io_ref = io_ref;
        }
        LoopCore::sock_call_waits(lp)
    }

    /// The call no longer waits: the loop stops counting it and its io reference goes
    /// (closing the socket if `close()` was called meanwhile). Idempotent.
    pub(super) fn release(&self, py: Python<'_>) -> PyResult<()> {
        let (lp, sock, held, io_ref) = {
            let mut st = self.st.borrow_mut(py);
            if !st.held && !st.io_ref {
                return Ok(());
            }
            (
                st.loop_.as_ref().map(|l| l.clone_ref(py)),
                st.sock.as_ref().map(|s| s.clone_ref(py)),
                std::mem::take(&mut st.held),
                std::mem::take(&mut st.io_ref),
            )
        };
        if let (true, Some(lp)) = (held, lp) {
            lp.get().sock_call_ends(py);
        }
        if let (true, Some(sock)) = (io_ref, sock) {
            drop_io_ref(sock.bind(py))?;
        }
        Ok(())
    }

    /// For the loop's check: if the socket was closed under the waiting call, the call
    /// ends with EBADF, the error any call on a closed socket gives.
    pub(crate) fn end_if_closed(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (fut, sock, io_ref) = {
            let st = slf.get().st.borrow(py);
            let (Stage::Waiting(fut), Some(sock)) = (&st.stage, &st.sock) else {
                return Ok(());
            };
            (fut.clone_ref(py), sock.clone_ref(py), st.io_ref)
        };
        let sock = sock.bind(py);
        let closed = if io_ref {
            sock.getattr(pyo3::intern!(py, "_closed"))?.is_truthy()?
        } else {
            sock.call_method0(pyo3::intern!(py, "fileno"))
                .and_then(|n| n.extract::<i64>())
                .map_or(true, |n| n < 0)
        };
        if !closed {
            return Ok(());
        }
        Self::unwatch(slf)?;
        slf.get().release(py)?;
        let fut = fut.bind(py);
        if !fut.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
            let err = os_error(Errno::EBADF).into_value(py);
            fut.call_method1(pyo3::intern!(py, "set_exception"), (err,))?;
        }
        Ok(())
    }

    /// The loop closes under the waiting call: nothing will complete it, and its socket
    /// is released (a socket closed meanwhile closes now, as on uvloop).
    pub(crate) fn loop_closed(&self, py: Python<'_>) -> PyResult<()> {
        self.release(py)?;
        self.finish(py);
        Ok(())
    }
}

impl Drop for SockCall {
    /// A call dropped while it waits (its task collected) still gives its socket back.
    fn drop(&mut self) {
        Python::attach(|py| {
            if let Err(e) = self.release(py) {
                e.write_unraisable(py, None);
            }
        })
    }
}

/// `socket._decref_socketios()`, without the Python frame: one io reference less, and
/// the socket closed for real if `close()` was called meanwhile.
fn drop_io_ref(sock: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = sock.py();
    let name = pyo3::intern!(py, "_io_refs");
    let n: i64 = sock.getattr(name)?.extract()?;
    if n > 0 {
        sock.setattr(name, n - 1)?;
    }
    if sock.getattr(pyo3::intern!(py, "_closed"))?.is_truthy()? {
        sock.call_method0(pyo3::intern!(py, "close"))?;
    }
    Ok(())
}

/// `sock._io_refs += 1`, if the socket has a plain int count there.
fn add_io_ref(sock: &Bound<'_, PyAny>) -> bool {
    let py = sock.py();
    let name = pyo3::intern!(py, "_io_refs");
    let Ok(n) = sock.getattr(name).and_then(|n| n.extract::<i64>()) else {
        return false;
    };
    sock.setattr(name, n + 1).is_ok()
}
