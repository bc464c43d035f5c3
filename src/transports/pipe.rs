//! The native pipe transports: the read and write ends of pipes, FIFOs, character devices
//! and ptys, with the semantics of asyncio's `_UnixReadPipeTransport` and
//! `_UnixWritePipeTransport` (unix_events.py): flow control, EOF, EPIPE and EIO.
//!
//! The API other transports build on (the subprocess transport's stdin, stdout, stderr):
//!
//! * Python: `ferroloop._pipes.ReadPipeTransport(loop, pipe, protocol, waiter=None,
//!   extra=None, context=None)` and `WritePipeTransport(...)`, asyncio's constructor
//!   signatures plus `context` (the `contextvars.Context` the protocol's callbacks run in;
//!   None: a copy of the current one per callback, as asyncio's pipes do on every
//!   version). They check the file (FIFO, socket or character device, else ValueError),
//!   make it non-blocking, schedule `connection_made`, the start of watching and the
//!   waiter, as asyncio's do. `Loop._make_read_pipe_transport` and
//!   `_make_write_pipe_transport` make them, so `connect_read_pipe`/`connect_write_pipe`
//!   (and asyncio's subprocess code, which calls those) get them.
//! * Rust: `ReadPipeTransportCore::new(loop, pipe, protocol, owner, context)` and
//!   `WritePipeTransportCore::new(...)`, where `owner` is the Python transport object the
//!   protocol and the exception handler are given. A core never closes its pipe but in
//!   `_call_connection_lost`; it schedules nothing itself until `_start_reading()` (read
//!   end) or `_watch_peer()` (write end, FIFOs and sockets: asyncio's way of learning that
//!   the reader went away) is called, which the Python classes schedule after
//!   `connection_made`.

mod read;
mod write;

use pyo3::prelude::*;

pub(crate) use read::ReadPipeTransport;
pub(crate) use write::WritePipeTransport;

/// asyncio's `_UnixReadPipeTransport.max_size`: the most one read asks for.
const MAX_READ: usize = 256 * 1024;
/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// `connection_lost(exc)` on `protocol`, then the pipe closed whatever it did (asyncio's
/// `try: ... finally: self._pipe.close()`); the error of the first step that failed.
fn lose_connection(
    py: Python<'_>,
    protocol: Option<Py<PyAny>>,
    pipe: Option<Py<PyAny>>,
    exc: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let result = match protocol {
        Some(p) => p.bind(py).call_method1("connection_lost", (exc,)).map(drop),
        None => Ok(()),
    };
    let closed = match pipe {
        Some(pipe) => pipe.bind(py).call_method0("close").map(drop),
        None => Ok(()),
    };
    result.and(closed)
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ReadPipeTransport>()?;
    m.add_class::<WritePipeTransport>()
}
