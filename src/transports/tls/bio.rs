//! The TLS layer's plumbing into CPython's `ssl` module: the calls on an `SSLObject` and
//! its two `MemoryBIO`s, the buffer the socket is read into, and the record tracker that
//! tells when one more `read()` could only raise `SSLWantReadError`.

use std::collections::VecDeque;
use std::os::raw::c_int;

use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::exceptions::{PyBufferError, PyRuntimeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;

use crate::gil_cell::GilCell;
use crate::pyapi;

/// asyncio's `SSLProtocol.max_size`: the most one read from the socket or from the TLS
/// object asks for.
pub(crate) const MAX_SIZE: usize = 256 * 1024;

/// The largest TLS record body OpenSSL takes without judging the header at once: 2^14
/// plaintext bytes plus TLS 1.3's 256 of expansion. A header announcing more (TLS 1.2's
/// CBC padding can), or anything else unusual, switches the tracker off (see `Records`).
const MAX_RECORD_BODY: usize = 16384 + 256;

static WANT_READ: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SYSCALL_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SSL_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ZERO_RETURN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SSL_OBJECT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static INPUT: PyOnceLock<Py<InputBuf>> = PyOnceLock::new();
static WINDOW: PyOnceLock<Py<Window>> = PyOnceLock::new();

/// What one read asks for when nothing tells how much there is: a record's plaintext is
/// at most 16 KiB; one byte more tells a whole record from a cut one.
pub(crate) const READ_CHUNK: usize = 16384 + 1;

unsafe extern "C" {
    // CPython's exported `_PyBytes_Resize` (pyo3-ffi keeps its binding crate-private).
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> i32;
}

/// asyncio's `SSLAgainErrors`: `SSLWantReadError` and `SSLSyscallError`, which end a
/// read, a handshake step or a shutdown step until more bytes arrive.
pub(crate) fn is_again(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    let want = pyapi::cached_attr(py, &WANT_READ, "ssl", "SSLWantReadError")?;
    let syscall = pyapi::cached_attr(py, &SYSCALL_ERROR, "ssl", "SSLSyscallError")?;
    let value = err.value(py);
    Ok(value.is_instance(&want)? || value.is_instance(&syscall)?)
}

/// `SSLZeroReturnError`: a read after the peer's close_notify once ours is sent too
/// (before, the read returns empty).
fn is_zero_return(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    let cls = pyapi::cached_attr(py, &ZERO_RETURN, "ssl", "SSLZeroReturnError")?;
    err.value(py).is_instance(&cls)
}

pub(crate) fn is_ssl_error(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    let ssl_error = pyapi::cached_attr(py, &SSL_ERROR, "ssl", "SSLError")?;
    err.value(py).is_instance(&ssl_error)
}

/// The socket's bytes, received straight into this buffer and handed to
/// `MemoryBIO.write()` through the buffer protocol (no bytes object per read). One per
/// process: it is only used while the GIL is held, between the `recv(2)` and the write,
/// and nothing keeps a view of it (`MemoryBIO.write` copies and lets go).
#[pyclass(module = "ferroloop._core", name = "_TLSInput", frozen)]
pub(crate) struct InputBuf {
    mem: Memory,
    /// How many bytes of the buffer the next view exposes.
    len: GilCell<usize>,
}

/// A fixed allocation of `MAX_SIZE` bytes that lives as long as its `InputBuf`: views
/// point into it, so it is never moved or resized.
struct Memory(*mut u8);

// SAFETY: the memory is only touched with the GIL held (recv into it, views of it read
// by C code under the GIL), so two threads never reach it at once.
unsafe impl Send for Memory {}
// SAFETY: as above.
unsafe impl Sync for Memory {}

impl Drop for Memory {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.0, MAX_SIZE);
        // SAFETY: `self.0` came from `Box::into_raw` of a `MAX_SIZE`-byte boxed slice and
        // is freed only here.
        drop(unsafe { Box::from_raw(slice) });
    }
}

impl InputBuf {
    pub(crate) fn get(py: Python<'_>) -> PyResult<&Py<InputBuf>> {
        INPUT.get_or_try_init(py, || {
            let boxed = vec![0u8; MAX_SIZE].into_boxed_slice();
            let mem = Memory(Box::into_raw(boxed).cast::<u8>());
            Py::new(
                py,
                InputBuf {
                    mem,
                    len: GilCell::new(0),
                },
            )
        })
    }

    /// recv(2) of up to `MAX_SIZE` bytes into the buffer: the count, or the errno.
    pub(crate) fn recv(&self, fd: std::os::fd::RawFd) -> Result<usize, nix::errno::Errno> {
        // SAFETY: `mem` is a live allocation of MAX_SIZE writable bytes; the GIL (held by
        // our caller, who has a `Python` token to reach us) keeps every view's reader out.
        let r = unsafe { nix::libc::recv(fd, self.mem.0.cast(), MAX_SIZE, 0) };
        usize::try_from(r).map_err(|_| nix::errno::Errno::last())
    }

    /// The first `n` bytes received.
    pub(crate) fn bytes(&self, n: usize) -> &[u8] {
        // SAFETY: `mem` holds MAX_SIZE initialised bytes (zeroed at allocation), `n` is a
        // count `recv` returned, and nothing writes them while the GIL is held.
        unsafe { std::slice::from_raw_parts(self.mem.0, n.min(MAX_SIZE)) }
    }

    pub(crate) fn expose(&self, py: Python<'_>, n: usize) {
        *self.len.borrow_mut(py) = n.min(MAX_SIZE);
    }
}

#[pymethods]
impl InputBuf {
    /// A read-only view of the bytes received last.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("View is null"));
        }
        let py = slf.py();
        let len = *slf.get().len.borrow(py);
        let len = ffi::Py_ssize_t::try_from(len).unwrap_or(0);
        // SAFETY: `view` is the caller's Py_buffer to fill; the memory outlives the view
        // (the view holds a reference to `slf`, which owns it); PyBuffer_FillInfo sets an
        // exception and returns -1 when `flags` asks for what a read-only buffer lacks.
        let r = unsafe {
            ffi::PyBuffer_FillInfo(view, slf.as_ptr(), slf.get().mem.0.cast(), len, 1, flags)
        };
        if r != 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(())
    }
}

/// A writable view of the part of a new bytes object that a read fills: plaintext is
/// decrypted straight into the bytes object `data_received()` gets (no bytes object per
/// record, no join). One per process, used with the GIL held; the span is set just
/// before a read and cleared just after.
#[pyclass(module = "ferroloop._core", name = "_TLSWindow", frozen)]
pub(crate) struct Window {
    addr: AtomicUsize,
    len: AtomicUsize,
    /// Views handed out and not yet released: must be none once a read returns.
    exports: AtomicUsize,
}

impl Window {
    fn get(py: Python<'_>) -> PyResult<&Py<Window>> {
        WINDOW.get_or_try_init(py, || {
            Py::new(
                py,
                Window {
                    addr: AtomicUsize::new(0),
                    len: AtomicUsize::new(0),
                    exports: AtomicUsize::new(0),
                },
            )
        })
    }

    fn set(&self, addr: usize, len: usize) {
        self.addr.store(addr, Ordering::Relaxed);
        self.len.store(len, Ordering::Relaxed);
    }
}

#[pymethods]
impl Window {
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("View is null"));
        }
        let this = slf.get();
        let addr = this.addr.load(Ordering::Relaxed);
        let len = ffi::Py_ssize_t::try_from(this.len.load(Ordering::Relaxed)).unwrap_or(0);
        // SAFETY: `view` is the caller's to fill; the span is writable memory of a bytes
        // object only we reference (see `Ssl::read_bytes`), or empty; the caller releases
        // the view before the read returns, which `read_bytes` checks.
        let r =
            unsafe { ffi::PyBuffer_FillInfo(view, slf.as_ptr(), addr as *mut _, len, 0, flags) };
        if r != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        this.exports.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a `read_bytes` ended.
pub(crate) enum Filled {
    /// The peer's close_notify.
    Eof,
    /// OpenSSL wants more bytes.
    Again,
    /// The bytes object is full: OpenSSL may hold more.
    Full,
    /// Another whole record is there (a subclass's read() takes one at a time).
    More,
    /// No whole record is left.
    Drained,
}

/// Where the records in the incoming BIO begin and end, from their 5-byte headers as the
/// bytes go in. With OpenSSL's `read_ahead` off (CPython never turns it on) a read takes
/// bytes from the BIO only for the record it is working on, so the BIO's `pending` count
/// tells how far OpenSSL has got, and whether one more read can make progress: only if a
/// whole record lies past that point. Reading on when none does would just raise
/// `SSLWantReadError`, which costs about as much as decrypting a 1 KiB record.
///
/// Anything unusual (an SSLv2-style hello, an unknown record type, a header announcing
/// more than OpenSSL accepts) turns the tracker off for the connection: every read is then
/// tried, as asyncio does, and OpenSSL judges the bytes at once.
pub(crate) struct Records {
    /// Bytes written to the BIO since the connection began.
    written: u64,
    /// Where the next record header begins.
    next: u64,
    header: [u8; 5],
    header_len: usize,
    /// Where the records whose header has been seen begin and end, oldest first.
    spans: VecDeque<(u64, u64)>,
    on: bool,
}

impl Records {
    pub(crate) fn new() -> Self {
        Records {
            written: 0,
            next: 0,
            header: [0; 5],
            header_len: 0,
            spans: VecDeque::new(),
            on: true,
        }
    }

    pub(crate) fn feed(&mut self, data: &[u8]) {
        let start = self.written;
        self.written += data.len() as u64;
        if !self.on {
            return;
        }
        let mut pos = start;
        while pos < self.written {
            if pos < self.next {
                pos = self.next.min(self.written);
                continue;
            }
            let i = usize::try_from(pos - start).unwrap_or(usize::MAX);
            let Some(&byte) = data.get(i) else {
                break;
            };
            self.header[self.header_len] = byte;
            self.header_len += 1;
            pos += 1;
            if self.header_len < self.header.len() {
                continue;
            }
            self.header_len = 0;
            let [kind, major, _, hi, lo] = self.header;
            let body = usize::from(u16::from_be_bytes([hi, lo]));
            // change_cipher_spec, alert, handshake, application_data, heartbeat.
            if !(20..=24).contains(&kind) || major != 3 || body > MAX_RECORD_BODY {
                self.on = false;
                self.spans.clear();
                return;
            }
            let end = pos + body as u64;
            self.spans.push_back((pos - 5, end));
            self.next = end;
        }
    }

    /// What a read can get now: nothing (no whole record lies in the BIO beyond what
    /// OpenSSL has taken from it; `pending` is the BIO's count of bytes not yet taken),
    /// at most so many bytes (those of the records from the first one OpenSSL has not
    /// finished: plaintext is never longer than its record), or an unknown amount (the
    /// tracker is off).
    pub(crate) fn available(&mut self, pending: usize) -> Available {
        if !self.on {
            return Available::Unknown;
        }
        let taken = self.written.saturating_sub(pending as u64);
        while self.spans.front().is_some_and(|&(_, end)| end <= taken) {
            self.spans.pop_front();
        }
        match self.spans.front() {
            Some(&(start, end)) if end <= self.written => {
                Available::AtMost(usize::try_from(self.written - start).unwrap_or(usize::MAX))
            }
            _ => Available::Nothing,
        }
    }
}

pub(crate) enum Available {
    Nothing,
    AtMost(usize),
    Unknown,
}

/// The TLS object and its BIOs. `raw` is the C-level `_ssl._SSLSocket` inside an
/// `ssl.SSLObject` of that very class (whose `read`/`write` are Python functions that
/// only forward to it); for a subclass (`SSLContext.sslobject_class`) it is the object
/// itself, so overridden methods run.
pub(crate) struct Ssl {
    pub(crate) obj: Py<PyAny>,
    raw: Py<PyAny>,
    /// `raw` is the C object, whose `read` may fill our window.
    exact: bool,
    pub(crate) incoming: Py<PyAny>,
    pub(crate) outgoing: Py<PyAny>,
}

impl Ssl {
    pub(crate) fn new(
        py: Python<'_>,
        obj: Bound<'_, PyAny>,
        incoming: Bound<'_, PyAny>,
        outgoing: Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let cls = pyapi::cached_attr(py, &SSL_OBJECT, "ssl", "SSLObject")?;
        let inner = if obj.get_type().is(&cls) {
            obj.getattr(pyo3::intern!(py, "_sslobj")).ok()
        } else {
            None
        };
        let exact = inner.is_some();
        let raw = inner.unwrap_or_else(|| obj.clone());
        Ok(Ssl {
            obj: obj.unbind(),
            raw: raw.unbind(),
            exact,
            incoming: incoming.unbind(),
            outgoing: outgoing.unbind(),
        })
    }

    pub(crate) fn clone_ref(&self, py: Python<'_>) -> Ssl {
        Ssl {
            obj: self.obj.clone_ref(py),
            raw: self.raw.clone_ref(py),
            exact: self.exact,
            incoming: self.incoming.clone_ref(py),
            outgoing: self.outgoing.clone_ref(py),
        }
    }

    pub(crate) fn objects(&self) -> [&Py<PyAny>; 4] {
        [&self.obj, &self.raw, &self.incoming, &self.outgoing]
    }

    /// `sslobj.read(n)`: decrypted bytes, empty at the peer's close_notify.
    pub(crate) fn read<'py>(&self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        Ok(self
            .raw
            .bind(py)
            .call_method1(pyo3::intern!(py, "read"), (n,))?
            .cast_into::<PyBytes>()?)
    }

    /// Decrypts into one new bytes object of at most `cap` bytes, record after record
    /// while `more()` says a whole one is there. None when nothing was read.
    pub(crate) fn read_bytes<'py>(
        &self,
        py: Python<'py>,
        cap: usize,
        more: &mut dyn FnMut() -> PyResult<bool>,
    ) -> PyResult<(Option<Bound<'py, PyBytes>>, Filled)> {
        if !self.exact {
            // An SSLObject subclass: its own read(), one bytes object per call.
            return match self.read(py, cap) {
                Ok(b) if b.as_bytes().is_empty() => Ok((None, Filled::Eof)),
                Ok(b) => {
                    let outcome = if b.as_bytes().len() >= cap {
                        Filled::Full
                    } else if more()? {
                        Filled::More
                    } else {
                        Filled::Drained
                    };
                    Ok((Some(b), outcome))
                }
                Err(err) if is_again(py, &err)? => Ok((None, Filled::Again)),
                Err(err) if is_zero_return(py, &err)? => Ok((None, Filled::Eof)),
                Err(err) => Err(err),
            };
        }
        let len = ffi::Py_ssize_t::try_from(cap)
            .map_err(|_| PyRuntimeError::new_err("TLS read too large"))?;
        // SAFETY: with a NULL source, PyBytes_FromStringAndSize makes an uninitialised
        // bytes object of `len` bytes (or returns NULL with an exception set).
        let mut obj = unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), len) };
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: `obj` is a fresh bytes object; its buffer is `cap` writable bytes that
        // nothing else can see until we hand the object out.
        let base = unsafe { ffi::PyBytes_AsString(obj) } as usize;
        let window = Window::get(py)?.bind(py);
        let mut filled = 0;
        let outcome = loop {
            if filled >= cap {
                break Ok(Filled::Full);
            }
            match more() {
                Ok(true) => {}
                Ok(false) => break Ok(Filled::Drained),
                Err(err) => break Err(err),
            }
            window.get().set(base + filled, cap - filled);
            let r = self
                .raw
                .bind(py)
                .call_method1(pyo3::intern!(py, "read"), (cap - filled, window));
            window.get().set(0, 0);
            match r.and_then(|n| n.extract::<usize>()) {
                Ok(0) => break Ok(Filled::Eof),
                Ok(n) => filled += n.min(cap - filled),
                Err(err) => match (is_again(py, &err), is_zero_return(py, &err)) {
                    (Ok(true), _) => break Ok(Filled::Again),
                    (_, Ok(true)) => break Ok(Filled::Eof),
                    (Err(e), _) | (_, Err(e)) => break Err(e),
                    _ => break Err(err),
                },
            }
        };
        if window.get().exports.load(Ordering::Relaxed) != 0 {
            // A view of the bytes object outlived the read: it may be written through
            // still, so the object is never freed or handed out.
            return Err(PyRuntimeError::new_err(
                "a view of a TLS read buffer was kept",
            ));
        }
        let outcome = match outcome {
            Ok(o) => o,
            Err(err) => {
                // SAFETY: we own the only reference.
                unsafe { ffi::Py_DecRef(obj) };
                return Err(err);
            }
        };
        if filled == 0 {
            // SAFETY: as above.
            unsafe { ffi::Py_DecRef(obj) };
            return Ok((None, outcome));
        }
        // SAFETY: `obj` has one reference, ours: _PyBytes_Resize may move it (updating
        // `obj`) or free it, set NULL and raise. `filled <= cap` fits in Py_ssize_t.
        if filled < cap && unsafe { _PyBytes_Resize(&mut obj, filled as ffi::Py_ssize_t) } != 0 {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: `obj` is a valid bytes object whose one reference we hand over.
        let bytes = unsafe { Bound::from_owned_ptr(py, obj).cast_into_unchecked::<PyBytes>() };
        Ok((Some(bytes), outcome))
    }

    /// `sslobj.read(n, buffer)`: the count read into `buffer`.
    pub(crate) fn read_into(
        &self,
        py: Python<'_>,
        n: usize,
        buffer: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        self.raw
            .bind(py)
            .call_method1(pyo3::intern!(py, "read"), (n, buffer))?
            .extract()
    }

    pub(crate) fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.raw
            .bind(py)
            .call_method1(pyo3::intern!(py, "write"), (data,))?
            .extract()
    }

    pub(crate) fn do_handshake(&self, py: Python<'_>) -> PyResult<()> {
        self.raw
            .bind(py)
            .call_method0(pyo3::intern!(py, "do_handshake"))
            .map(drop)
    }

    pub(crate) fn incoming_pending(&self, py: Python<'_>) -> PyResult<usize> {
        bio_pending(self.incoming.bind(py))
    }

    pub(crate) fn outgoing_pending(&self, py: Python<'_>) -> PyResult<usize> {
        bio_pending(self.outgoing.bind(py))
    }

    pub(crate) fn incoming_write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.incoming
            .bind(py)
            .call_method1(pyo3::intern!(py, "write"), (data,))
            .map(drop)
    }

    /// Everything the outgoing BIO holds, in one bytes object.
    pub(crate) fn outgoing_read<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(self
            .outgoing
            .bind(py)
            .call_method0(pyo3::intern!(py, "read"))?
            .cast_into::<PyBytes>()?)
    }
}

fn bio_pending(bio: &Bound<'_, PyAny>) -> PyResult<usize> {
    bio.getattr(pyo3::intern!(bio.py(), "pending"))?.extract()
}
