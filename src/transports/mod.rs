//! Native transports: the stream transport for TCP and Unix sockets, the datagram
//! transport for UDP and Unix datagram sockets, the pipe transports, and the plumbing
//! and flow control they share.

pub(crate) mod base;
mod datagram;
pub(crate) mod flow;
pub(crate) mod pipe;
mod stream;

use pyo3::prelude::*;

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<stream::StreamTransport>()?;
    m.add_class::<datagram::DatagramTransport>()?;
    pipe::init_pymodule(m)
}
