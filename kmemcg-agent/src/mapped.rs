//! An array map (`BPF_F_MMAPABLE`) read and written in place through `mmap`: reading the slots
//! in use costs memory reads, not a system call per slot or a copy of the whole table.
use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd as _},
    ptr::NonNull,
};

use aya::Pod;

/// The elements of an array map, shared with the eBPF programs, which update them meanwhile.
pub struct MappedArray<T> {
    base: NonNull<T>,
    len: usize,
    bytes: usize,
    _values: PhantomData<T>,
}

// SAFETY: the mapping is plain shared memory; every access is a volatile read or write of a
// whole aligned element or field.
unsafe impl<T: Send> Send for MappedArray<T> {}
unsafe impl<T: Sync> Sync for MappedArray<T> {}

impl<T: Pod> MappedArray<T> {
    /// Maps the `len` elements of the array map `fd` (created with `BPF_F_MMAPABLE`).
    pub fn new(fd: impl AsFd, len: usize) -> io::Result<Self> {
        // The kernel lays the elements out every round_up(value_size, 8) bytes.
        const { assert!(size_of::<T>().is_multiple_of(8)) };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (len * size_of::<T>()).div_ceil(page).max(1) * page;
        // SAFETY: a new shared mapping of the map's memory; the kernel checks the length.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<T>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self {
            base,
            len,
            bytes,
            _values: PhantomData,
        })
    }

    /// Element `index`, or None past the end.
    pub fn get(&self, index: usize) -> Option<T> {
        let element = self.element(index)?;
        // SAFETY: an aligned element of the live mapping.
        Some(unsafe { std::ptr::read_volatile(element) })
    }

    /// Overwrites element `index` (ignored past the end).
    pub fn set(&self, index: usize, value: T) {
        if let Some(element) = self.element(index) {
            // SAFETY: as in `get`.
            unsafe { std::ptr::write_volatile(element, value) }
        }
    }

    /// Overwrites the u64 at `offset` bytes into element `index`, and nothing else of it (the
    /// programs update the other fields meanwhile).
    pub fn set_u64_at(&self, index: usize, offset: usize, value: u64) {
        assert!(offset.is_multiple_of(8) && offset + 8 <= size_of::<T>());
        if let Some(element) = self.element(index) {
            // SAFETY: an aligned u64 inside an element of the live mapping.
            unsafe {
                std::ptr::write_volatile(element.cast::<u8>().add(offset).cast::<u64>(), value)
            }
        }
    }

    fn element(&self, index: usize) -> Option<*mut T> {
        // SAFETY: within the mapping.
        (index < self.len).then(|| unsafe { self.base.as_ptr().add(index) })
    }
}

impl MappedArray<i64> {
    /// Adds `delta` to element `index` atomically (the programs update it from every CPU);
    /// returns the value before, or None past the end.
    pub fn fetch_add(&self, index: usize, delta: i64) -> Option<i64> {
        let element = self.element(index)?;
        // SAFETY: an aligned i64 of the live mapping, only ever accessed atomically or as a
        // whole by the programs and the agent.
        let atomic = unsafe { std::sync::atomic::AtomicI64::from_ptr(element) };
        Some(atomic.fetch_add(delta, std::sync::atomic::Ordering::SeqCst))
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
