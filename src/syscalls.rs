//! The raw system calls under the socket calls (`sock_ops.rs`) and the transports: reads
//! of sockets and pipes into new bytes objects or callers' buffers, sends and writes, and
//! the datagram calls (recvfrom, recvmmsg, sendto; sendmmsg in `batch_send.rs`); accept4
//! for servers (`accept.rs`); pidfds and reaping for child processes (`process.rs`).

pub(crate) mod accept;
pub(crate) mod batch_send;
pub(crate) mod process;
#[cfg(feature = "uring")]
pub(crate) mod uring;

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
    read_new_bytes(py, fd, n, Source::Socket)
}

/// `read(fd, at most n)` into a new bytes object (a pipe, FIFO or character device), as
/// `recv_bytes` reads a socket: `Ok(None)` when it would block or was interrupted.
/// `capacity`: a pipe's (F_GETPIPE_SZ), which no read exceeds: after a big read, the next
/// goes straight into a bytes object of that size, with no FIONREAD call first.
pub(crate) fn read_bytes(
    py: Python<'_>,
    fd: RawFd,
    n: usize,
    capacity: Option<usize>,
) -> PyResult<Result<Option<Bound<'_, PyBytes>>, Errno>> {
    match capacity {
        Some(cap) if n >= BIG_READ && cap <= DIRECT_MAX && LAST_READ_BIG.get() => {
            let got = match recv_direct(py, fd, cap.min(n), Source::File)? {
                Ok(b) => b,
                Err(Errno::EAGAIN | Errno::EINTR) => return Ok(Ok(None)),
                Err(e) => return Ok(Err(e)),
            };
            if let Some(b) = &got {
                LAST_READ_BIG.set(b.as_bytes().len() >= BIG_READ);
            }
            Ok(Ok(got))
        }
        _ => read_new_bytes(py, fd, n, Source::File),
    }
}

/// A pipe's capacity (F_GETPIPE_SZ); None for anything else (a pty, a socket).
pub(crate) fn pipe_capacity(fd: RawFd) -> Option<usize> {
    // SAFETY: F_GETPIPE_SZ takes no argument and only reads the fd's state.
    let r = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    usize::try_from(r).ok().filter(|&n| n > 0)
}

/// What an fd is read with: recv(2) for sockets, read(2) for anything else.
#[derive(Clone, Copy)]
enum Source {
    Socket,
    File,
}

/// One read of at most `len` bytes to `ptr`.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn raw_read(fd: RawFd, ptr: *mut u8, len: usize, source: Source) -> isize {
    match source {
        // SAFETY: the caller guarantees `len` writable bytes at `ptr`.
        Source::Socket => unsafe { libc::recv(fd, ptr.cast(), len, 0) },
        // SAFETY: as above.
        Source::File => unsafe { libc::read(fd, ptr.cast(), len) },
    }
}

fn read_new_bytes(
    py: Python<'_>,
    fd: RawFd,
    n: usize,
    source: Source,
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
            recv_direct(py, fd, avail.min(n), source)?
        }
        // More than the shared buffer holds (FIONREAD gives a datagram's whole size, so
        // none is cut short): into a bytes object of that size, as socket.recv would.
        Some(avail) if avail > READ_BUF_SIZE && n > READ_BUF_SIZE => {
            recv_direct(py, fd, avail.min(n), source)?
        }
        _ => READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let cap = n.min(buf.len());
            // SAFETY: `buf` is a live, writable allocation of at least `cap` bytes.
            let r = unsafe { raw_read(fd, buf.as_mut_ptr(), cap, source) };
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
    source: Source,
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
    let r = unsafe { raw_read(fd, ffi::PyBytes_AsString(obj).cast(), n, source) };
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

/// write(2) of `data` (a pipe, FIFO or character device): `Ok(0)` when it would block or
/// was interrupted, as asyncio's pipe transport takes BlockingIOError and InterruptedError.
pub(crate) fn write_native(fd: RawFd, data: &[u8]) -> Result<usize, Errno> {
    // SAFETY: `data` is a readable slice of `data.len()` bytes.
    let r = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    match usize::try_from(r) {
        Ok(n) => Ok(n),
        Err(_) => match Errno::last() {
            Errno::EAGAIN | Errno::EINTR => Ok(0),
            e => Err(e),
        },
    }
}

/// A socket address as the kernel gives and takes it: a `sockaddr_storage` and the length
/// of its used part (0: none, as recvfrom(2) reports for an unnamed sender).
#[derive(Clone, Copy)]
pub(crate) struct SockAddr {
    pub(crate) storage: libc::sockaddr_storage,
    pub(crate) len: libc::socklen_t,
}

impl SockAddr {
    pub(crate) fn empty() -> Self {
        SockAddr {
            // SAFETY: sockaddr_storage is plain old data: all zeroes is a valid value
            // (family AF_UNSPEC).
            storage: unsafe { std::mem::zeroed() },
            len: 0,
        }
    }

    pub(crate) fn family(&self) -> libc::c_int {
        if self.len == 0 {
            return libc::AF_UNSPEC;
        }
        libc::c_int::from(self.storage.ss_family)
    }

    /// The used bytes of the address, to compare two addresses.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        let len = (self.len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `storage` is a live, initialised sockaddr_storage and `len` is within it.
        unsafe { std::slice::from_raw_parts((&raw const self.storage).cast::<u8>(), len) }
    }

    pub(crate) fn as_ptr(&self) -> *const libc::sockaddr {
        (&raw const self.storage).cast()
    }
}

/// recvfrom(2) of one datagram into `buf` without blocking: its length (cut to the buffer,
/// as socket.recvfrom does) and its sender, or the errno (EAGAIN when there is none).
pub(crate) fn recvfrom_into(fd: RawFd, buf: &mut [u8]) -> Result<(usize, SockAddr), Errno> {
    let mut addr = SockAddr::empty();
    addr.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `buf` is writable for `buf.len()` bytes; `addr.storage` is writable for
    // `addr.len` bytes, which the kernel updates to the length it wrote.
    let r = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&raw mut addr.storage).cast(),
            &mut addr.len,
        )
    };
    usize::try_from(r)
        .map(|n| (n, addr))
        .map_err(|_| Errno::last())
}

/// With the reusable read buffer of the loop's thread: `f(buf)` (256 KiB; nothing else
/// may use it meanwhile, so `f` must not call Python code that could read).
pub(crate) fn with_read_buf<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    READ_BUF.with(|buf| f(&mut buf.borrow_mut()))
}

/// Datagrams read by one recvmmsg(2): `slots` buffers of `slot_size` bytes each, with
/// their lengths and senders. The headers are kept (rebuilt before each call, since they
/// point into the buffers): no allocation per read.
pub(crate) struct Batch {
    slot_size: usize,
    bufs: Vec<u8>,
    addrs: Vec<SockAddr>,
    lens: Vec<usize>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    pub(crate) fn new(slots: usize, slot_size: usize) -> Self {
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Batch {
            slot_size,
            bufs: vec![0; slots * slot_size],
            addrs: vec![SockAddr::empty(); slots],
            lens: vec![0; slots],
            iovs: vec![iov; slots],
            // SAFETY: mmsghdr is plain old data; all zeroes is a valid empty header.
            hdrs: vec![unsafe { std::mem::zeroed() }; slots],
        }
    }

    /// Datagram `i` of the last read: its bytes and sender.
    pub(crate) fn get(&self, i: usize) -> (&[u8], &SockAddr) {
        let start = i * self.slot_size;
        (&self.bufs[start..start + self.lens[i]], &self.addrs[i])
    }

    /// recvmmsg(2) of up to `want` datagrams (at most the slots) without blocking: how
    /// many were read (at least one), or the errno (EAGAIN when there was none).
    pub(crate) fn recv(&mut self, fd: RawFd, want: usize) -> Result<usize, Errno> {
        let slots = want.min(self.lens.len());
        let name_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let chunks = self.bufs.chunks_exact_mut(self.slot_size);
        let parts = self
            .hdrs
            .iter_mut()
            .zip(self.iovs.iter_mut())
            .zip(&mut self.addrs);
        for (((hdr, iov), addr), buf) in parts.zip(chunks).take(slots) {
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = buf.len();
            hdr.msg_hdr.msg_name = (&raw mut addr.storage).cast();
            hdr.msg_hdr.msg_namelen = name_len;
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = std::ptr::null_mut();
            hdr.msg_hdr.msg_controllen = 0;
            hdr.msg_hdr.msg_flags = 0;
        }
        // SAFETY: the first `slots` headers each name one iovec into `bufs` and one
        // address in `addrs`, all live and writable for the lengths given (set just
        // above); a null timeout with MSG_DONTWAIT returns at once.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let n = usize::try_from(r).map_err(|_| Errno::last())?;
        for i in 0..n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
            self.addrs[i].len = self.hdrs[i].msg_hdr.msg_namelen;
        }
        Ok(n)
    }
}

/// send(2) (no address: a connected socket) or sendto(2) of one datagram, without
/// blocking: the bytes sent, or the errno (EAGAIN when the socket buffer is full).
pub(crate) fn sendto_raw(fd: RawFd, data: &[u8], addr: Option<&SockAddr>) -> Result<usize, Errno> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    // SAFETY: `data` is readable for `data.len()` bytes; `addr`, when given, is a valid
    // address of `addr.len` bytes.
    let r = unsafe {
        match addr {
            None => libc::send(fd, data.as_ptr().cast(), data.len(), flags),
            Some(a) => libc::sendto(
                fd,
                data.as_ptr().cast(),
                data.len(),
                flags,
                a.as_ptr(),
                a.len,
            ),
        }
    };
    usize::try_from(r).map_err(|_| Errno::last())
}
