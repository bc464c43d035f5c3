//! The raw socket system calls under the socket calls (`sock_ops.rs`) and the stream
//! transport: reads into new bytes objects or callers' buffers, and sends; accept4 for
//! servers (`accept.rs`); pidfds and reaping for child processes (`process.rs`).

pub(crate) mod accept;
pub(crate) mod process;

use std::cell::Cell;
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::libc;
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::os_error;

/// Reads of at least this size are made straight into a new bytes object; smaller ones
/// go through the thread's reusable buffer and are copied out.
const BIG_READ: usize = 16 * 1024;
/// The largest read made straight into a bytes object: below glibc's default mmap
/// threshold (128 KiB), so the allocation comes from the heap.
const DIRECT_MAX: usize = 120 * 1024;
/// The reusable buffer's size (asyncio's transports read up to 256 KiB at once).
pub(crate) const READ_BUF_SIZE: usize = 256 * 1024;

thread_local! {
    // One read buffer per loop thread, shared by every transport and socket call.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_BUF_SIZE]);
    // Whether the last read on this thread was big: the next one then goes straight
    // into a bytes object sized for the request, saving the copy.
    static LAST_READ_BIG: Cell<bool> = const { Cell::new(false) };
}

unsafe extern "C" {
    // CPython's exported `_PyBytes_Resize` (pyo3-ffi keeps its binding crate-private).
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> i32;
}

/// `recv(fd, at most n)` into a new bytes object: `Ok(None)` when the socket would block
/// (or the call was interrupted), `Err(errno)` on failure.
///
/// Small reads go through the thread's reusable buffer and are copied out. After a big
/// read, the next one asks the kernel how much is queued (FIONREAD) and receives it
/// straight into a bytes object of that size: no copy, and no over-sized allocation to
/// shrink (a 256 KiB malloc per read is served by mmap and page-faulted each time).
pub(crate) fn recv_bytes(
    py: Python<'_>,
    fd: RawFd,
    n: usize,
) -> PyResult<Result<Option<Bound<'_, PyBytes>>, Errno>> {
    let queued = if (n >= BIG_READ && LAST_READ_BIG.get()) || n > READ_BUF_SIZE {
        let mut avail: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int to the pointer we pass.
        let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut avail) };
        usize::try_from(avail).ok().filter(|_| r == 0)
    } else {
        None
    };
    let got = match queued {
        Some(avail) if avail >= BIG_READ && avail.min(n) <= DIRECT_MAX => {
            recv_direct(py, fd, avail.min(n))?
        }
        // More than the shared buffer holds (FIONREAD gives a datagram's whole size, so
        // none is cut short): into a bytes object of that size, as socket.recv would.
        Some(avail) if avail > READ_BUF_SIZE && n > READ_BUF_SIZE => {
            recv_direct(py, fd, avail.min(n))?
        }
        _ => READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let cap = n.min(buf.len());
            // SAFETY: `buf` is a live, writable allocation of at least `cap` bytes.
            let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), cap, 0) };
            match usize::try_from(r) {
                Ok(k) => Ok(Some(PyBytes::new(py, &buf[..k]))),
                Err(_) => Err(Errno::last()),
            }
        }),
    };
    let got = match got {
        Ok(b) => b,
        Err(Errno::EAGAIN | Errno::EINTR) => return Ok(Ok(None)),
        Err(e) => return Ok(Err(e)),
    };
    if let Some(b) = &got {
        LAST_READ_BIG.set(b.as_bytes().len() >= BIG_READ);
    }
    Ok(Ok(got))
}

fn recv_direct(
    py: Python<'_>,
    fd: RawFd,
    n: usize,
) -> PyResult<Result<Option<Bound<'_, PyBytes>>, Errno>> {
    let len =
        ffi::Py_ssize_t::try_from(n).map_err(|_| PyValueError::new_err("buffer size too large"))?;
    // SAFETY: with a NULL source, PyBytes_FromStringAndSize allocates an uninitialised
    // bytes object of `len` bytes (or returns NULL with an exception set); the GIL is held.
    let mut obj = unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), len) };
    if obj.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `obj` is a fresh bytes object of `len` bytes that nothing else references
    // yet; the kernel writes at most `n` bytes into it.
    let r = unsafe { libc::recv(fd, ffi::PyBytes_AsString(obj).cast(), n, 0) };
    let Ok(k) = usize::try_from(r) else {
        let err = Errno::last();
        // SAFETY: we own the only reference.
        unsafe { ffi::Py_DecRef(obj) };
        return Ok(Err(err));
    };
    // SAFETY: `obj` has a reference count of one (ours): _PyBytes_Resize may move it and
    // updates `obj`, or frees it, sets NULL and raises.
    if k < n && unsafe { _PyBytes_Resize(&mut obj, k as ffi::Py_ssize_t) } != 0 {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `obj` is a valid bytes object whose one reference we hand over.
    let bytes = unsafe { Bound::from_owned_ptr(py, obj).cast_into_unchecked::<PyBytes>() };
    Ok(Ok(Some(bytes)))
}

/// recv(2) straight into `buf` if it is a writable C-contiguous buffer (None otherwise).
pub(crate) fn recv_into_buffer(fd: RawFd, buf: &Bound<'_, PyAny>) -> Option<Result<usize, Errno>> {
    let view = PyUntypedBuffer::get(buf).ok()?;
    if view.readonly() || !view.is_c_contiguous() {
        return None;
    }
    if view.len_bytes() == 0 {
        // As socket.recv_into: nothing to read into is 0, data or not, with no syscall.
        return Some(Ok(0));
    }
    // SAFETY: a held, writable, C-contiguous view: `len_bytes()` writable bytes at
    // `buf_ptr()`, pinned while `view` lives.
    let r = unsafe { libc::recv(fd, view.buf_ptr(), view.len_bytes(), 0) };
    Some(usize::try_from(r).map_err(|_| Errno::last()))
}

/// send(2) of `data`; 0 when the socket would block.
pub(crate) fn send_native(fd: RawFd, data: &[u8]) -> PyResult<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    // SAFETY: `data` is a readable slice; MSG_NOSIGNAL turns SIGPIPE into EPIPE.
    let r = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    match usize::try_from(r) {
        Ok(n) => Ok(n),
        Err(_) => match Errno::last() {
            Errno::EAGAIN | Errno::EINTR => Ok(0),
            e => Err(os_error(e)),
        },
    }
}
