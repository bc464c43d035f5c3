//! The accept loop (asyncio's `selector_events._accept_connection`): a `Listener` is the
//! read callback of one listening socket; each readiness event accepts up to `backlog`
//! connections and hands each straight to a stream transport.

use std::os::fd::RawFd;

use nix::errno::Errno;
use pyo3::exceptions::{
    PyBlockingIOError, PyConnectionAbortedError, PyInterruptedError, PyOSError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::{self, os_error};
use crate::gil_cell::GilCell;
use crate::loop_core::fds::Dir;
use crate::loop_core::LoopCore;
use crate::pyapi;
use crate::syscalls::accept::{accept4, converted_family, socket_kind, Accepted};
use crate::transports::stream::{AcceptedSocket, RawSock, StreamTransport};

/// asyncio's `constants.ACCEPT_RETRY_DELAY`: how long to stop accepting when out of fds.
const ACCEPT_RETRY_DELAY: f64 = 1.0;

static SOCKET_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TRANSPORT_SOCKET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ACCEPT_TLS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SOCKET_TRANSPORT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static LOOP_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

struct ListenState {
    loop_: Option<Py<LoopCore>>,
    sock: Option<Py<PyAny>>,
    protocol_factory: Option<Py<PyAny>>,
    /// The TLS context if it is true (asyncio: `if sslcontext:`), else None.
    ssl_context: Option<Py<PyAny>>,
    server: Option<Py<PyAny>>,
    ssl_handshake_timeout: Option<Py<PyAny>>,
    ssl_shutdown_timeout: Option<Py<PyAny>>,
    /// 3.15: the server's context, copied for each connection.
    context: Option<Py<PyAny>>,
}

/// Accepts the connections of one listening socket (its read callback).
#[pyclass(name = "Listener", module = "ferroloop._core", frozen)]
pub struct Listener {
    fd: RawFd,
    /// asyncio accepts at most `backlog + 1` connections per readiness event.
    per_event: usize,
    /// The socket's family, type and protocol, for the accepted ones.
    family: i32,
    sock_type: i32,
    proto: i32,
    /// A plain `socket.socket` of a family whose addresses we convert: accept4 here.
    native: bool,
    st: GilCell<ListenState>,
}

fn opt(py: Python<'_>, o: &Option<Py<PyAny>>) -> Py<PyAny> {
    o.as_ref().map_or_else(|| py.None(), |o| o.clone_ref(py))
}

impl Listener {
    /// A connection was accepted: its protocol and transport are made in the next
    /// iteration, in a copy of the current context (3.15: of the server's), where
    /// asyncio's accept task makes them.
    fn accepted(
        slf: &Bound<'_, Self>,
        lp: &Bound<'_, LoopCore>,
        conn: Bound<'_, PyAny>,
        addr: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let debug = lp.get().debug(py);
        let (ssl, server, context) = {
            let st = this.st.borrow(py);
            (
                st.ssl_context.as_ref().map(|c| c.clone_ref(py)),
                opt(py, &st.server),
                st.context.as_ref().map(|c| c.clone_ref(py)),
            )
        };
        // The socket object is made now where it is shown or handed on: in debug mode's
        // log line and to the TLS layer. Otherwise the transport makes it if asked.
        let conn = match conn.cast::<AcceptedSocket>() {
            Ok(a) if debug || ssl.is_some() => match a.get().take(py) {
                Some(raw) => raw.into_socket(py)?,
                None => return Ok(()),
            },
            _ => conn,
        };
        if debug {
            pyapi::asyncio_logger(py)?.call_method1(
                "debug",
                ("%r got a new connection from %r: %r", &server, &addr, &conn),
            )?;
        }
        let ctx = match &context {
            Some(c) => c.bind(py).call_method0(pyo3::intern!(py, "copy"))?,
            None => pyapi::copy_context(py)?,
        };
        if let Some(ssl) = ssl {
            // TLS: the handshake waits on a future, so a task does it, as in asyncio.
            let st = this.st.borrow(py);
            let (factory, hs, sd) = (
                opt(py, &st.protocol_factory),
                opt(py, &st.ssl_handshake_timeout),
                opt(py, &st.ssl_shutdown_timeout),
            );
            drop(st);
            let extra = PyDict::new(py);
            extra.set_item(pyo3::intern!(py, "peername"), &addr)?;
            let accept = pyapi::cached_attr(py, &ACCEPT_TLS, "ferroloop._server", "accept_tls")?;
            let ctx_arg = if context.is_some() {
                ctx
            } else {
                py.None().into_bound(py)
            };
            accept.call1((lp, factory, conn, extra, ssl, server, hs, sd, ctx_arg))?;
            return Ok(());
        }
        let connect = slf.getattr(pyo3::intern!(py, "_connect"))?;
        let args = if context.is_some() {
            PyTuple::new(py, [conn, addr, ctx.clone()])?
        } else {
            PyTuple::new(py, [conn, addr])?
        };
        LoopCore::call_soon(lp, &connect, &args, Some(&ctx))?;
        Ok(())
    }

    /// asyncio reports a failure to set up an accepted connection in debug mode only;
    /// the connection's socket is closed (asyncio leaves it to the collector).
    #[cold]
    fn creation_failed(
        lp: &Bound<'_, LoopCore>,
        conn: &Bound<'_, PyAny>,
        err: PyErr,
        protocol: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = lp.py();
        if errors::propagates(py, &err) {
            let _ = conn.call_method0("close");
            return Err(err);
        }
        conn.call_method0("close")?;
        if lp.get().debug(py) {
            let ctx = PyDict::new(py);
            ctx.set_item(
                "message",
                "Error on transport creation for incoming connection",
            )?;
            ctx.set_item("exception", err.into_value(py))?;
            if let Some(p) = protocol {
                ctx.set_item("protocol", p)?;
            }
            lp.call_method1("call_exception_handler", (ctx,))?;
        }
        Ok(())
    }

    /// One accept: `Ok(Some((conn, addr)))`, `Ok(None)` when there is nothing (more) to
    /// accept now, `Err(errno)` when accept failed.
    fn accept_one<'py>(
        &self,
        py: Python<'py>,
        sock: &Bound<'py, PyAny>,
    ) -> PyResult<Result<Option<Accepted<'py>>, Errno>> {
        if !self.native {
            // asyncio's own calls: sock.accept(), then conn.setblocking(False).
            return match sock.call_method0(pyo3::intern!(py, "accept")) {
                Ok(pair) => {
                    let conn = pair.get_item(0)?;
                    conn.call_method1(pyo3::intern!(py, "setblocking"), (false,))?;
                    Ok(Ok(Some((conn, pair.get_item(1)?))))
                }
                Err(e)
                    if e.is_instance_of::<PyBlockingIOError>(py)
                        || e.is_instance_of::<PyInterruptedError>(py) =>
                {
                    Ok(Ok(None))
                }
                Err(e) if e.is_instance_of::<PyConnectionAbortedError>(py) => {
                    Ok(Err(Errno::ECONNABORTED))
                }
                Err(e) if e.is_instance_of::<PyOSError>(py) => {
                    let errno: Option<i32> = e.value(py).getattr("errno")?.extract()?;
                    match errno.map(Errno::from_raw) {
                        Some(
                            n @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM),
                        ) => Ok(Err(n)),
                        _ => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
        }
        let (fd, addr) = match accept4(py, self.fd)? {
            Ok((fd, Some(addr))) => (fd, addr),
            Ok((_, None)) => return Ok(Err(Errno::EAFNOSUPPORT)),
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(Ok(None)),
            Err(e) => return Ok(Err(e)),
        };
        let raw = RawSock::new(fd, (self.family, self.sock_type, self.proto));
        let conn = Bound::new(py, AcceptedSocket::new(raw))?.into_any();
        Ok(Ok(Some((conn, addr))))
    }

    /// The stream transport of an accepted connection: ferroloop's own, made here (what
    /// `SocketTransport.__init__` does, without its Python frame) when the loop's
    /// `_make_socket_transport` is ferroloop's; else the loop's method, with the socket
    /// object, as asyncio calls it.
    fn make_transport<'py>(
        lp: &Bound<'py, LoopCore>,
        conn: &Bound<'py, PyAny>,
        protocol: &Bound<'py, PyAny>,
        extra: Bound<'py, PyDict>,
        server: &Bound<'py, PyAny>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        let py = lp.py();
        let name = pyo3::intern!(py, "_make_socket_transport");
        if let Ok(accepted) = conn.cast::<AcceptedSocket>() {
            let ours =
                pyapi::cached_attr(py, &LOOP_TYPE, "ferroloop._loop", "Loop")?.getattr(name)?;
            if lp.get_type().getattr(name)?.is(&ours) {
                if pyapi::version(py) >= (3, 12, 0) {
                    // asyncio 3.12+ refuses an fd that has a transport.
                    let fd = pyo3::types::PyInt::new(py, accepted.get().fileno(py));
                    LoopCore::ensure_fd_no_transport(lp, fd.as_any())?;
                }
                let cls = pyapi::cached_attr(
                    py,
                    &SOCKET_TRANSPORT,
                    "ferroloop._transports",
                    "SocketTransport",
                )?;
                let transport = cls.call_method1(pyo3::intern!(py, "__new__"), (&cls,))?;
                transport.setattr(pyo3::intern!(py, "_extra"), extra)?;
                let lp = lp.as_any();
                return StreamTransport::open(
                    &transport,
                    lp,
                    conn,
                    protocol,
                    None,
                    Some(server),
                    context,
                );
            }
            let Some(sock) = accepted.get().take(py) else {
                return Ok(());
            };
            return Self::call_make_transport(
                lp,
                &sock.into_socket(py)?,
                protocol,
                extra,
                server,
                context,
            );
        }
        Self::call_make_transport(lp, conn, protocol, extra, server, context)
    }

    /// `loop._make_socket_transport(sock, protocol, extra=, server=[, context=])`.
    fn call_make_transport<'py>(
        lp: &Bound<'py, LoopCore>,
        sock: &Bound<'py, PyAny>,
        protocol: &Bound<'py, PyAny>,
        extra: Bound<'py, PyDict>,
        server: &Bound<'py, PyAny>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        let py = lp.py();
        let kwargs = PyDict::new(py);
        kwargs.set_item(pyo3::intern!(py, "extra"), extra)?;
        kwargs.set_item(pyo3::intern!(py, "server"), server)?;
        if let Some(c) = context {
            kwargs.set_item(pyo3::intern!(py, "context"), c)?;
        }
        lp.call_method(
            pyo3::intern!(py, "_make_socket_transport"),
            (sock, protocol),
            Some(&kwargs),
        )?;
        Ok(())
    }

    /// Out of fds (or buffers): tell the exception handler, stop accepting for a while
    /// (Linux keeps reporting the socket readable), then go on, as asyncio does.
    #[cold]
    fn out_of_resources(
        slf: &Bound<'_, Self>,
        lp: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        err: Errno,
    ) -> PyResult<()> {
        let py = slf.py();
        let ctx = PyDict::new(py);
        ctx.set_item("message", "socket.accept() out of system resource")?;
        ctx.set_item("exception", os_error(err).into_value(py))?;
        let ts = pyapi::cached_attr(py, &TRANSPORT_SOCKET, "asyncio.trsock", "TransportSocket")?;
        ctx.set_item("socket", ts.call1((sock,))?)?;
        lp.call_method1("call_exception_handler", (ctx,))?;
        LoopCore::remove_io_owned_by(lp, slf.get().fd, Dir::Read, slf.as_any())?;
        let restart = slf.getattr(pyo3::intern!(py, "_restart"))?;
        lp.call_method1(
            pyo3::intern!(py, "call_later"),
            (ACCEPT_RETRY_DELAY, restart),
        )?;
        Ok(())
    }

    /// Watches the socket for connections, with this listener as the callback.
    pub(crate) fn watch(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let Some(lp) = slf
            .get()
            .st
            .borrow(py)
            .loop_
            .as_ref()
            .map(|l| l.clone_ref(py))
        else {
            return Ok(());
        };
        let fd = pyo3::types::PyInt::new(py, slf.get().fd);
        LoopCore::add_io(
            lp.bind(py),
            fd.as_any(),
            slf.as_any(),
            &PyTuple::empty(py),
            Dir::Read,
            None,
        )?;
        Ok(())
    }
}

#[pymethods]
impl Listener {
    #[new]
    #[pyo3(signature = (loop_, sock, protocol_factory, ssl_context, server, backlog, ssl_handshake_timeout, ssl_shutdown_timeout, context))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        loop_: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol_factory: &Bound<'_, PyAny>,
        ssl_context: &Bound<'_, PyAny>,
        server: &Bound<'_, PyAny>,
        backlog: &Bound<'_, PyAny>,
        ssl_handshake_timeout: &Bound<'_, PyAny>,
        ssl_shutdown_timeout: &Bound<'_, PyAny>,
        context: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let py = loop_.py();
        let lp = loop_
            .cast::<LoopCore>()
            .map_err(|_| pyo3::exceptions::PyTypeError::new_err("a ferroloop loop is required"))?;
        let fd: RawFd = sock.call_method0("fileno")?.extract()?;
        let (family, sock_type, proto) = socket_kind(sock)?;
        let plain = sock
            .get_type()
            .is(&pyapi::cached_attr(py, &SOCKET_TYPE, "socket", "socket")?);
        let native = plain && converted_family(family);
        // asyncio: `for _ in range(backlog + 1)` (a bad backlog fails listen() first).
        let backlog: i64 = backlog.extract().unwrap_or(100);
        let per_event = usize::try_from(backlog.saturating_add(1))
            .unwrap_or(1)
            .max(1);
        let some = |o: &Bound<'_, PyAny>| (!o.is_none()).then(|| o.clone().unbind());
        Ok(Listener {
            fd,
            per_event,
            family,
            sock_type,
            proto,
            native,
            st: GilCell::new(ListenState {
                loop_: Some(lp.clone().unbind()),
                sock: Some(sock.clone().unbind()),
                protocol_factory: Some(protocol_factory.clone().unbind()),
                ssl_context: if ssl_context.is_truthy()? {
                    Some(ssl_context.clone().unbind())
                } else {
                    None
                },
                server: some(server),
                ssl_handshake_timeout: Some(ssl_handshake_timeout.clone().unbind()),
                ssl_shutdown_timeout: Some(ssl_shutdown_timeout.clone().unbind()),
                context: some(context),
            }),
        })
    }

    /// The socket is readable: accept what is there, up to `backlog + 1` connections.
    fn __call__(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (lp, sock) = {
            let st = this.st.borrow(py);
            match (&st.loop_, &st.sock) {
                (Some(l), Some(s)) => (
                    l.clone_ref(py).into_bound(py),
                    s.clone_ref(py).into_bound(py),
                ),
                _ => return Ok(()),
            }
        };
        for _ in 0..this.per_event {
            match this.accept_one(py, &sock)? {
                Ok(Some((conn, addr))) => Self::accepted(slf, &lp, conn, addr)?,
                Ok(None) => return Ok(()),
                // Aborted before we took it: the next one.
                Err(Errno::ECONNABORTED) => continue,
                Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                    return Self::out_of_resources(slf, &lp, &sock, e);
                }
                // Anything else goes to the exception handler, from the run step.
                Err(e) => return Err(os_error(e)),
            }
        }
        Ok(())
    }

    /// Makes the protocol and the stream transport of an accepted connection (run in
    /// the connection's context; 3.15 passes it to the transport too).
    #[pyo3(signature = (conn, addr, context=None))]
    fn _connect(
        slf: &Bound<'_, Self>,
        conn: &Bound<'_, PyAny>,
        addr: &Bound<'_, PyAny>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let (lp, factory, server) = {
            let st = slf.get().st.borrow(py);
            let Some(lp) = st.loop_.as_ref().map(|l| l.clone_ref(py)) else {
                return Ok(());
            };
            (lp, opt(py, &st.protocol_factory), opt(py, &st.server))
        };
        let lp = lp.bind(py);
        let mut protocol = None;
        let made = (|| {
            let p = factory.bind(py).call0()?;
            protocol = Some(p.clone());
            let extra = PyDict::new(py);
            extra.set_item(pyo3::intern!(py, "peername"), addr)?;
            Self::make_transport(lp, conn, &p, extra, server.bind(py), context)
        })();
        match made {
            Ok(()) => Ok(()),
            Err(e) => Self::creation_failed(lp, conn, e, protocol),
        }
    }

    /// After `ACCEPT_RETRY_DELAY`: accept again, unless the server stopped meanwhile.
    fn _restart(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let Some(sock) = slf
            .get()
            .st
            .borrow(py)
            .sock
            .as_ref()
            .map(|s| s.clone_ref(py))
        else {
            return Ok(());
        };
        let fileno: i64 = sock.bind(py).call_method0("fileno")?.extract()?;
        if fileno != i64::from(slf.get().fd) {
            return Ok(()); // closed by _stop_serving()
        }
        Self::watch(slf)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(st) = self.st.try_borrow_for_gc(&visit) else {
            return Ok(());
        };
        if let Some(l) = &st.loop_ {
            visit.call(l)?;
        }
        for obj in [
            &st.sock,
            &st.protocol_factory,
            &st.ssl_context,
            &st.server,
            &st.ssl_handshake_timeout,
            &st.ssl_shutdown_timeout,
            &st.context,
        ]
        .into_iter()
        .flatten()
        {
            visit.call(obj)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let released = {
                let mut st = self.st.borrow_mut(py);
                (
                    st.loop_.take(),
                    st.sock.take(),
                    st.protocol_factory.take(),
                    st.ssl_context.take(),
                    st.server.take(),
                    st.context.take(),
                )
            };
            drop(released);
        })
    }
}
