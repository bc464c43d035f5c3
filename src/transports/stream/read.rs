//! The read path, as asyncio's `_SelectorSocketTransport._read_ready__*`: `recv` into a
//! new bytes object for `data_received`, or into the protocol's own buffer for
//! `buffer_updated`; end of file through `eof_received`.

use nix::errno::Errno;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use super::{StreamTransport, MAX_READ};
use crate::errors::os_error;
use crate::loop_core::fds::Dir;
use crate::pyapi;
use crate::syscalls;

impl StreamTransport {
    pub(super) fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.debug(py) {
            pyapi::asyncio_logger(py)?
                .call_method1("debug", ("%r received EOF", this.owner(py)))?;
        }
        let Some(protocol) = this.protocol(py) else {
            return Ok(());
        };
        match protocol.call_method0(pyo3::intern!(py, "eof_received")) {
            Err(err) => Self::fatal_error(
                slf,
                err,
                "Fatal error: protocol.eof_received() call failed.",
            ),
            Ok(keep_open) => {
                if keep_open.is_truthy()? {
                    this.remove_io(py, Dir::Read)
                } else {
                    Self::start_close(slf)
                }
            }
        }
    }

    pub(super) fn read_data_received(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let data = match syscalls::recv_bytes(py, this.fd, MAX_READ)? {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Self::fatal_error(slf, os_error(e), "Fatal read error on socket transport")
            }
        };
        this.io.read(data.as_bytes().len());
        if data.as_bytes().is_empty() {
            return Self::on_eof(slf);
        }
        let Some(protocol) = this.protocol(py) else {
            return Ok(());
        };
        if let Err(err) = protocol.call_method1(pyo3::intern!(py, "data_received"), (data,)) {
            return Self::fatal_error(
                slf,
                err,
                "Fatal error: protocol.data_received() call failed.",
            );
        }
        Ok(())
    }

    pub(super) fn read_get_buffer(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(protocol) = this.protocol(py) else {
            return Ok(());
        };
        let buf = match protocol
            .call_method1(pyo3::intern!(py, "get_buffer"), (-1,))
            .and_then(|b| {
                if b.len()? == 0 {
                    Err(PyRuntimeError::new_err(
                        "get_buffer() returned an empty buffer",
                    ))
                } else {
                    Ok(b)
                }
            }) {
            Ok(b) => b,
            Err(err) => {
                return Self::fatal_error(
                    slf,
                    err,
                    "Fatal error: protocol.get_buffer() call failed.",
                )
            }
        };
        // The protocol's own buffer is filled in place: by recv(2) when it is a writable
        // C-contiguous buffer, else through the socket object as asyncio does
        // (`sock.recv_into`), which takes any writable buffer or raises its TypeError.
        let nbytes = match syscalls::recv_into_buffer(this.fd, &buf) {
            Some(Ok(n)) => n,
            Some(Err(Errno::EAGAIN | Errno::EINTR)) => return Ok(()),
            Some(Err(e)) => {
                return Self::fatal_error(slf, os_error(e), "Fatal read error on socket transport")
            }
            None => {
                let sock = this.sock_object(py)?;
                let Some(sock) = sock else { return Ok(()) };
                match sock.call_method1(pyo3::intern!(py, "recv_into"), (buf,)) {
                    Ok(n) => n.extract::<usize>()?,
                    Err(err) => {
                        if err.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py)
                            || err.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py)
                        {
                            return Ok(());
                        }
                        return Self::fatal_error(slf, err, "Fatal read error on socket transport");
                    }
                }
            }
        };
        this.io.read(nbytes);
        if nbytes == 0 {
            return Self::on_eof(slf);
        }
        if let Err(err) = protocol.call_method1(pyo3::intern!(py, "buffer_updated"), (nbytes,)) {
            return Self::fatal_error(
                slf,
                err,
                "Fatal error: protocol.buffer_updated() call failed.",
            );
        }
        Ok(())
    }
}
