//! `GilCell`: interior mutability whose every access is serialised by the GIL.

use std::cell::{Ref, RefCell, RefMut};

use pyo3::Python;

/// A `RefCell` that may live in a `Sync` pyclass: borrowing it takes a `Python` token, so
/// only the thread holding the GIL can reach the value. Borrows must never be held across
/// a call into Python (the callee may re-enter the loop).
pub struct GilCell<T>(RefCell<T>);

// SAFETY: every access goes through `borrow`/`borrow_mut`, which require a `Python` token,
// i.e. the GIL; ferroloop refuses to build for free-threaded interpreters (see lib.rs), so
// two threads can never touch the `RefCell` at the same time.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub const fn new(value: T) -> Self {
        Self(RefCell::new(value))
    }

    #[inline]
    pub fn borrow<'a>(&'a self, _py: Python<'a>) -> Ref<'a, T> {
        self.0.borrow()
    }

    #[inline]
    pub fn borrow_mut<'a>(&'a self, _py: Python<'a>) -> RefMut<'a, T> {
        self.0.borrow_mut()
    }
}

impl<T> GilCell<T> {
    /// Borrow during a GC traversal: the collector runs with the GIL held, which the
    /// `PyVisit` witnesses. Fails (and the caller visits nothing) if a borrow is live.
    pub fn try_borrow_for_gc(
        &self,
        _visit: &pyo3::PyVisit<'_>,
    ) -> Result<Ref<'_, T>, std::cell::BorrowError> {
        self.0.try_borrow()
    }
}
