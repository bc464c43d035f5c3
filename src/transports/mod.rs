//! Native transports: the stream transport for TCP and Unix sockets, the TLS layer over
//! it, the datagram transport for UDP and Unix datagram sockets, the pipe transports, and
//! the plumbing and flow control they share.

pub(crate) mod base;
mod core_method;
mod datagram;
pub(crate) mod flow;
pub(crate) mod pipe;
pub(crate) mod stream;
mod tls;

use pyo3::prelude::*;

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<core_method::CoreMethod>()?;
    m.add_class::<stream::StreamTransport>()?;
    m.add_class::<stream::AcceptedSocket>()?;
    m.add_class::<datagram::DatagramTransport>()?;
    tls::init_pymodule(m)?;
    pipe::init_pymodule(m)
}
