//! Native transports: the stream transport for TCP and Unix sockets, and the TLS layer
//! over it.

mod stream;
mod tls;

use pyo3::prelude::*;

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<stream::StreamTransport>()?;
    tls::init_pymodule(m)
}
