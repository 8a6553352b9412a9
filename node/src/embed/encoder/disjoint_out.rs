//! One output buffer written by several pool threads at once, each its own
//! part of it (column blocks of a product, a head's columns of the context).
//!
//! A `&mut [f32]` cannot be handed to more than one thread, and splitting it
//! into slices does not fit parts that interleave (a head's columns in every
//! row), so the kernels share the raw pointer and each promises, at its
//! `unsafe` call, to touch only its own elements.

/// The buffer's start, shareable between threads (see the module documentation).
#[derive(Clone, Copy)]
pub struct DisjointOut(*mut f32);

// SAFETY: only used for writes to disjoint elements, one thread per element,
// while the buffer outlives the parallel section (its users' contracts).
unsafe impl Send for DisjointOut {}
unsafe impl Sync for DisjointOut {}

impl DisjointOut {
    /// Shares `out`; the borrow ends here, so the caller must keep `out`
    /// alive and otherwise untouched until the threads are done.
    pub fn new(out: &mut [f32]) -> Self {
        Self(out.as_mut_ptr())
    }

    /// The element `i` past the start (a method, so closures capture the
    /// whole wrapper rather than its raw pointer field).
    ///
    /// # Safety
    /// `i` must lie inside the buffer, and no other thread may access it.
    pub unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}
