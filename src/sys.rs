//! The only module with `unsafe`: page-locked, non-dumpable memory for the LMK
//! and the cache of unwrapped keys, switching core dumps off, and the load
//! generator's timerfd. Everything
//! here degrades gracefully: where the OS refuses (low RLIMIT_MEMLOCK, no
//! madvise), memory stays usable and [`lock_failures`] counts the refusals.
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::mem::MaybeUninit;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
/// Locked memory is taken from the OS in chunks of this size, each locked and
/// marked non-dumpable once. Protecting single pages instead splits the
/// process's mappings until `vm.max_map_count` is hit and mmap fails.
const CHUNK: usize = 1 << 20;
/// Slot sizes of the arena (bytes); a value larger than the last, or more
/// aligned than 64, gets whole pages of its own.
const CLASSES: [usize; 7] = [64, 128, 256, 512, 1024, 2048, 4096];

/// Free slots per size class (addresses), refilled a chunk at a time.
static FREE: [std::sync::Mutex<Vec<usize>>; CLASSES.len()] =
    [const { std::sync::Mutex::new(Vec::new()) }; CLASSES.len()];

fn class_of(size: usize, align: usize) -> Option<usize> {
    if align > 64 {
        return None;
    }
    CLASSES.iter().position(|c| *c >= size)
}

fn slot_alloc(class: usize) -> *mut u8 {
    let mut free = FREE[class].lock().unwrap_or_else(|p| p.into_inner());
    if free.is_empty() {
        let Ok(layout) = Layout::from_size_align(CHUNK, PAGE) else {
            // invariant: CHUNK and PAGE are fixed valid constants
            unreachable!("chunk layout is valid")
        };
        // SAFETY: non-zero size.
        let chunk = unsafe { alloc_zeroed(layout) };
        if chunk.is_null() {
            std::alloc::handle_alloc_error(layout)
        }
        protect(chunk, CHUNK);
        let size = CLASSES[class];
        free.extend((0..CHUNK / size).rev().map(|i| chunk as usize + i * size));
    }
    // invariant: the refill above leaves at least one slot
    free.pop()
        .map(|a| a as *mut u8)
        .unwrap_or(std::ptr::null_mut())
}

fn slot_free(class: usize, ptr: *mut u8) {
    // SAFETY: ptr is a slot of CLASSES[class] bytes that we own and no longer use.
    unsafe { std::slice::from_raw_parts_mut(ptr, CLASSES[class]).zeroize() };
    FREE[class]
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(ptr as usize);
}

/// A value in locked (`mlock`), non-dumpable (`MADV_DONTDUMP`) memory where the
/// OS allows, whose bytes are zeroed after the value is dropped. Small values
/// share arena chunks; large ones get pages of their own.
pub struct Locked<T> {
    ptr: NonNull<T>,
    /// Some(class) for arena slots; None for a dedicated page allocation.
    class: Option<usize>,
    layout: Layout,
    locked: bool,
}

// SAFETY: Locked<T> owns its T exclusively, like Box<T>.
unsafe impl<T: Send> Send for Locked<T> {}
// SAFETY: shared access only hands out &T, like Box<T>.
unsafe impl<T: Sync> Sync for Locked<T> {}

impl<T> Locked<T> {
    pub fn new(value: T) -> Locked<T> {
        let size = std::mem::size_of::<T>().max(1);
        let align = std::mem::align_of::<T>();
        if let Some(class) = class_of(size, align) {
            let raw = slot_alloc(class) as *mut T;
            if let Some(ptr) = NonNull::new(raw) {
                // SAFETY: the slot is valid for writes of T (size and 64-byte alignment fit).
                unsafe { ptr.as_ptr().write(value) };
                let Ok(layout) = Layout::from_size_align(CLASSES[class], 64) else {
                    // invariant: class sizes are powers of two
                    unreachable!("slot layout is valid")
                };
                return Locked {
                    ptr,
                    class: Some(class),
                    layout,
                    locked: false,
                };
            }
        }
        let size = size.div_ceil(PAGE) * PAGE;
        let Ok(layout) = Layout::from_size_align(size, align.max(PAGE)) else {
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
            class: None,
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
        // SAFETY: the value was initialised in new() and is dropped exactly once.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        match self.class {
            Some(class) => slot_free(class, self.ptr.as_ptr() as *mut u8),
            // SAFETY: a dedicated region of layout.size() bytes that we own; zero, unlock, release.
            None => unsafe {
                let bytes = std::slice::from_raw_parts_mut(
                    self.ptr.as_ptr() as *mut u8,
                    self.layout.size(),
                );
                bytes.zeroize();
                if self.locked {
                    libc::munlock(self.ptr.as_ptr() as *const libc::c_void, self.layout.size());
                    LOCKED_BYTES.fetch_sub(self.layout.size() as u64, Ordering::Relaxed);
                }
                dealloc(self.ptr.as_ptr() as *mut u8, self.layout);
            },
        }
    }
}

/// A shared value in locked memory: `Arc<Locked<T>>` without the `Arc`'s own
/// allocation. The count lives beside the value, so a holder reaches the value
/// through one pointer; for a cold key (one of a terminal's thousands) that is
/// one cache miss fewer per call. Clone and drop follow `std::sync::Arc`.
pub struct LockedArc<T> {
    ptr: NonNull<Shared<T>>,
}

struct Shared<T> {
    count: AtomicUsize,
    /// The allocation's own handle: taken out and dropped by the last holder,
    /// which drops `value` and zeroes and frees the memory.
    home: MaybeUninit<Locked<Shared<T>>>,
    value: T,
}

// SAFETY: like Arc<T>: shared &T across threads needs T: Sync, and the last
// holder, on any thread, drops T (T: Send).
unsafe impl<T: Send + Sync> Send for LockedArc<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for LockedArc<T> {}

impl<T> LockedArc<T> {
    pub fn new(value: T) -> LockedArc<T> {
        let home = Locked::new(Shared {
            count: AtomicUsize::new(1),
            home: MaybeUninit::uninit(),
            value,
        });
        let ptr = home.ptr;
        // SAFETY: ptr is the live allocation `home` owns; nothing else refers
        // to it yet. The handle moves into its own allocation and is read out
        // exactly once, by the last holder (Drop).
        unsafe { (*ptr.as_ptr()).home.write(home) };
        LockedArc { ptr }
    }

    /// How many holders share the value (tests).
    pub fn holders(this: &Self) -> usize {
        this.shared().count.load(Ordering::Acquire)
    }

    fn shared(&self) -> &Shared<T> {
        // SAFETY: the allocation lives while any holder (self) does.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> Clone for LockedArc<T> {
    fn clone(&self) -> Self {
        // Relaxed, as Arc: a new holder comes from an existing one.
        let old = self.shared().count.fetch_add(1, Ordering::Relaxed);
        if old > isize::MAX as usize {
            std::process::abort();
        }
        LockedArc { ptr: self.ptr }
    }
}

impl<T> Deref for LockedArc<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.shared().value
    }
}

impl<T> Drop for LockedArc<T> {
    fn drop(&mut self) {
        if self.shared().count.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // Every other holder's use happens before the value is dropped (as Arc).
        std::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: we were the last holder: `home` was written in new() and is
        // read out once, here; dropping it drops the value (home itself is
        // MaybeUninit and not dropped again) and zeroes and frees the memory.
        let home = unsafe { (*self.ptr.as_ptr()).home.assume_init_read() };
        drop(home);
    }
}

/// Asks the CPU to start fetching the cache lines `value` spans. A hint: it
/// reads nothing into a register (no key bits are copied anywhere), cannot
/// fault, and changes no result. Hot paths call it on data that is likely cold
/// (a terminal's key, one of thousands) before a lock, so the misses overlap
/// instead of following one another.
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = value as *const T as usize;
        let end = start + std::mem::size_of::<T>();
        let mut line = start & !63;
        while line < end {
            // SAFETY: PREFETCHT0 is a hint with no architectural effect; it
            // never faults, and every line here belongs to the live `value`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    line as *const i8,
                )
            };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
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

/// Clock ticks per second of the times in `/proc/<pid>/stat` (USER_HZ).
pub fn clock_ticks_per_second() -> Option<u64> {
    // SAFETY: sysconf takes no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(n).ok().filter(|n| *n > 0)
}

/// A one-shot CLOCK_MONOTONIC timer file descriptor, for timers finer than
/// tokio's 1 ms wheel: the load generator's open-loop pacer waits on it
/// through the runtime's reactor (no pacing thread, no extra wake-ups).
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct TimerFd(std::os::fd::OwnedFd);

#[cfg(target_os = "linux")]
impl TimerFd {
    pub fn new() -> std::io::Result<TimerFd> {
        // SAFETY: timerfd_create takes no pointers.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
        Ok(TimerFd(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }

    /// Fires once, `after` from now (at least 1 ns: a zero value would disarm).
    pub fn arm(&self, after: std::time::Duration) -> std::io::Result<()> {
        let after = after.max(std::time::Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
        let r = unsafe {
            libc::timerfd_settime(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                0,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Registered for readability with the current runtime's reactor (call
    /// inside a runtime).
    pub fn register(self) -> std::io::Result<tokio::io::unix::AsyncFd<TimerFd>> {
        // SAFETY: the descriptor is an `OwnedFd` inside `self`, which the
        // `AsyncFd` owns from here on: it stays open and `as_raw_fd` returns
        // the same descriptor for the `AsyncFd`'s whole life.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)
    }

    /// Consumes an expiry; `WouldBlock` if the timer has not fired.
    pub fn consume(&self) -> std::io::Result<u64> {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer.
        let n = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n != 8 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(u64::from_ne_bytes(buf))
    }
}

#[cfg(target_os = "linux")]
impl std::os::fd::AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
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
    fn a_shared_value_is_dropped_once_by_its_last_holder() {
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        use std::sync::Arc;
        let drops = Arc::new(AtomicUsize::new(0));
        let a = LockedArc::new(Counted(drops.clone()));
        assert_eq!(&*a as *const Counted as usize % 8, 0);
        let copies: Vec<_> = (0..4).map(|_| a.clone()).collect();
        assert_eq!(LockedArc::holders(&a), 5);
        let threads: Vec<_> = copies
            .into_iter()
            .map(|c| std::thread::spawn(move || drop(c)))
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(LockedArc::holders(&a), 1);
        assert_eq!(drops.load(Ordering::SeqCst), 0, "still held");
        drop(a);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "dropped exactly once");
    }

    #[test]
    fn locked_values_are_aligned_and_readable() {
        let v = Locked::new([7u8; 32]);
        assert_eq!(v.as_ptr() as usize % 64, 0);
        assert_eq!(v[31], 7);
        let big = Locked::new([9u8; 9000]);
        assert_eq!(big.as_ptr() as usize % PAGE, 0);
        assert_eq!(big[8999], 9);
    }

    fn mappings() -> usize {
        std::fs::read_to_string("/proc/self/maps")
            .map(|m| m.lines().count())
            .unwrap_or(0)
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn many_locked_values_do_not_fragment_the_address_space() {
        let before = mappings();
        let held: Vec<Locked<[u8; 600]>> = (0..50_000).map(|_| Locked::new([1u8; 600])).collect();
        let during = mappings();
        drop(held);
        let churn: Vec<Locked<[u8; 600]>> = (0..50_000).map(|_| Locked::new([2u8; 600])).collect();
        drop(churn);
        let after = mappings();
        // 50,000 slots of 1 KiB fill ~49 chunks: a few dozen mappings, not tens of thousands.
        assert!(during < before + 200, "{before} -> {during}");
        assert!(after < before + 200, "{before} -> {after}");
    }

    #[test]
    fn a_freed_slot_is_zeroed_when_its_value_is_dropped() {
        let v = Locked::new([0xABu8; 100]);
        let addr = v.as_ptr();
        drop(v);
        // The slot stays in the arena (never returned to the OS), so it may be read.
        // SAFETY (test): `addr` points into a live arena chunk of at least 128 bytes.
        let after = unsafe { std::slice::from_raw_parts(addr, 100) };
        assert!(
            after.iter().all(|b| *b == 0),
            "key bytes left behind after drop"
        );
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
