//! Reads for ferroloop's TLS layer above a stream transport: received straight into the
//! buffer its incoming BIO reads from, and handed over natively (asyncio calls the TLS
//! protocol's `get_buffer()` and `buffer_updated()`).

use nix::errno::Errno;
use pyo3::prelude::*;

use super::StreamTransport;
use crate::errors::os_error;
use crate::transports::tls::{self, InputBuf, SslProtocol};

impl StreamTransport {
    pub(super) fn read_tls(slf: &Bound<'_, Self>, tls: &Bound<'_, SslProtocol>) -> PyResult<()> {
        let py = slf.py();
        let input = InputBuf::get(py)?.get();
        let n = match input.recv(slf.get().fd) {
            // The wire bytes, as any read of this transport (the TLS layer counts the
            // plaintext it delivers under `tls`).
            Ok(n) => {
                slf.get().io.read(n);
                n
            }
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(()),
            Err(e) => {
                return Self::fatal_error(slf, os_error(e), "Fatal read error on socket transport")
            }
        };
        if n == 0 {
            return Self::on_eof(slf);
        }
        if let Err(err) = tls::received(tls, input, n) {
            return Self::fatal_error(
                slf,
                err,
                "Fatal error: protocol.buffer_updated() call failed.",
            );
        }
        Ok(())
    }
}
