//! Native transports: the stream transport for TCP and Unix sockets.

mod stream;

use pyo3::prelude::*;

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<stream::StreamTransport>()
}
