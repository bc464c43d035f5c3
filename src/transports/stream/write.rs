//! The write path, as asyncio's `_SelectorSocketTransport.write`: a write is sent at once
//! as far as the socket takes it and the rest buffered, or, made during a callback, held
//! for the loop to send with the callback's other writes (coalesce.rs).

use std::io::IoSlice;

use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

use super::{StreamTransport, IOV_MAX, LOG_THRESHOLD_FOR_CONNLOST_WRITES};
use crate::errors::os_error;
use crate::loop_core::fds::Dir;
use crate::pyapi;

/// The bytes of a bytes-like object, borrowed: `bytes` directly, `bytearray` and
/// `memoryview` through a buffer view (copied only when not C-contiguous).
pub(super) enum Data<'py> {
    Bytes(Bound<'py, PyBytes>),
    View(PyUntypedBuffer),
}

impl Data<'_> {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Data::Bytes(b) => b.as_bytes(),
            Data::View(v) => pyapi::buffer_bytes(v),
        }
    }
}

pub(super) fn bytes_like<'py>(data: &Bound<'py, PyAny>) -> PyResult<Option<Data<'py>>> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(Some(Data::Bytes(b.clone())));
    }
    if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
        let view = PyUntypedBuffer::get(data)?;
        if view.is_c_contiguous() {
            return Ok(Some(Data::View(view)));
        }
        // A strided memoryview: sent as its bytes in order (asyncio's send() would fail
        // on it with BufferError and close the transport; writing it is more useful).
        let bytes = data.call_method0("tobytes")?;
        return Ok(Some(Data::Bytes(bytes.cast_into::<PyBytes>()?)));
    }
    Ok(None)
}

impl StreamTransport {
    /// A write once the connection is lost: counted and dropped, with asyncio's warning
    /// from the fifth on. False if the connection is not lost.
    pub(super) fn dropped_after_loss(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        let warn = {
            let mut st = slf.get().st.borrow_mut(py);
            if st.conn_lost == 0 {
                return Ok(false);
            }
            st.conn_lost += 1;
            st.conn_lost > LOG_THRESHOLD_FOR_CONNLOST_WRITES
        };
        if warn {
            pyapi::asyncio_logger(py)?
                .call_method1("warning", ("socket.send() raised exception.",))?;
        }
        Ok(true)
    }

    /// asyncio's `write`, for one chunk or many (a single `sendmsg`, no joining copy).
    pub(super) fn send_or_buffer(slf: &Bound<'_, Self>, chunks: &[Data<'_>]) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let total: usize = chunks.iter().map(|c| c.as_slice().len()).sum();
        let backlogged = {
            let st = this.st.borrow(py);
            if st.eof {
                return Err(PyRuntimeError::new_err(
                    "Cannot call write() after write_eof()",
                ));
            }
            if st.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err(
                    "unable to write; sendfile is in progress",
                ));
            }
            if total == 0 {
                return Ok(());
            }
            st.pending() > 0 && !st.deferred
        };
        if Self::dropped_after_loss(slf)? {
            return Ok(());
        }
        if backlogged {
            // The socket is watched for writing already: the data queues behind the rest.
            Self::buffer_rest(slf, chunks, 0);
            return Self::maybe_pause_protocol(slf);
        }
        if Self::try_defer(slf, chunks, total)? {
            return Ok(());
        }
        Self::send_now(slf, chunks)
    }

    /// Sends what is deferred (if anything) followed by `chunks`, in one call, as far as
    /// the socket takes them; the rest is buffered and the socket watched for writing.
    /// Only called with nothing watched (no backlog).
    pub(super) fn send_now(slf: &Bound<'_, Self>, chunks: &[Data<'_>]) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (held, result) = {
            let mut guard = this.st.borrow_mut(py);
            let st = &mut *guard;
            st.deferred = false;
            let held = &st.wbuf[st.head..];
            let result = match (held.is_empty(), chunks) {
                // The common cases: a plain send(2) is cheaper than sendmsg(2).
                (true, [one]) => socket::send(this.fd, one.as_slice(), MsgFlags::MSG_NOSIGNAL),
                (false, []) => socket::send(this.fd, held, MsgFlags::MSG_NOSIGNAL),
                _ => {
                    // At most IOV_MAX buffers per call; the rest is buffered below.
                    let iov: Vec<IoSlice<'_>> = std::iter::once(held)
                        .filter(|h| !h.is_empty())
                        .chain(chunks.iter().map(Data::as_slice))
                        .take(IOV_MAX)
                        .map(IoSlice::new)
                        .collect();
                    socket::sendmsg::<()>(this.fd, &iov, &[], MsgFlags::MSG_NOSIGNAL, None)
                }
            };
            (held.len(), result)
        };
        let sent = match result {
            Ok(n) => {
                this.io.wrote(n);
                n
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => 0,
            Err(e) => {
                return Self::fatal_error(
                    slf,
                    os_error(e),
                    "Fatal write error on socket transport",
                );
            }
        };
        let total = held + chunks.iter().map(|c| c.as_slice().len()).sum::<usize>();
        this.st.borrow_mut(py).consume(sent.min(held));
        if sent == total {
            return Ok(());
        }
        // Watched before the new data is buffered, as asyncio: on a closed loop the
        // RuntimeError leaves nothing of it behind.
        Self::add_io(slf, Dir::Write)?;
        Self::buffer_rest(slf, chunks, sent.saturating_sub(held));
        Self::maybe_pause_protocol(slf)
    }

    /// Appends `chunks` to the buffer, less their first `skip` bytes (already sent).
    pub(super) fn buffer_rest(slf: &Bound<'_, Self>, chunks: &[Data<'_>], mut skip: usize) {
        let mut st = slf.get().st.borrow_mut(slf.py());
        for c in chunks {
            let s = c.as_slice();
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            st.wbuf.extend_from_slice(&s[skip..]);
            skip = 0;
        }
    }

    /// `write(data)` for ferroloop's TLS layer above, which hands over its records.
    pub(crate) fn write_bytes(slf: &Bound<'_, Self>, data: &Bound<'_, PyBytes>) -> PyResult<()> {
        Self::send_or_buffer(slf, &[Data::Bytes(data.clone())])
    }
}
