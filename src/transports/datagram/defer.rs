//! Sends deferred while the transport delivers a burst of datagrams: what the protocol's
//! `datagram_received()` sends waits until the burst ends, then leaves with one
//! sendmmsg(2) per 32 datagrams, consecutive ones of one size to one peer as one UDP GSO
//! message (`syscalls/batch_send.rs`). The kernel's work per datagram sent (routing,
//! building the packet and, over loopback, delivering it to the peer) is most of an echo
//! server's CPU; a run of replies to one peer then pays for it about once.
//!
//! asyncio sends at once, so the deferral must not show: only immutable data (an exact
//! `bytes`) to an address already in the kernel's form waits, behind nothing buffered;
//! anything else sends the deferred datagrams first, and so does every call that could
//! tell (`close`, `abort`, `get_write_buffer_size`, `set_write_buffer_limits`,
//! `set_protocol`, the `_sock` attribute). A send that fails is reported to
//! `error_received()` when the burst ends instead of from inside `sendto()`, and the rest
//! are still sent, as they were when `sendto()` returned; one that would block is buffered
//! with those behind it, as asyncio buffers it. (A send through the `TransportSocket` of
//! `get_extra_info('socket')`, whose send methods 3.10 and 3.11 still have, deprecated,
//! is not seen: it may overtake the burst's replies.)

use nix::errno::Errno;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::DatagramTransport;
use crate::errors::os_error;
use crate::loop_core::fds::Dir;
use crate::syscalls::batch_send::{self, Outcome, SEND_BATCH};
use crate::syscalls::SockAddr;

/// A datagram `sendto()` accepted and has not sent yet.
pub(super) struct Outgoing {
    data: Py<PyBytes>,
    /// The destination as given (kept for the write buffer, should it block).
    to: Py<PyAny>,
    /// The destination in the kernel's form; None when the socket is connected.
    addr: Option<SockAddr>,
}

impl Outgoing {
    pub(super) fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.data)?;
        visit.call(&self.to)
    }
}

impl DatagramTransport {
    /// Defers the send of `data` to `to` if the burst allows it (`deferring` set, nothing
    /// buffered, checked by the caller): whether it was deferred.
    pub(super) fn defer(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        to: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        if !this.native {
            return Ok(false);
        }
        // A bytearray or memoryview could change before the burst ends.
        let Ok(bytes) = data.cast_exact::<PyBytes>() else {
            return Ok(false);
        };
        let addr = if this.connected {
            None
        } else {
            match this.destination(py, to) {
                Some(sa) => Some(sa),
                None => return Ok(false),
            }
        };
        let full = {
            let mut st = this.st.borrow_mut(py);
            st.out.push_back(Outgoing {
                data: bytes.clone().unbind(),
                to: to.clone().unbind(),
                addr,
            });
            st.out.len() >= SEND_BATCH
        };
        if full {
            Self::flush_out(slf)?;
        }
        Ok(true)
    }

    /// Starts a burst: sends are deferred until `end_burst`. Whether one had already
    /// started (a `_read_ready()` called from `datagram_received()`), which then ends it.
    pub(super) fn begin_burst(&self, py: Python<'_>) -> bool {
        let mut st = self.st.borrow_mut(py);
        std::mem::replace(&mut st.deferring, self.native)
    }

    /// Ends the burst `begin_burst` started: the deferred datagrams are sent.
    pub(super) fn end_burst(slf: &Bound<'_, Self>, nested: bool) -> PyResult<()> {
        if nested {
            return Ok(());
        }
        let flushed = Self::flush_out(slf);
        // flush_out returns with nothing deferred, and no Python code has run since.
        slf.get().st.borrow_mut(slf.py()).deferring = false;
        flushed
    }

    /// Sends every deferred datagram (those deferred meanwhile by `error_received()`
    /// included, in order). The first exception `error_received()` raised comes back once
    /// the rest are sent.
    pub(super) fn flush_out(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut raised: Option<PyErr> = None;
        loop {
            let gso = this.gso(py);
            let result = {
                let st = this.st.borrow(py);
                if st.out.is_empty() {
                    break;
                }
                if st.links.file.is_none() {
                    // The socket is closed: connection_lost() has run.
                    drop(st);
                    let dropped = std::mem::take(&mut this.st.borrow_mut(py).out);
                    drop(dropped);
                    break;
                }
                let msgs = st
                    .out
                    .iter()
                    .map(|o| (o.data.bind(py).as_bytes(), o.addr.as_ref()));
                batch_send::send_batch(this.fd, msgs, gso)
            };
            match result {
                Outcome::Sent(0) => {
                    // Not seen from sendmmsg(2) without blocking; kept, not retried.
                    Self::buffer_out(slf)?;
                    break;
                }
                Outcome::Sent(n) => {
                    let sent: Vec<Outgoing> = {
                        let mut st = this.st.borrow_mut(py);
                        let n = n.min(st.out.len());
                        st.out.drain(..n).collect()
                    };
                    for o in &sent {
                        // One write per datagram sent, an empty one included.
                        this.io.wrote(o.data.bind(py).as_bytes().len());
                    }
                    drop(sent);
                }
                Outcome::Failed(Errno::EAGAIN | Errno::EINTR, _) => {
                    Self::buffer_out(slf)?;
                    break;
                }
                Outcome::Failed(
                    Errno::EINVAL
                    | Errno::EIO
                    | Errno::EMSGSIZE
                    | Errno::ENOPROTOOPT
                    | Errno::EOPNOTSUPP,
                    carried,
                ) if carried > 1 => {
                    // The path cannot take a GSO message (a segment over its MTU, no
                    // checksum offload, IPsec, UDP-Lite): one datagram per message from
                    // now on, each send's own error reported as before.
                    this.st.borrow_mut(py).gso = Some(false);
                }
                Outcome::Failed(e, _) => {
                    // That datagram is dropped and reported, as asyncio's sendto() does;
                    // the next call goes on from the one after it (with GSO, the first
                    // datagram of a message stands for it: its own send would have
                    // failed first, an error pending on the socket included).
                    let failed = this.st.borrow_mut(py).out.pop_front();
                    drop(failed);
                    if let Some(p) = this.protocol(py) {
                        let reported = p
                            .bind(py)
                            .call_method1(pyo3::intern!(py, "error_received"), (os_error(e),));
                        if let Err(err) = reported {
                            raised.get_or_insert(err);
                        }
                    }
                }
            }
        }
        raised.map_or(Ok(()), Err)
    }

    /// Whether the deferred datagrams may leave as GSO messages: UDP sockets, on a kernel
    /// that segments (asked once).
    fn gso(&self, py: Python<'_>) -> bool {
        let mut st = self.st.borrow_mut(py);
        *st.gso
            .get_or_insert_with(|| self.batches() && batch_send::gso_supported(self.fd))
    }

    /// The deferred datagrams into the write buffer, behind one that would block, as
    /// asyncio's `sendto()` buffers it and what follows.
    fn buffer_out(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let was_empty = {
            let mut st = this.st.borrow_mut(py);
            let was_empty = st.buffer.is_empty();
            let out = std::mem::take(&mut st.out);
            for o in out {
                st.buffer_size += o.data.bind(py).as_bytes().len() + this.header;
                st.buffer.push_back((o.data, o.to));
            }
            was_empty
        };
        if was_empty {
            Self::watch(slf, Dir::Write)?;
        }
        Self::maybe_pause_protocol(slf)
    }
}
