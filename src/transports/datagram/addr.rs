//! Datagram addresses between the kernel's form and Python's, as the socket module
//! converts them (socketmodule.c's `makesockaddr` and `getsockaddrarg`), with a cache of
//! the last sender and the last destination so that an echo costs no conversion.
//!
//! Only the common forms are converted here: IPv4 and IPv6 tuples with numeric hosts,
//! and Unix socket names received. Anything else (host names, `''`, `'<broadcast>'`, a
//! Unix path to send to, other families) is left to the socket's own `sendto`, whose
//! errors are then exactly asyncio's.

use std::ffi::CStr;

use nix::libc;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyString, PyTuple};

use crate::syscalls::accept::ipv4_text;
use crate::syscalls::SockAddr;

/// The families whose received addresses are converted here.
pub(crate) fn native_family(family: libc::c_int) -> bool {
    matches!(family, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX)
}

/// A host as CPython's `makeipaddr` writes it: getnameinfo(NI_NUMERICHOST), which for
/// IPv6 follows inet_ntop's forms (`::ffff:1.2.3.4`) and appends `%` and the interface's
/// name to a scoped address.
fn numeric_host<'py>(py: Python<'py>, addr: &SockAddr) -> Option<Bound<'py, PyString>> {
    let mut buf = [0 as libc::c_char; libc::NI_MAXHOST as usize];
    // SAFETY: `addr` is a valid sockaddr of `addr.len` bytes; `buf` is writable for its
    // length; no service is asked for.
    let r = unsafe {
        libc::getnameinfo(
            (&raw const addr.storage).cast(),
            addr.len,
            buf.as_mut_ptr(),
            buf.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NUMERICHOST,
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: on success getnameinfo wrote a NUL-terminated string into `buf`.
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(PyString::new(py, text.to_str().ok()?))
}

/// The Python form of a received address: `(host, port)` for IPv4, `(host, port,
/// flowinfo, scope_id)` for IPv6, the name of a Unix socket (bytes for the abstract
/// namespace, else a str decoded as os.fsdecode does), None for an unnamed sender.
/// `Ok(None)`: not converted here.
pub(crate) fn to_python<'py>(
    py: Python<'py>,
    addr: &SockAddr,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    if addr.len == 0 {
        return Ok(Some(py.None().into_bound(py)));
    }
    let storage = (&raw const addr.storage).cast::<u8>();
    match addr.family() {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET) into the storage,
            // which is large enough and suitably aligned for one.
            let sin = unsafe { &*storage.cast::<libc::sockaddr_in>() };
            // Dotted decimal, as inet_ntop (and so getnameinfo) writes it.
            let mut text = [0u8; 15];
            let n = ipv4_text(u32::from_be(sin.sin_addr.s_addr), &mut text);
            let host = PyString::new(py, std::str::from_utf8(&text[..n]).unwrap_or_default());
            let port = PyInt::new(py, u16::from_be(sin.sin_port));
            Ok(Some(
                PyTuple::new(py, [host.into_any(), port.into_any()])?.into_any(),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, a sockaddr_in6.
            let sin6 = unsafe { &*storage.cast::<libc::sockaddr_in6>() };
            let Some(host) = numeric_host(py, addr) else {
                return Ok(None);
            };
            let items = [
                host.into_any(),
                PyInt::new(py, u16::from_be(sin6.sin6_port)).into_any(),
                PyInt::new(py, u32::from_be(sin6.sin6_flowinfo)).into_any(),
                PyInt::new(py, sin6.sin6_scope_id).into_any(),
            ];
            Ok(Some(PyTuple::new(py, items)?.into_any()))
        }
        libc::AF_UNIX => {
            let offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
            let bytes = addr.as_bytes();
            let path = bytes.get(offset..).unwrap_or(&[]);
            if path.first() == Some(&0) {
                // Linux's abstract namespace: the whole name, NUL first.
                return Ok(Some(PyBytes::new(py, path).into_any()));
            }
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            let len = ffi::Py_ssize_t::try_from(end).unwrap_or(0);
            // SAFETY: `path[..end]` is readable; the GIL is held; a new reference or NULL
            // with an exception set comes back.
            let name = unsafe {
                Bound::from_owned_ptr_or_err(
                    py,
                    ffi::PyUnicode_DecodeFSDefaultAndSize(path.as_ptr().cast(), len),
                )
            }?;
            Ok(Some(name))
        }
        _ => Ok(None),
    }
}

/// `obj` as a port: an exact int in 0..=65535 (anything else goes to the socket module,
/// which raises what asyncio's users see).
fn port_of(obj: &Bound<'_, PyAny>) -> Option<u16> {
    obj.cast_exact::<PyInt>().ok()?.extract::<u16>().ok()
}

/// A numeric host as inet_pton reads it (CPython tries inet_pton before getaddrinfo;
/// std's parsers take no form inet_pton refuses). A scope (`%`) is getaddrinfo's.
fn host_of(obj: &Bound<'_, PyAny>) -> Option<std::net::IpAddr> {
    let host = obj.cast_exact::<PyString>().ok()?.to_str().ok()?;
    host.parse().ok()
}

/// The kernel's form of a destination given as a tuple with a numeric host, for a socket
/// of `family`; None for anything the socket module has to convert (or refuse).
pub(crate) fn from_python(family: libc::c_int, obj: &Bound<'_, PyAny>) -> Option<SockAddr> {
    let tuple = obj.cast_exact::<PyTuple>().ok()?;
    let mut addr = SockAddr::empty();
    let storage = (&raw mut addr.storage).cast::<u8>();
    match (family, tuple.len()) {
        (libc::AF_INET, 2) => {
            let port = port_of(&tuple.get_item(1).ok()?)?;
            // SAFETY: the storage is large enough and aligned for a sockaddr_in.
            let sin = unsafe { &mut *storage.cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = port.to_be();
            let std::net::IpAddr::V4(ip) = host_of(&tuple.get_item(0).ok()?)? else {
                return None;
            };
            sin.sin_addr.s_addr = u32::from(ip).to_be();
            addr.len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
        (libc::AF_INET6, 2 | 4) => {
            let port = port_of(&tuple.get_item(1).ok()?)?;
            let (flowinfo, scope_id) = if tuple.len() == 4 {
                let flow = tuple.get_item(2).ok()?;
                let scope = tuple.get_item(3).ok()?;
                let flow = flow.cast_exact::<PyInt>().ok()?.extract::<u32>().ok()?;
                let scope = scope.cast_exact::<PyInt>().ok()?.extract::<u32>().ok()?;
                // CPython: "flowinfo must be 0-1048575."
                (flow <= 0xfffff).then_some((flow, scope))?
            } else {
                (0, 0)
            };
            // SAFETY: the storage is large enough and aligned for a sockaddr_in6.
            let sin6 = unsafe { &mut *storage.cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = port.to_be();
            sin6.sin6_flowinfo = flowinfo.to_be();
            sin6.sin6_scope_id = scope_id;
            let std::net::IpAddr::V6(ip) = host_of(&tuple.get_item(0).ok()?)? else {
                return None;
            };
            sin6.sin6_addr.s6_addr = ip.octets();
            addr.len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        }
        _ => return None,
    }
    Some(addr)
}

/// The last sender's address in both forms, and the last destination's: a datagram from
/// the same peer gets the same Python object, and a reply to that object (or to the last
/// destination) needs no conversion.
#[derive(Default)]
pub(crate) struct AddrCache {
    from: Option<(SockAddr, Py<PyAny>)>,
    to: Option<(Py<PyAny>, SockAddr)>,
}

impl AddrCache {
    /// The Python object for a sender that is the cached one.
    pub(crate) fn lookup_from(&self, py: Python<'_>, addr: &SockAddr) -> Option<Py<PyAny>> {
        let (known, obj) = self.from.as_ref()?;
        (known.as_bytes() == addr.as_bytes()).then(|| obj.clone_ref(py))
    }

    /// Replaces the cached sender; the caller drops the old one once no borrow is held.
    pub(crate) fn store_from(&mut self, addr: SockAddr, obj: Py<PyAny>) -> Option<Py<PyAny>> {
        self.from.replace((addr, obj)).map(|(_, old)| old)
    }

    /// The kernel's form of `obj` if it is the cached destination or sender.
    pub(crate) fn lookup_to(&self, obj: &Bound<'_, PyAny>) -> Option<SockAddr> {
        if let Some((known, addr)) = &self.to {
            if known.as_ptr() == obj.as_ptr() {
                return Some(*addr);
            }
        }
        // Not an unnamed sender's None: sendto(data, None) is the socket module's error.
        let (addr, known) = self.from.as_ref()?;
        (addr.len != 0 && known.as_ptr() == obj.as_ptr()).then_some(*addr)
    }

    pub(crate) fn store_to(&mut self, obj: Py<PyAny>, addr: SockAddr) -> Option<Py<PyAny>> {
        self.to.replace((obj, addr)).map(|(old, _)| old)
    }

    pub(crate) fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some((_, obj)) = &self.from {
            visit.call(obj)?;
        }
        if let Some((obj, _)) = &self.to {
            visit.call(obj)?;
        }
        Ok(())
    }

    /// Empties the cache; the caller drops what it returns once no borrow is held.
    pub(crate) fn take(&mut self) -> AddrCache {
        std::mem::take(self)
    }
}
