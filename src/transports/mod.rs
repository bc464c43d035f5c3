//! Native transports: the stream transport for TCP and Unix sockets, the pipe transports
//! (and the datagram transport), with the plumbing and flow control they share.

pub(crate) mod base;
pub(crate) mod flow;
pub(crate) mod pipe;
mod stream;

use pyo3::prelude::*;

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<stream::StreamTransport>()?;
    pipe::init_pymodule(m)
}
