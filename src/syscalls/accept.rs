//! accept4(2), and the peer address it gives as a Python object, made the way CPython's
//! socket module makes it (`makesockaddr`).

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::libc;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString, PyTuple};

static SOCKET_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

static KIND_DESCRIPTORS: PyOnceLock<(Py<PyAny>, Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();

/// A socket's family, type and protocol as its object holds them (the C-level members of
/// `_socket.socket`: socket.py's `family`/`type` properties make enums on each read).
pub(crate) fn socket_kind(sock: &Bound<'_, PyAny>) -> PyResult<(i32, i32, i32)> {
    let py = sock.py();
    let (family, stype, proto) = KIND_DESCRIPTORS.get_or_try_init(py, || {
        let d = py
            .import("_socket")?
            .getattr("socket")?
            .getattr("__dict__")?;
        let get = |name: &str| d.get_item(name).map(Bound::unbind);
        Ok::<_, PyErr>((get("family")?, get("type")?, get("proto")?))
    })?;
    // The descriptors' own `tp_descr_get` slot: what `descr.__get__(sock)` calls, without
    // the method lookup and call (~1.2k instructions each, three per `sock_accept`).
    let read = |descr: &Py<PyAny>| -> PyResult<i32> {
        let d = descr.bind(py);
        // SAFETY: `d` is a live object and the GIL is held, so its type is readable.
        let get = unsafe { (*ffi::Py_TYPE(d.as_ptr())).tp_descr_get };
        let Some(get) = get else {
            return d
                .call_method1(pyo3::intern!(py, "__get__"), (sock,))?
                .extract();
        };
        // SAFETY: a descriptor's get slot called as the interpreter calls it: the
        // descriptor, the instance and its type, all live; it returns a new reference or
        // NULL with an exception set.
        let value = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                get(
                    d.as_ptr(),
                    sock.as_ptr(),
                    ffi::Py_TYPE(sock.as_ptr()).cast(),
                ),
            )
        }?;
        value.extract()
    };
    Ok((read(family)?, read(stype)?, read(proto)?))
}

/// An accepted connection as Python sees it: the socket object and the peer's address.
pub(crate) type Accepted<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>);
/// An accepted connection's fd and its peer address, when its family is converted here.
pub(crate) type RawAccepted<'py> = (OwnedFd, Option<Bound<'py, PyAny>>);

/// A connection accepted on the listening socket `fd`, as `socket.accept()` followed by
/// `setblocking(False)` gives it: a non-blocking `socket.socket` of the listener's
/// family, type and protocol (`kind`), and the peer's address. `Ok(Ok(None))`: none
/// waiting (or interrupted); `Ok(Err(errno))`: accept failed (EAFNOSUPPORT: a family
/// whose addresses are not converted here, which callers rule out first).
pub(crate) fn accept_socket(
    py: Python<'_>,
    fd: RawFd,
    kind: (i32, i32, i32),
) -> PyResult<Result<Option<Accepted<'_>>, Errno>> {
    let (conn, addr) = match accept4(py, fd)? {
        Ok((conn, Some(addr))) => (conn, addr),
        Ok((_, None)) => return Ok(Err(Errno::EAFNOSUPPORT)),
        Err(Errno::EAGAIN | Errno::EINTR) => return Ok(Ok(None)),
        Err(e) => return Ok(Err(e)),
    };
    let (family, stype, proto) = kind;
    // SOCK_NONBLOCK in the type sets the object's timeout to 0 without a system call
    // (the fd already is non-blocking, from accept4).
    let cls = SOCKET_TYPE.get_or_try_init(py, || {
        py.import("socket")?.getattr("socket").map(Bound::unbind)
    })?;
    let sock = cls.bind(py).call1((
        family,
        stype | libc::SOCK_NONBLOCK,
        proto,
        conn.into_raw_fd(),
    ))?;
    Ok(Ok(Some((sock, addr))))
}

/// Whether `family`'s addresses are converted by `sockaddr_to_py`.
pub(crate) fn converted_family(family: i32) -> bool {
    matches!(family, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX)
}

/// One `accept4(fd, SOCK_NONBLOCK | SOCK_CLOEXEC)`: the connection's fd (non-blocking,
/// close-on-exec, as asyncio sets it) and its peer address as Python's `accept()`
/// returns it; `Ok(Err(errno))` when the call failed. The address is converted for
/// AF_INET, AF_INET6 and AF_UNIX only (`Ok(Ok((fd, None)))` otherwise).
pub(crate) fn accept4(py: Python<'_>, fd: RawFd) -> PyResult<Result<RawAccepted<'_>, Errno>> {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` is a writable sockaddr_storage of `len` bytes; the kernel writes
    // at most that much and the real length into `len`.
    let r = unsafe {
        libc::accept4(
            fd,
            (&raw mut addr).cast::<libc::sockaddr>(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if r < 0 {
        return Ok(Err(Errno::last()));
    }
    // SAFETY: accept4 returned a new fd that nothing else owns.
    let conn = unsafe { OwnedFd::from_raw_fd(r) };
    let peer = sockaddr_to_py(py, &addr, len as usize)?;
    Ok(Ok((conn, peer)))
}

/// CPython's `makesockaddr` for the families a stream server serves: `(host, port)`,
/// `(host, port, flowinfo, scope_id)`, a Unix path (str; bytes in Linux's abstract
/// namespace; `''` for an unnamed peer). None for any other family.
pub(crate) fn sockaddr_to_py<'py>(
    py: Python<'py>,
    addr: &libc::sockaddr_storage,
    len: usize,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(std::ptr::from_ref(addr).cast::<libc::sockaddr_in>()) };
            let mut text = [0u8; 15];
            let n = ipv4_text(u32::from_be(a.sin_addr.s_addr), &mut text);
            // Dotted decimal is ASCII.
            let host = PyString::new(py, std::str::from_utf8(&text[..n]).unwrap_or_default());
            let host = host.into_any();
            let port = u16::from_be(a.sin_port);
            Ok(Some(
                PyTuple::new(py, [host, port.into_pyobject(py)?.into_any()])?.into_any(),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(std::ptr::from_ref(addr).cast::<libc::sockaddr_in6>()) };
            let host = ntop(py, libc::AF_INET6, (&raw const a.sin6_addr).cast())?;
            let items = [
                host,
                u16::from_be(a.sin6_port).into_pyobject(py)?.into_any(),
                u32::from_be(a.sin6_flowinfo).into_pyobject(py)?.into_any(),
                a.sin6_scope_id.into_pyobject(py)?.into_any(),
            ];
            Ok(Some(PyTuple::new(py, items)?.into_any()))
        }
        libc::AF_UNIX => {
            // SAFETY: the family says the storage holds a sockaddr_un.
            let a = unsafe { &*(std::ptr::from_ref(addr).cast::<libc::sockaddr_un>()) };
            let offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
            let n = len.saturating_sub(offset).min(a.sun_path.len());
            // SAFETY: sun_path is `sun_path.len()` bytes of c_char, the same size as u8.
            let path: &[u8] = unsafe { std::slice::from_raw_parts(a.sun_path.as_ptr().cast(), n) };
            if n > 0 && path[0] == 0 {
                // Linux's abstract namespace: the bytes, leading NUL included.
                return Ok(Some(PyBytes::new(py, path).into_any()));
            }
            let end = path.iter().position(|&b| b == 0).unwrap_or(n);
            Ok(Some(fs_decode(py, &path[..end])?))
        }
        _ => Ok(None),
    }
}

/// An IPv4 address in dotted decimal, as inet_ntop(3) writes it (glibc's goes through
/// sprintf: ~1.6k instructions, twice per accepted connection); its length in `out`.
pub(crate) fn ipv4_text(ip: u32, out: &mut [u8; 15]) -> usize {
    let mut n = 0;
    for (i, octet) in ip.to_be_bytes().into_iter().enumerate() {
        if i > 0 {
            out[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            out[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            out[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        out[n] = b'0' + octet % 10;
        n += 1;
    }
    n
}

unsafe extern "C" {
    // The C library's inet_ntop(3) (the libc crate has no binding): CPython formats
    // addresses with it, and glibc's IPv6 text differs from Rust's in corner cases.
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// inet_ntop(3), as CPython formats addresses.
fn ntop<'py>(
    py: Python<'py>,
    family: libc::c_int,
    src: *const libc::c_void,
) -> PyResult<Bound<'py, PyAny>> {
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: `src` points at an in_addr/in6_addr of `family`; `buf` is writable and
    // large enough for either (INET6_ADDRSTRLEN is 46).
    let r = unsafe { inet_ntop(family, src, buf.as_mut_ptr(), buf.len() as libc::socklen_t) };
    if r.is_null() {
        return Err(crate::errors::os_error(Errno::last()));
    }
    // SAFETY: inet_ntop wrote a NUL-terminated string into `buf`.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(PyString::new(py, &s.to_string_lossy()).into_any())
}

/// `PyUnicode_DecodeFSDefaultAndSize`: a path as the file system encoding decodes it.
fn fs_decode<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: a readable byte slice and the GIL held; a new reference or NULL with an
    // exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyUnicode_DecodeFSDefaultAndSize(
                bytes.as_ptr().cast(),
                bytes.len() as ffi::Py_ssize_t,
            ),
        )
    }
}
