//! Lets `cargo test` run from a clean checkout: the crate links libpython (no `extension-module`
//! feature), so test binaries need to find it at run time. This adds an rpath to the interpreter's
//! library directory when PyO3 links libpython; maturin builds of the extension module do not link
//! libpython, and then this adds nothing.
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
}
