//! The datagram transport's write side, as asyncio's: `sendto()` tries the syscall at
//! once and buffers only when the socket would block; `_sendto_ready()` drains the buffer;
//! the water marks and `pause_writing()`/`resume_writing()`.

use nix::errno::Errno;
use pyo3::exceptions::{
    PyBlockingIOError, PyInterruptedError, PyOSError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

use super::{addr, DatagramTransport, LOG_THRESHOLD_FOR_CONNLOST_WRITES};
use crate::errors::os_error;
use crate::loop_core::fds::Dir;
use crate::pyapi;
use crate::syscalls;
use crate::transports::base;
use crate::transports::flow;

/// What one attempt to send a datagram came to.
enum Sent {
    Done,
    /// The socket buffer is full (EAGAIN, or EINTR: asyncio retries both later).
    WouldBlock,
    /// An OSError, for the protocol's `error_received()`.
    Failed(PyErr),
    /// Anything else (a TypeError from the socket module…): fatal.
    Fatal(PyErr),
}

impl Sent {
    fn from_errno(e: Errno) -> Sent {
        match e {
            Errno::EAGAIN | Errno::EINTR => Sent::WouldBlock,
            e => Sent::Failed(os_error(e)),
        }
    }

    fn from_python(py: Python<'_>, result: PyResult<Bound<'_, PyAny>>) -> Sent {
        match result {
            Ok(_) => Sent::Done,
            Err(e)
                if e.is_instance_of::<PyBlockingIOError>(py)
                    || e.is_instance_of::<PyInterruptedError>(py) =>
            {
                Sent::WouldBlock
            }
            Err(e) if e.is_instance_of::<PyOSError>(py) => Sent::Failed(e),
            Err(e) => Sent::Fatal(e),
        }
    }
}

/// Whether `data` is one of the bytes-like types asyncio's `sendto()` takes.
fn is_bytes_like(data: &Bound<'_, PyAny>) -> bool {
    data.is_instance_of::<PyBytes>()
        || data.is_instance_of::<PyByteArray>()
        || data.is_instance_of::<PyMemoryView>()
}

/// The bytes of `data` for a syscall (None: a strided memoryview, left to the socket
/// module, which refuses it as asyncio's users see).
fn contiguous(data: &Bound<'_, PyAny>) -> PyResult<Option<pyo3::buffer::PyUntypedBuffer>> {
    let view = pyo3::buffer::PyUntypedBuffer::get(data)?;
    Ok(view.is_c_contiguous().then_some(view))
}

impl DatagramTransport {
    /// One send of `data` to `to` (ignored when connected), by syscall when the socket
    /// and the address allow it, else by the socket's own `send`/`sendto`.
    fn send_one(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        to: &Bound<'_, PyAny>,
    ) -> PyResult<Sent> {
        let connected = self.connected;
        if self.native {
            let send = |bytes: &[u8]| -> Option<Sent> {
                let dest = if connected {
                    None
                } else {
                    Some(self.destination(py, to)?)
                };
                Some(match syscalls::sendto_raw(self.fd, bytes, dest.as_ref()) {
                    Ok(n) => {
                        // One write per datagram sent, an empty one included (3.13+).
                        self.io.wrote(n);
                        Sent::Done
                    }
                    Err(e) => Sent::from_errno(e),
                })
            };
            let sent = if let Ok(b) = data.cast::<PyBytes>() {
                send(b.as_bytes())
            } else {
                contiguous(data)?.and_then(|view| send(pyapi::buffer_bytes(&view)))
            };
            if let Some(sent) = sent {
                return Ok(sent);
            }
        }
        let Some(sock) = self.sock(py) else {
            return Ok(Sent::Done);
        };
        let sock = sock.bind(py);
        let result = if connected {
            sock.call_method1("send", (data,))
        } else {
            sock.call_method1("sendto", (data, to))
        };
        if let Ok(n) = &result {
            // What send()/sendto() returns: the datagram's bytes (0 from a subclass that
            // returns something else; it still sent one datagram).
            self.io.wrote(n.extract::<usize>().unwrap_or(0));
        }
        Ok(Sent::from_python(py, result))
    }

    /// The kernel's form of a destination: cached, or converted and cached; None if the
    /// socket module has to convert it.
    pub(super) fn destination(
        &self,
        py: Python<'_>,
        to: &Bound<'_, PyAny>,
    ) -> Option<syscalls::SockAddr> {
        if let Some(sa) = self.st.borrow(py).addrs.lookup_to(to) {
            return Some(sa);
        }
        let sa = addr::from_python(self.family, to)?;
        let old = self
            .st
            .borrow_mut(py)
            .addrs
            .store_to(to.clone().unbind(), sa);
        drop(old);
        Some(sa)
    }

    pub(super) fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let pause = {
            let mut st = slf.get().st.borrow_mut(py);
            let over = st.buffer_size > st.marks.high && !st.protocol_paused;
            if over {
                st.protocol_paused = true;
            }
            over
        };
        if pause {
            Self::notify_flow(slf, "pause_writing")?;
        }
        Ok(())
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let resume = {
            let mut st = slf.get().st.borrow_mut(py);
            let under = st.protocol_paused && st.buffer_size <= st.marks.low;
            if under {
                st.protocol_paused = false;
            }
            under
        };
        if resume {
            Self::notify_flow(slf, "resume_writing")?;
        }
        Ok(())
    }

    fn notify_flow(slf: &Bound<'_, Self>, method: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(protocol) = this.protocol(py) else {
            return Ok(());
        };
        if let Some(err) = flow::notify(protocol.bind(py), method)? {
            if let Some(lp) = this.loop_of(py) {
                let exc = err.into_value(py).into_any();
                let message = format!("protocol.{method}() failed");
                base::report(
                    &lp,
                    &message,
                    exc.bind(py),
                    this.owner(py).as_ref(),
                    Some(&protocol),
                )?;
            }
        }
        Ok(())
    }

    /// Counts a datagram dropped because the transport is closed, warning as asyncio does
    /// from the fifth on.
    fn drop_datagram(&self, py: Python<'_>, what: &str) -> PyResult<()> {
        let warn = {
            let mut st = self.st.borrow_mut(py);
            let warn = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
            st.conn_lost += 1;
            warn
        };
        if warn {
            base::log(
                py,
                "warning",
                (format!("socket.{what}() raised exception."),),
            )?;
        }
        Ok(())
    }
}

impl DatagramTransport {
    /// asyncio's `sendto(data, addr=None)`.
    pub(super) fn send_datagram(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !is_bytes_like(data) {
            // asyncio's f"...not {type(data).__name__!r}": the name's Python repr.
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {}",
                data.get_type().name()?.repr()?
            )));
        }
        let none = py.None().into_bound(py);
        let mut to = addr.unwrap_or(&none).clone();
        let (address, lost, sock_gone) = {
            let st = this.st.borrow(py);
            (
                st.address.as_ref().map(|a| a.clone_ref(py).into_bound(py)),
                st.conn_lost > 0,
                st.links.file.is_none(),
            )
        };
        if sock_gone && address.is_none() {
            // Once connection_lost has run, an unconnected endpoint drops the datagram
            // (asyncio raises AttributeError from inside the transport; uvloop drops).
            return this.drop_datagram(py, "sendto");
        }
        if !this.sends_empty && data.len()? == 0 {
            // Before 3.13 an empty datagram is not sent (gh-113812 sends it).
            return Ok(());
        }
        if let Some(address) = &address {
            // `if addr not in (None, self._address)`.
            if !to.is_none() && !to.is(address) && !to.eq(address)? {
                return Err(PyValueError::new_err(format!(
                    "Invalid address: must be None or {}",
                    address.str()?
                )));
            }
            to = address.clone();
            if lost {
                return this.drop_datagram(py, "send");
            }
        }
        let (empty, deferring) = {
            let st = this.st.borrow(py);
            (st.buffer.is_empty(), st.deferring)
        };
        if empty && deferring {
            if Self::defer(slf, data, &to)? {
                return Ok(());
            }
            // Not deferred: what was goes first.
            Self::flush_out(slf)?;
        }
        if this.st.borrow(py).buffer.is_empty() {
            match this.send_one(py, data, &to)? {
                Sent::Done => return Ok(()),
                Sent::WouldBlock => Self::watch(slf, Dir::Write)?,
                Sent::Failed(err) => {
                    if let Some(p) = this.protocol(py) {
                        p.bind(py).call_method1("error_received", (err,))?;
                    }
                    return Ok(());
                }
                Sent::Fatal(err) => {
                    return Self::fatal_error(slf, err, "Fatal write error on datagram transport");
                }
            }
        }
        // What is buffered is immutable: `bytes(data)`.
        let bytes = match data.cast::<PyBytes>() {
            Ok(b) if b.is_exact_instance_of::<PyBytes>() => b.clone(),
            _ => py
                .get_type::<PyBytes>()
                .call1((data,))?
                .cast_into::<PyBytes>()?,
        };
        {
            let mut st = this.st.borrow_mut(py);
            st.buffer_size += bytes.as_bytes().len() + this.header;
            st.buffer.push_back((bytes.unbind(), to.unbind()));
        }
        Self::maybe_pause_protocol(slf)
    }

    /// asyncio's `_sendto_ready()`: the buffer drained as far as the socket takes it.
    pub(super) fn drain(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        loop {
            let next = {
                let mut st = this.st.borrow_mut(py);
                let next = st.buffer.pop_front();
                if let Some((data, _)) = &next {
                    st.buffer_size = st
                        .buffer_size
                        .saturating_sub(data.bind(py).as_bytes().len() + this.header);
                }
                next
            };
            let Some((data, to)) = next else {
                break;
            };
            match this.send_one(py, data.bind(py).as_any(), to.bind(py))? {
                Sent::Done => {}
                Sent::WouldBlock => {
                    let mut st = this.st.borrow_mut(py);
                    st.buffer_size += data.bind(py).as_bytes().len() + this.header;
                    st.buffer.push_front((data, to));
                    break;
                }
                Sent::Failed(err) => {
                    if let Some(p) = this.protocol(py) {
                        p.bind(py).call_method1("error_received", (err,))?;
                    }
                    return Ok(());
                }
                Sent::Fatal(err) => {
                    return Self::fatal_error(slf, err, "Fatal write error on datagram transport");
                }
            }
        }
        // May append to the buffer.
        Self::maybe_resume_protocol(slf)?;
        let (empty, closing) = {
            let st = this.st.borrow(py);
            (st.buffer.is_empty(), st.closing)
        };
        if empty {
            this.unwatch(py, Dir::Write)?;
            if closing {
                this.connection_lost(py, &py.None().into_bound(py))?;
            }
        }
        Ok(())
    }
}
