//! The only module with `unsafe`: page-locked, non-dumpable memory for the LMK
//! and the cache of unwrapped keys, and switching core dumps off. Everything
//! here degrades gracefully: where the OS refuses (low RLIMIT_MEMLOCK, no
//! madvise), memory stays usable and [`lock_failures`] counts the refusals.
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use zeroize::Zeroize;

static LOCK_FAILURES: AtomicU64 = AtomicU64::new(0);
static LOCKED_BYTES: AtomicU64 = AtomicU64::new(0);

/// How many allocations could not be `mlock`ed (RLIMIT_MEMLOCK too low).
pub fn lock_failures() -> u64 {
    LOCK_FAILURES.load(Ordering::Relaxed)
}

/// Bytes currently locked in RAM by [`Locked`] values.
pub fn locked_bytes() -> u64 {
    LOCKED_BYTES.load(Ordering::Relaxed)
}

const PAGE: usize = 4096;

/// A value on its own page-aligned allocation that is locked in RAM (`mlock`)
/// and excluded from core dumps (`MADV_DONTDUMP`) where the OS allows, and
/// whose bytes are zeroed after the value is dropped.
pub struct Locked<T> {
    ptr: NonNull<T>,
    layout: Layout,
    locked: bool,
}

// SAFETY: Locked<T> owns its T exclusively, like Box<T>.
unsafe impl<T: Send> Send for Locked<T> {}
// SAFETY: shared access only hands out &T, like Box<T>.
unsafe impl<T: Sync> Sync for Locked<T> {}

impl<T> Locked<T> {
    pub fn new(value: T) -> Locked<T> {
        let size = std::mem::size_of::<T>().max(1).div_ceil(PAGE) * PAGE;
        let align = std::mem::align_of::<T>().max(PAGE);
        let Ok(layout) = Layout::from_size_align(size, align) else {
            // invariant: size is a small multiple of PAGE and align a power of two
            unreachable!("page layout is always valid")
        };
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) } as *mut T;
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: ptr is valid for writes of T and suitably aligned.
        unsafe { ptr.as_ptr().write(value) };
        let locked = protect(ptr.as_ptr() as *mut u8, size);
        Locked {
            ptr,
            layout,
            locked,
        }
    }
}

impl<T> Deref for Locked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: ptr was initialised in new() and lives until drop.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> Drop for Locked<T> {
    fn drop(&mut self) {
        // SAFETY: the value was initialised in new() and is dropped exactly once;
        // then the whole region (ours alone) is zeroed and released.
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr());
            let bytes =
                std::slice::from_raw_parts_mut(self.ptr.as_ptr() as *mut u8, self.layout.size());
            bytes.zeroize();
            if self.locked {
                libc::munlock(self.ptr.as_ptr() as *const libc::c_void, self.layout.size());
                LOCKED_BYTES.fetch_sub(self.layout.size() as u64, Ordering::Relaxed);
            }
            dealloc(self.ptr.as_ptr() as *mut u8, self.layout);
        }
    }
}

fn protect(ptr: *mut u8, len: usize) -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: ptr..ptr+len is a page-aligned region we own.
    unsafe {
        libc::madvise(ptr as *mut libc::c_void, len, libc::MADV_DONTDUMP);
    }
    // SAFETY: as above; mlock only pins pages we own.
    let rc = unsafe { libc::mlock(ptr as *const libc::c_void, len) };
    if rc == 0 {
        LOCKED_BYTES.fetch_add(len as u64, Ordering::Relaxed);
        true
    } else {
        LOCK_FAILURES.fetch_add(1, Ordering::Relaxed);
        false
    }
}

/// Switches core dumps off for this process (RLIMIT_CORE = 0 and, on Linux,
/// PR_SET_DUMPABLE = 0). Called by the daemon's `main` only, never by the library.
pub fn disable_core_dumps() -> std::io::Result<()> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes no pointers.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_value_is_page_aligned_and_readable() {
        let v = Locked::new([7u8; 32]);
        assert_eq!(v.as_ptr() as usize % PAGE, 0);
        assert_eq!(v[31], 7);
    }

    #[test]
    fn locked_value_runs_its_drop() {
        use std::sync::Arc;
        let marker = Arc::new(());
        let v = Locked::new(marker.clone());
        assert_eq!(Arc::strong_count(&marker), 2);
        drop(v);
        assert_eq!(Arc::strong_count(&marker), 1);
    }
}
