//! The fast path of `sock_connect`: on a plain non-blocking socket, an address whose host
//! is already an IP literal of the socket's family (what asyncio's `_ipaddr_info` finds
//! without a DNS lookup) is connected here with connect(2) on a sockaddr made natively;
//! anything else goes through asyncio's steps (`Loop._sock_connect_resolving`).

use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::libc;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyInt, PyString, PyTuple};

use crate::pyapi;

static SOCKET_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

unsafe extern "C" {
    // The C library's inet_pton(3) (the libc crate has no binding): asyncio's
    // `_ipaddr_info` decides with `socket.inet_pton`, which is this call.
    fn inet_pton(af: libc::c_int, src: *const libc::c_char, dst: *mut libc::c_void) -> libc::c_int;
}

/// A socket address for connect(2).
#[derive(Clone, Copy)]
pub(crate) struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int-valued socket option into a writable int of the size given.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut v).cast(), &mut len) };
    (r == 0).then_some(v)
}

fn exact_int(obj: &Bound<'_, PyAny>) -> Option<i64> {
    obj.cast_exact::<PyInt>().ok()?.extract().ok()
}

/// The address `address` names for `sock`, if the fast path applies: `sock` a plain
/// non-blocking `socket.socket` of family AF_INET or AF_INET6, type SOCK_STREAM or
/// SOCK_DGRAM; `address` an exact `(host, port)` tuple (AF_INET6: with flowinfo and
/// scope_id optional) of a host string that inet_pton takes for the family and an int
/// port in range. Returns the sockaddr and the address as asyncio resolves it (AF_INET6:
/// the 4-tuple), for the error message of a failed connection. Never raises: anything
/// unusual takes asyncio's path, which raises what asyncio raises.
pub(crate) fn numeric_address<'py>(
    sock: &Bound<'py, PyAny>,
    address: &Bound<'py, PyAny>,
) -> Option<(SockAddr, Bound<'py, PyAny>)> {
    let py = sock.py();
    let plain = pyapi::cached_attr(py, &SOCKET_TYPE, "socket", "socket").ok()?;
    if !sock.get_type().is(&plain) {
        return None;
    }
    let tuple = address.cast_exact::<PyTuple>().ok()?;
    if tuple.len() < 2 {
        return None;
    }
    let host_obj = tuple.get_item(0).ok()?;
    let host = host_obj.cast_exact::<PyString>().ok()?.to_str().ok()?;
    let port = u16::try_from(exact_int(&tuple.get_item(1).ok()?)?).ok()?;
    if host.contains('%') || host.contains('\0') {
        return None;
    }
    let fd: RawFd = sock
        .call_method0(pyo3::intern!(py, "fileno"))
        .ok()?
        .extract()
        .ok()?;
    let timeout = sock.call_method0(pyo3::intern!(py, "gettimeout")).ok()?;
    if timeout.extract::<f64>().ok()? != 0.0 {
        return None;
    }
    let family = sockopt(fd, libc::SO_DOMAIN)?;
    let stype = sockopt(fd, libc::SO_TYPE)?;
    let proto = sockopt(fd, libc::SO_PROTOCOL)?;
    if !matches!(stype, libc::SOCK_STREAM | libc::SOCK_DGRAM)
        || !matches!(proto, 0 | libc::IPPROTO_TCP | libc::IPPROTO_UDP)
    {
        return None;
    }
    let chost = std::ffi::CString::new(host).ok()?;
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match family {
        libc::AF_INET if tuple.len() == 2 => {
            // SAFETY: the storage is large enough for, and aligned as, a sockaddr_in.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            // SAFETY: a NUL-terminated string and a writable in_addr.
            if unsafe {
                inet_pton(
                    libc::AF_INET,
                    chost.as_ptr(),
                    (&raw mut sin.sin_addr).cast(),
                )
            } != 1
            {
                return None;
            }
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = port.to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            Some((SockAddr { storage, len }, address.clone()))
        }
        libc::AF_INET6 if tuple.len() <= 4 => {
            let flowinfo = match tuple.get_item(2) {
                Ok(f) => u32::try_from(exact_int(&f)?)
                    .ok()
                    .filter(|f| *f <= 0xfffff)?,
                Err(_) => 0,
            };
            let scope_id = match tuple.get_item(3) {
                Ok(s) => u32::try_from(exact_int(&s)?).ok()?,
                Err(_) => 0,
            };
            // SAFETY: the storage is large enough for, and aligned as, a sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            // SAFETY: a NUL-terminated string and a writable in6_addr.
            if unsafe {
                inet_pton(
                    libc::AF_INET6,
                    chost.as_ptr(),
                    (&raw mut sin6.sin6_addr).cast(),
                )
            } != 1
            {
                return None;
            }
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = port.to_be();
            sin6.sin6_flowinfo = flowinfo.to_be();
            sin6.sin6_scope_id = scope_id;
            let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            // asyncio's resolved form: (host, port, flowinfo, scope_id).
            let resolved = PyTuple::new(
                py,
                [
                    host_obj,
                    port.into_pyobject(py).ok()?.into_any(),
                    flowinfo.into_pyobject(py).ok()?.into_any(),
                    scope_id.into_pyobject(py).ok()?.into_any(),
                ],
            )
            .ok()?;
            Some((SockAddr { storage, len }, resolved.into_any()))
        }
        _ => None,
    }
}

/// connect(2): `Ok(true)` connected, `Ok(false)` under way (wait for writability).
pub(crate) fn connect(fd: RawFd, addr: &SockAddr) -> Result<bool, Errno> {
    // SAFETY: `addr` holds a sockaddr of `len` bytes.
    let r = unsafe { libc::connect(fd, (&raw const addr.storage).cast(), addr.len) };
    if r == 0 {
        return Ok(true);
    }
    match Errno::last() {
        Errno::EINPROGRESS | Errno::EAGAIN | Errno::EINTR => Ok(false),
        e => Err(e),
    }
}

/// The outcome of a connection under way (SO_ERROR): 0 when it succeeded.
pub(crate) fn connect_result(fd: RawFd) -> Result<i32, Errno> {
    sockopt(fd, libc::SO_ERROR).ok_or_else(Errno::last)
}
