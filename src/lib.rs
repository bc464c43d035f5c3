//! ferroloop's native core: the event loop, its handles, the poller.

mod clock;
mod errors;
mod gil_cell;
pub(crate) mod loop_core;
mod poller;
mod pyapi;
mod server;
mod sock_ops;
mod subprocess;
mod syscalls;
mod transports;
mod watchdog;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Loop state is serialised by the GIL (see gil_cell.rs): refuse free-threaded builds.
    let sys = m.py().import("sys")?;
    if sys.hasattr("_is_gil_enabled")? && !sys.call_method0("_is_gil_enabled")?.is_truthy()? {
        return Err(pyo3::exceptions::PyImportError::new_err(
            "ferroloop needs the GIL; free-threaded CPython is not supported",
        ));
    }
    clock::init_ticks();
    loop_core::init_pymodule(m)?;
    transports::init_pymodule(m)?;
    server::init_pymodule(m)?;
    subprocess::init_pymodule(m)?;
    sock_ops::init_pymodule(m)?;
    watchdog::init_pymodule(m)
}
