// Sets pyo3's `Py_3_x` cfgs for the interpreter being built for: APIs that asyncio adds in
// a given version (Handle.get_context() in 3.12) exist only in builds for that version on.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
